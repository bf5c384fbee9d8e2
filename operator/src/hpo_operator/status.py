"""Status: the only code that shapes `.status` — phase, counts, best trial, conditions.

The study's loop gathers the facts (cheap counts and the best trial from the database, the
running trials' checkpoints) and this module turns them into one status patch. Conditions use
the standard Kubernetes form and keep their transition time while their status holds.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from typing import Any

from hpo_operator.models import Phase
from hpo_operator.storage import Counts, FinishedTrial, RunningTrial

PARETO_LIMIT = 10  # the front is bounded so status stays small at any study size

# Condition types and their reasons.
VALIDATED = "Validated"
DATABASE_READY = "DatabaseReady"
PROGRESSING = "Progressing"
FINISHED = "Finished"

REASON_VALID = "SpecValid"
REASON_INVALID = "SpecInvalid"
REASON_PROVISIONED = "Provisioned"
REASON_DATABASE_ERROR = "DatabaseError"
REASON_DATABASE_CONFLICT = "DatabaseConflict"
REASON_ADMIN_SECRET = "AdminSecretInvalid"
REASON_TLS_CA = "TlsCaInvalid"
REASON_DISPATCHING = "Dispatching"
REASON_DRAINING = "Draining"
REASON_SUSPENDED = "Suspended"
REASON_BUDGET_SPENT = "BudgetSpent"
REASON_DEADLINE = "DeadlineReached"
REASON_TOO_MANY_FAILURES = "TooManyFailures"


@dataclass(frozen=True)
class ConditionUpdate:
    type: str
    status: bool
    reason: str
    message: str = ""


@dataclass
class Facts:
    """Everything one status write is made of."""

    phase: Phase
    message: str
    total: int
    generation: int | None
    counts: Counts = field(default_factory=Counts)
    best: FinishedTrial | None = None
    pareto: list[FinishedTrial] = field(default_factory=list)
    running: list[RunningTrial] = field(default_factory=list)
    attempts: dict[int, int] = field(default_factory=dict)
    conditions: list[ConditionUpdate] = field(default_factory=list)
    checkpoint: dict[str, Any] | None = None
    optuna_study: str | None = None
    started_at: str | None = None


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_precise() -> str:
    """Now in RFC 3339 with microseconds, for annotations that time sub-second latencies."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def merge_conditions(old: list[dict[str, Any]], updates: list[ConditionUpdate],
                     generation: int | None) -> list[dict[str, Any]]:
    """Apply updates to the existing conditions; lastTransitionTime moves only when status flips."""
    merged = {c["type"]: dict(c) for c in old}
    for update in updates:
        status = "True" if update.status else "False"
        previous = merged.get(update.type, {})
        merged[update.type] = {
            "type": update.type,
            "status": status,
            "reason": update.reason,
            "message": update.message,
            "lastTransitionTime": previous.get("lastTransitionTime", now())
            if previous.get("status") == status else now(),
            "observedGeneration": generation,
        }
    return list(merged.values())


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no inf/NaN


def _trial(trial: FinishedTrial, multi: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"number": trial.number, "params": trial.params}
    if multi:
        entry["values"] = [_number(v) for v in trial.values]
    else:
        entry["value"] = _number(trial.values[0])
    return entry


def render(facts: Facts, old_conditions: list[dict[str, Any]]) -> dict[str, Any]:
    """The status patch (a JSON merge patch of `.status`)."""
    counts = facts.counts
    patch: dict[str, Any] = {
        "phase": facts.phase.value,
        "message": facts.message,
        "progress": f"{counts.finished}/{facts.total}",
        "trials": {"running": counts.running, "complete": counts.complete,
                   "pruned": counts.pruned, "failed": counts.failed},
        "runningTrials": [
            {"number": r.number, "attempt": facts.attempts.get(r.number, 0),
             "checkpointPath": r.checkpoint_path, "checkpointStep": r.checkpoint_step}
            for r in facts.running
        ],
        "observedGeneration": facts.generation,
        "conditions": merge_conditions(old_conditions, facts.conditions, facts.generation),
    }
    if facts.best is not None:
        patch["bestTrial"] = _trial(facts.best, multi=False)
    if facts.pareto:
        patch["paretoFront"] = [_trial(t, multi=True) for t in facts.pareto[:PARETO_LIMIT]]
    if facts.checkpoint is not None:
        patch["checkpoint"] = facts.checkpoint
    if facts.optuna_study is not None:
        patch["optunaStudy"] = facts.optuna_study
    if facts.started_at is not None:
        patch["startedAt"] = facts.started_at
    return patch
