"""Status: the only code that shapes `.status` — when the study ends, its phase, conditions, counts, best trial.

The last step of every pass over a study. The loop (`reconcile.py`) gathers the facts (counts and
the best trial from the database, what `outcomes.decide` said of each trial, the dispatch plan) and
this module decides, with no I/O: whether the study has ended (`end_of_study`), its phase and
conditions (`decide`), the status written (`render`, built from the `HpoStudyStatus` model itself,
so the CRD schema and what is written cannot drift) and the Events a change of status calls for
(`transitions`, one per transition: comparing the status before and after, not remembering what
was posted, so a restart posts nothing again). Conditions use the standard Kubernetes form and keep
their transition time while their status holds.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from typing import Any

from hpo_operator.models import HpoStudyStatus, Phase
from hpo_operator.outcomes import Waiting
from hpo_operator.storage import Counts, FinishedTrial, RunningTrial

PARETO_LIMIT = 10  # the front is bounded so status stays small at any study size

# Condition types and their reasons.
VALIDATED = "Validated"
DATABASE_READY = "DatabaseReady"
PROGRESSING = "Progressing"
TRIALS_WAITING = "TrialsWaiting"
FINISHED = "Finished"
IMPORTED = "Imported"

REASON_VALID = "SpecValid"
REASON_INVALID = "SpecInvalid"
REASON_REFERENCE_MISSING = "ReferenceNotFound"
REASON_PROVISIONED = "Provisioned"
REASON_DATABASE_ERROR = "DatabaseError"
REASON_DATABASE_UNAVAILABLE = "DatabaseUnavailable"
REASON_DATABASE_CONFLICT = "DatabaseConflict"
REASON_ADMIN_SECRET = "AdminSecretInvalid"
REASON_TLS_CA = "TlsCaInvalid"
REASON_DISPATCHING = "Dispatching"
REASON_DRAINING = "Draining"
REASON_SUSPENDED = "Suspended"
REASON_SAMPLER_ERROR = "SamplerError"
REASON_JOB_REFUSED = "JobRefused"
BLOCKED = (REASON_SAMPLER_ERROR, REASON_JOB_REFUSED)
"""Progressing reasons that say dispatch is stuck on something a user must look at."""
REASON_IN_PROGRESS = "InProgress"
REASON_BUDGET_SPENT = "BudgetSpent"
REASON_DEADLINE = "DeadlineReached"
REASON_TOO_MANY_FAILURES = "TooManyFailures"
REASON_NO_TRIAL_COMPLETED = "NoTrialCompleted"
REASON_ALL_STARTED = "AllStarted"
REASON_PACED = "Paced"
REASON_IMPORTING = "Importing"
REASON_IMPORT_SUCCEEDED = "ImportSucceeded"
REASON_IMPORT_FAILED = "ImportFailed"

# Event reasons beyond the conditions' own.
EVENT_INVALID_SPEC = "InvalidSpec"
EVENT_SPEC_VALID = "SpecValid"
EVENT_DATABASE_READY = "DatabaseReady"
EVENT_STUDY_FINISHED = "StudyFinished"
EVENT_STUDY_FAILED = "StudyFailed"
EVENT_STUDY_CONTINUED = "StudyContinued"
EVENT_IMPORTED = "Imported"
EVENT_IMPORT_STARTED = "ImportStarted"
EVENT_IMPORT_RETRIED = "ImportRetried"
EVENT_SNAPSHOT_TAKEN = "SnapshotTaken"
EVENT_SNAPSHOT_FAILED = "SnapshotFailed"


@dataclass(frozen=True)
class ConditionUpdate:
    type: str
    status: bool
    reason: str
    message: str = ""


@dataclass(frozen=True)
class End:
    """Why the study stops dispatching before its budget is spent."""

    reason: str  # REASON_TOO_MANY_FAILURES or REASON_DEADLINE
    message: str


@dataclass(frozen=True)
class ImportedCounts:
    """How many of the study's trials were imported, and how many of those are FAIL (recorded once, at import)."""

    total: int = 0
    failed: int = 0

    @classmethod
    def of(cls, status: dict[str, Any]) -> ImportedCounts | None:
        trials = status.get("trials")
        if not isinstance(trials, dict) or not isinstance(trials.get("imported"), int):
            return None
        failed = trials.get("importedFailed")
        return cls(trials["imported"], failed if isinstance(failed, int) else 0)


