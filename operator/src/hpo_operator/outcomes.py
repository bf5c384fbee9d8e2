"""Trial outcomes: why a trial pod ended, and what that means for its Optuna trial.

The runtime in the pod tells Optuna its result and exits 0. Every other ending is classified here
from the pod's status: a pod stopped from outside (deletion, eviction, preemption, node loss)
is requeued without counting as a failure; a crash uses up one of the trial's retries; a pod
that never starts is failed with the reason Kubernetes gives, instead of holding a slot forever.
"""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass
from typing import Any

from hpo_operator.contract import TRIAL_CONTAINER
from hpo_operator.models import ATTEMPT_LABEL, TRIAL_LABEL

INTERRUPTED_EXIT_CODES = (143, 137)  # the runtime exits 143 on SIGTERM; 137 is SIGKILL after the grace period
PREEMPTION_REASONS = {"Evicted", "Preempting", "Terminated", "NodeShutdown", "NodeLost", "NodeAgentRestarted"}


class Outcome(enum.Enum):
    ACTIVE = "active"
    SUCCEEDED = "succeeded"
    PREEMPTED = "preempted"
    CRASHED = "crashed"
    NEVER_STARTED = "never-started"


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str = ""


@dataclass(frozen=True)
class PodSummary:
    """The few facts about a trial pod that classification needs (kept in the operator's index)."""

    name: str
    trial: int
    attempt: int
    phase: str
    created: datetime.datetime
    deleting: bool = False
    started: bool = False
    exit_code: int | None = None
    reason: str = ""
    message: str = ""
    disrupted: bool = False
    waiting: str = ""

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


def parse_time(value: str | None) -> datetime.datetime:
    if not value:
        return datetime.datetime.now(datetime.UTC)
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def summarise(pod: dict[str, Any]) -> PodSummary:
    """Reduce a pod body to a PodSummary."""
    metadata, status = pod.get("metadata", {}), pod.get("status", {})
    labels = metadata.get("labels", {})
    statuses = status.get("containerStatuses") or []
    trial = next((s for s in statuses if s.get("name") == TRIAL_CONTAINER), statuses[0] if statuses else {})
    state = trial.get("state", {})
    terminated = state.get("terminated") or trial.get("lastState", {}).get("terminated") or {}
    waiting = state.get("waiting") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    unschedulable = conditions.get("PodScheduled", {})
    waiting_text = (f"{waiting.get('reason', '')}: {waiting.get('message', '')}".strip(": ")
                    or (unschedulable.get("message", "") if unschedulable.get("status") == "False" else ""))
    return PodSummary(
        name=metadata.get("name", ""),
        trial=int(labels.get(TRIAL_LABEL, -1)),
        attempt=int(labels.get(ATTEMPT_LABEL, 0)),
        phase=status.get("phase", "Pending"),
        created=parse_time(metadata.get("creationTimestamp")),
        deleting=bool(metadata.get("deletionTimestamp")),
        started="running" in state or bool(terminated),
        exit_code=terminated.get("exitCode"),
        reason=status.get("reason") or terminated.get("reason", ""),
        message=(terminated.get("message") or status.get("message") or "").strip(),
        disrupted=conditions.get("DisruptionTarget", {}).get("status") == "True",
        waiting=waiting_text,
    )


def classify(pod: PodSummary, now: datetime.datetime, start_timeout: float) -> Verdict:
    """What one attempt's pod says about its trial."""
    if pod.phase == "Succeeded":
        return Verdict(Outcome.SUCCEEDED)
    if pod.phase == "Failed":
        return _failed(pod)
    if not pod.started and not pod.deleting and (now - pod.created).total_seconds() > start_timeout:
        why = pod.waiting or "it was not scheduled or started"
        return Verdict(Outcome.NEVER_STARTED, f"the trial pod did not start within {start_timeout:.0f}s: {why}")
    return Verdict(Outcome.ACTIVE)


def _failed(pod: PodSummary) -> Verdict:
    if pod.disrupted:
        return Verdict(Outcome.PREEMPTED, "disrupted (evicted, preempted or its node was lost)")
    if pod.reason in PREEMPTION_REASONS:
        return Verdict(Outcome.PREEMPTED, pod.reason)
    if pod.reason == "DeadlineExceeded":
        return Verdict(Outcome.CRASHED, "exceeded spec.budget.trialTimeoutSeconds")
    if pod.reason == "OOMKilled":
        return Verdict(Outcome.CRASHED, "OOMKilled: raise the trial container's memory limit")
    if pod.exit_code in INTERRUPTED_EXIT_CODES:
        return Verdict(Outcome.PREEMPTED, "stopped from outside (deleted or preempted)")
    if not pod.started:
        return Verdict(Outcome.CRASHED, pod.message or pod.reason or "the trial container could not start")
    detail = pod.message or f"exit code {pod.exit_code}"
    return Verdict(Outcome.CRASHED, detail.splitlines()[-1][:500] if detail else "failed")


@dataclass(frozen=True)
class JobSummary:
    name: str
    trial: int
    attempt: int
    created: datetime.datetime
    failed: bool
    message: str = ""


def summarise_job(job: dict[str, Any]) -> JobSummary:
    metadata, status = job.get("metadata", {}), job.get("status", {})
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    failed = conditions.get("Failed", {}).get("status") == "True"
    return JobSummary(
        name=metadata.get("name", ""),
        trial=int(metadata.get("labels", {}).get(TRIAL_LABEL, -1)),
        attempt=int(metadata.get("labels", {}).get(ATTEMPT_LABEL, 0)),
        created=parse_time(metadata.get("creationTimestamp")),
        failed=failed,
        message=conditions.get("Failed", {}).get("message", ""),
    )