def end_of_study(
    failed: int, max_failed: int | None, started_at: str | None, deadline_seconds: int | None, now: datetime.datetime
) -> End | None:
    """The study has ended early: more failures than allowed, or its deadline passed (None: it has not).

    ``failed`` counts the trials this study ran that failed: imported FAIL trials are not its failures.
    """
    if max_failed is not None and failed > max_failed:
        return End(
            REASON_TOO_MANY_FAILURES, f"{failed} trials failed, more than spec.budget.maxFailedTrials ({max_failed})"
        )
    if deadline_seconds and started_at:
        started = datetime.datetime.fromisoformat(started_at.replace("Z", "+00:00"))
        if (now - started).total_seconds() > deadline_seconds:
            return End(REASON_DEADLINE, "spec.budget.deadlineSeconds reached")
    return None


@dataclass(frozen=True)
class Progress:
    """What the phase of a valid study with its database ready depends on."""

    total: int
    counts: Counts
    busy: bool  # a trial is RUNNING or a trial pod still runs
    waiting: int = 0  # RUNNING trials whose pod has not started
    suspend: bool = False
    end: End | None = None
    parallelism_capped: str = ""
    paced: bool = False
    waiting_reason: Waiting | None = None  # why the first waiting trial waits
    waiting_message: str = ""
    blocked: tuple[str, str] | None = None  # dispatch is stuck: (REASON_SAMPLER_ERROR or REASON_JOB_REFUSED, why)
    database_message: str = ""  # the DatabaseReady condition's message (which database holds the study)


@dataclass(frozen=True)
class Verdict:
    phase: Phase
    message: str
    conditions: list[ConditionUpdate]


def decide(progress: Progress) -> Verdict:
    """The phase, message and conditions of a valid study whose database is ready."""
    counts, total, end = progress.counts, progress.total, progress.end
    conditions = [
        ConditionUpdate(VALIDATED, True, REASON_VALID),
        ConditionUpdate(DATABASE_READY, True, REASON_PROVISIONED, progress.database_message),
        _waiting_condition(progress),
    ]
    notes = [note for note in (progress.parallelism_capped,) if note]
    if end is not None and end.reason == REASON_TOO_MANY_FAILURES:
        conditions.append(
            ConditionUpdate(
                PROGRESSING,
                progress.busy,
                end.reason,
                end.message + ("; letting running trials finish" if progress.busy else ""),
            )
        )
        conditions.append(_finished(not progress.busy, end.reason, end.message))
        return Verdict(Phase.FAILED, end.message, conditions)
    if progress.suspend:
        conditions.append(ConditionUpdate(PROGRESSING, False, REASON_SUSPENDED, "spec.suspend is true"))
        conditions.append(_finished(False, REASON_SUSPENDED))
        return Verdict(
            Phase.SUSPENDED, "suspended" + (": stopping running trials" if progress.busy else ""), conditions
        )
    if progress.busy or (counts.created < total and end is None):
        if progress.blocked is not None:
            reason, message = progress.blocked
        elif end is not None:
            reason, message = REASON_DRAINING, f"{end.message}; letting running trials finish"
        else:
            reason, message = REASON_DISPATCHING, f"{counts.finished} of {total} trials finished"
        conditions.append(ConditionUpdate(PROGRESSING, True, reason, message))
        conditions.append(_finished(False, REASON_IN_PROGRESS))
        return Verdict(Phase.RUNNING, "; ".join([message, *notes]), conditions)
    why = end.message if end is not None else f"all {total} trials finished"
    conditions.append(ConditionUpdate(PROGRESSING, False, end.reason if end else REASON_BUDGET_SPENT, why))
    if counts.complete == 0:
        message = f"{why}, but no trial completed ({counts.failed} failed, {counts.pruned} pruned)"
        conditions.append(_finished(True, REASON_NO_TRIAL_COMPLETED, message))
        return Verdict(Phase.FAILED, message, conditions)
    conditions.append(_finished(True, end.reason if end else REASON_BUDGET_SPENT, why))
    return Verdict(Phase.SUCCEEDED, why, conditions)


def _finished(done: bool, reason: str, message: str = "") -> ConditionUpdate:
    return ConditionUpdate(FINISHED, done, reason, message)


def _waiting_condition(progress: Progress) -> ConditionUpdate:
    waiting = progress.waiting
    if waiting == 0:
        return ConditionUpdate(TRIALS_WAITING, False, REASON_ALL_STARTED)
    message = f"{waiting} dispatched trial(s) have not started"
    if progress.waiting_message:
        message += f": {progress.waiting_message}"
    if progress.paced:
        message += (
            "; no new trial is dispatched while this many of the study's pods wait "
            "(the operator's HPO_MAX_WAITING_TRIALS)"
        )
    reason = (progress.waiting_reason or Waiting.STARTING).value
    return ConditionUpdate(TRIALS_WAITING, True, REASON_PACED if progress.paced else reason, message)


def importing(message: str, database_message: str = "") -> Verdict:
    """The import Job runs (or is being made): no trial is dispatched until it has succeeded."""
    return Verdict(
        Phase.RUNNING,
        message,
        [
            ConditionUpdate(VALIDATED, True, REASON_VALID),
            ConditionUpdate(DATABASE_READY, True, REASON_PROVISIONED, database_message),
            ConditionUpdate(IMPORTED, False, REASON_IMPORTING, message),
            ConditionUpdate(PROGRESSING, True, REASON_IMPORTING, message),
            _finished(False, REASON_IN_PROGRESS),
        ],
    )


def import_failed(field: str, message: str, database_message: str = "") -> Verdict:
    """The import failed in a way no run of it can mend: the study fails, naming the field to fix."""
    said = f"{field}: {message}"
    return Verdict(
        Phase.FAILED,
        f"import failed: {said}",
        [
            ConditionUpdate(VALIDATED, True, REASON_VALID),
            ConditionUpdate(DATABASE_READY, True, REASON_PROVISIONED, database_message),
            ConditionUpdate(IMPORTED, False, REASON_IMPORT_FAILED, said),
            ConditionUpdate(PROGRESSING, False, REASON_IMPORT_FAILED, said),
            _finished(True, REASON_IMPORT_FAILED, said),
        ],
    )


def imported(verdict: Verdict, message: str) -> Verdict:
    """The verdict of the pass in which the import succeeded: Imported turns True."""
    return Verdict(
        verdict.phase,
        verdict.message,
        [*verdict.conditions, ConditionUpdate(IMPORTED, True, REASON_IMPORT_SUCCEEDED, message)],
    )


def rejected(message: str, reason: str = REASON_INVALID) -> Verdict:
    """A spec the operator will not run (invalid, against its policy, or naming what does not exist)."""
    return Verdict(Phase.FAILED, f"invalid spec: {message}", [ConditionUpdate(VALIDATED, False, reason, message)])


def database_unready(reason: str, message: str, previous_phase: str | None) -> Verdict:
    """The study's database cannot be used yet: it waits (a new study stays Pending, a running one keeps its phase)."""
    phase = Phase(previous_phase) if previous_phase in (Phase.RUNNING, Phase.SUSPENDED) else Phase.PENDING
    return Verdict(
        phase,
        f"waiting for the study's database: {message}",
        [ConditionUpdate(VALIDATED, True, REASON_VALID), ConditionUpdate(DATABASE_READY, False, reason, message)],
    )


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_precise() -> str:
    """Now in RFC 3339 with microseconds, for annotations that time sub-second latencies."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def merge_conditions(
    old: list[dict[str, Any]], updates: list[ConditionUpdate], generation: int | None
) -> list[dict[str, Any]]:
    """Apply updates to the existing conditions; lastTransitionTime moves only when status flips."""
    merged = {c["type"]: dict(c) for c in old if isinstance(c, dict) and isinstance(c.get("type"), str)}
    for update in updates:
        status = "True" if update.status else "False"
        previous = merged.get(update.type, {})
        merged[update.type] = {
            "type": update.type,
            "status": status,
            "reason": update.reason,
            "message": update.message,
            "lastTransitionTime": previous.get("lastTransitionTime") or now()
            if previous.get("status") == status
            else now(),
            "observedGeneration": generation,
        }
    return list(merged.values())


@dataclass
class Facts:
    """Everything one status write is made of."""

    verdict: Verdict
    total: int
    generation: int | None
    counts: Counts | None = None
    waiting: int = 0
    parallelism: int | None = None
    best: FinishedTrial | None = None
    pareto: list[FinishedTrial] = field(default_factory=list)
    running: list[RunningTrial] = field(default_factory=list)
    attempts: dict[int, int] = field(default_factory=dict)
    checkpoint: dict[str, Any] | None = None
    optuna_study: str | None = None
    started_at: str | None = None
    imported: ImportedCounts | None = None
    snapshot: dict[str, Any] | None = None
    sampler: str | None = None


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no inf/NaN


def rounded(value: float) -> str:
    """A value for `kubectl get`'s Best column: 4 significant digits (printer columns cannot round)."""
    return f"{value:.4g}"


def _trial(trial: FinishedTrial, multi: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"number": trial.number, "params": trial.params}
    if multi:
        entry["values"] = [_number(v) for v in trial.values]
    else:
        entry["value"] = _number(trial.values[0])
    return entry


def render(facts: Facts, old_conditions: list[dict[str, Any]]) -> dict[str, Any]:
    """The status patch (a JSON merge patch of `.status`), validated by the status model.

    Fields left None are left out, so the patch keeps what an earlier pass wrote (startedAt, the
    counts while the database is away); lists (conditions, runningTrials) are replaced whole.
    """
    verdict, counts = facts.verdict, facts.counts
    fields: dict[str, Any] = {
        "phase": verdict.phase,
        "message": verdict.message,
        "observedGeneration": facts.generation,
        "conditions": merge_conditions(old_conditions, verdict.conditions, facts.generation),
        "parallelism": facts.parallelism,
        "optunaStudy": facts.optuna_study,
        "startedAt": facts.started_at,
        "checkpoint": facts.checkpoint,
        "snapshot": facts.snapshot,
        "sampler": facts.sampler,
    }
    if counts is not None:
        fields["progress"] = f"{counts.finished}/{facts.total}"
        fields["trials"] = {
            "running": max(0, counts.running - facts.waiting),
            "waiting": facts.waiting,
            "complete": counts.complete,
            "pruned": counts.pruned,
            "failed": counts.failed,
            "preemptions": counts.preemptions,
        }
        if facts.imported is not None:
            fields["trials"]["imported"] = facts.imported.total
            fields["trials"]["importedFailed"] = facts.imported.failed
        fields["runningTrials"] = [
            {
                "number": r.number,
                "attempt": facts.attempts.get(r.number, 0),
                "checkpointPath": r.checkpoint_path,
                "checkpointStep": r.checkpoint_step,
            }
            for r in facts.running
        ]
    elif facts.total:
        fields["progress"] = None
    if facts.best is not None:
        fields["bestTrial"] = _trial(facts.best, multi=False)
        fields["bestValue"] = rounded(facts.best.values[0])
    if facts.pareto:
        fields["paretoFront"] = [_trial(t, multi=True) for t in facts.pareto[:PARETO_LIMIT]]
        fields["bestValue"] = f"pareto:{len(facts.pareto)}"
    status = HpoStudyStatus.model_validate({k: v for k, v in fields.items() if v is not None})
    return status.model_dump(by_alias=True, exclude_none=True, exclude_unset=True, mode="json")


@dataclass(frozen=True)
class Note:
    """An Event a change of status calls for."""

    reason: str
    message: str
    warning: bool = False


def transitions(old: dict[str, Any] | None, new: dict[str, Any]) -> list[Note]:
    """The Events for what changed between two statuses: each transition once, and nothing when nothing changed."""
    before = _conditions(old)
    after = _conditions(new)
    notes: list[Note] = []

    def changed(kind: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        was, now_ = before.get(kind, {}), after.get(kind)
        if now_ is None or (was.get("status"), was.get("reason"), was.get("message")) == (
            now_.get("status"),
            now_.get("reason"),
            now_.get("message"),
        ):
            return None
        return was, now_

    if (change := changed(VALIDATED)) is not None:
        was, valid = change
        if valid["status"] == "False":
            reason = EVENT_INVALID_SPEC if valid["reason"] == REASON_INVALID else valid["reason"]
            notes.append(Note(reason, valid.get("message", ""), warning=True))
        elif was.get("status") == "False":
            notes.append(Note(EVENT_SPEC_VALID, "the spec is valid now"))
    if (change := changed(DATABASE_READY)) is not None:
        was, ready = change
        if ready["status"] == "True" and was.get("status") != "True":
            notes.append(Note(EVENT_DATABASE_READY, ready.get("message", "")))
        elif ready["status"] == "False":
            notes.append(Note(ready["reason"], ready.get("message", ""), warning=True))
    if (change := changed(FINISHED)) is not None:
        was, finished = change
        if finished["status"] == "True" and was.get("status") != "True":
            failed = new.get("phase") == Phase.FAILED.value
            notes.append(
                Note(
                    EVENT_STUDY_FAILED if failed else EVENT_STUDY_FINISHED, str(new.get("message", "")), warning=failed
                )
            )
        elif finished["status"] == "False" and was.get("status") == "True":
            notes.append(Note(EVENT_STUDY_CONTINUED, str(new.get("message", ""))))
    if (change := changed(IMPORTED)) is not None:
        was, done = change
        if done["status"] == "True" and was.get("status") != "True":
            notes.append(Note(EVENT_IMPORTED, done.get("message", "")))
        elif done["reason"] == REASON_IMPORT_FAILED:
            notes.append(Note(REASON_IMPORT_FAILED, done.get("message", ""), warning=True))
    if (change := changed(PROGRESSING)) is not None:
        was, progressing = change
        if progressing["reason"] in BLOCKED and was.get("reason") != progressing["reason"]:
            notes.append(Note(progressing["reason"], progressing.get("message", ""), warning=True))
    return notes


def _conditions(status: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    found = (status or {}).get("conditions") or []
    return {c["type"]: c for c in found if isinstance(c, dict) and isinstance(c.get("type"), str)}
