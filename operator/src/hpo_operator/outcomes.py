"""Trial outcomes: what happened to a trial's latest attempt, and what to do about it next.

Where a trial's life is decided after its Job exists. The runtime in the pod tells Optuna its
result and exits 0; every other ending is classified here from the pod's and the Job's status,
and `decide` turns that into the next step, with no I/O (`reconcile.py` reads the observations,
calls `decide`, and carries out the decision):

* a pod stopped from outside (deletion, eviction, preemption, node loss) is requeued as the same
  Optuna trial without counting as a failure, at most `budget.maxPreemptionsPerTrial` times; a
  queue's suspension of the Job (Kueue) is waiting, not a preemption, and is not counted;
* a pod that could not reach the study's database (the runtime's exit 3) is run again for free,
  after a growing pause, however long the outage;
* a trial whose pod is unreachable (its node lost, its deletion never confirmed) and whose
  heartbeat is older than `HPO_TRIAL_LOST_SECONDS` is requeued too, and the old attempt fenced
  (`storage.advance_attempt`) so that it can never report;
* a crash uses up one of the trial's retries, then fails the trial with the reason;
* a pod that never starts fails the trial with the reason Kubernetes gives, instead of holding a
  slot forever.
"""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass
from typing import Any

from hpo_operator.contract import EXIT_DATABASE_UNAVAILABLE, EXIT_INTERRUPTED, EXIT_SUPERSEDED, TRIAL_CONTAINER
from hpo_operator.models import ATTEMPT_LABEL, TASK_LABEL, TRIAL_LABEL
from hpo_operator.queueing import QUEUE_LABEL

INTERRUPTED_EXIT_CODES = (EXIT_INTERRUPTED, 137)  # the runtime exits 143 on SIGTERM; 137 is SIGKILL after the grace
PREEMPTION_REASONS = {
    "Evicted",
    "Preempting",
    "Terminated",
    "NodeShutdown",
    "NodeLost",
    "NodeAgentRestarted",
    "UnexpectedAdmissionError",
}
UNCONFIRMED_DELETION_SECONDS = 30
"""A pod still there this long after its deletion deadline: its node never confirmed it stopped."""
DATABASE_BACKOFF_SECONDS = (10, 20, 40, 80, 160, 300)
"""Pause before running a trial again after its pods could not reach the database: 1st, 2nd, ... time."""


class Outcome(enum.Enum):
    """What one attempt's pod says about its trial (the values are what `hpo:outcomes` records)."""

    ACTIVE = "active"
    SUCCEEDED = "succeeded"
    PREEMPTED = "preempted"
    LOST = "lost"
    CRASHED = "crashed"
    NEVER_STARTED = "never-started"
    DATABASE_UNAVAILABLE = "database-unavailable"
    SUPERSEDED = "superseded"


PREEMPTIONS = {Outcome.PREEMPTED.value, Outcome.LOST.value}


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
    unschedulable: bool = False
    ready: bool | None = None
    started_at: datetime.datetime | None = None
    finished_at: datetime.datetime | None = None
    deletion_deadline: datetime.datetime | None = None
    task: str = ""  # an import or snapshot pod (trial -1); empty for a trial pod

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


@dataclass(frozen=True)
class JobSummary:
    name: str
    trial: int
    attempt: int
    created: datetime.datetime
    failed: bool
    message: str = ""
    suspended: bool = False
    resumed_at: datetime.datetime | None = None
    succeeded: bool = False
    task: str = ""  # an import or snapshot Job (trial -1); empty for a trial Job
    uid: str = ""
    queue: str = ""  # the LocalQueue that admits it (Kueue's label), empty when it goes through none


def parse_time(value: str | None) -> datetime.datetime:
    if not value:
        return datetime.datetime.now(datetime.UTC)
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _time(value: object) -> datetime.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None


def _int(value: object, default: int) -> int:
    try:
        return int(str(value))
    except ValueError:
        return default


def summarise(pod: dict[str, Any]) -> PodSummary:
    """Reduce a pod body to a PodSummary."""
    metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
    labels = metadata.get("labels") or {}
    statuses = status.get("containerStatuses") or []
    trial = next((s for s in statuses if s.get("name") == TRIAL_CONTAINER), statuses[0] if statuses else {})
    state = trial.get("state") or {}
    terminated = state.get("terminated") or (trial.get("lastState") or {}).get("terminated") or {}
    waiting = state.get("waiting") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    scheduled = conditions.get("PodScheduled", {})
    unschedulable = scheduled.get("status") == "False"
    waiting_text = f"{waiting.get('reason', '')}: {waiting.get('message', '')}".strip(": ") or (
        scheduled.get("message", "") if unschedulable else ""
    )
    ready = conditions.get("Ready", {}).get("status")
    deletion = _time(metadata.get("deletionTimestamp"))
    return PodSummary(
        name=metadata.get("name", ""),
        trial=_int(labels.get(TRIAL_LABEL), -1),
        attempt=_int(labels.get(ATTEMPT_LABEL), 0),
        phase=status.get("phase", "Pending"),
        created=parse_time(metadata.get("creationTimestamp")),
        deleting=deletion is not None,
        started="running" in state or bool(terminated),
        exit_code=terminated.get("exitCode"),
        reason=status.get("reason") or terminated.get("reason", ""),
        message=(terminated.get("message") or status.get("message") or "").strip(),
        disrupted=conditions.get("DisruptionTarget", {}).get("status") == "True",
        waiting=waiting_text,
        unschedulable=unschedulable,
        ready=None if ready is None else ready == "True",
        started_at=_time((state.get("running") or {}).get("startedAt") or terminated.get("startedAt")),
        finished_at=_time(terminated.get("finishedAt")),
        deletion_deadline=deletion,
        task=str(labels.get(TASK_LABEL) or ""),
    )


def summarise_job(job: dict[str, Any]) -> JobSummary:
    metadata, status = job.get("metadata") or {}, job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    suspended = conditions.get("Suspended", {})
    return JobSummary(
        name=metadata.get("name", ""),
        trial=_int((metadata.get("labels") or {}).get(TRIAL_LABEL), -1),
        attempt=_int((metadata.get("labels") or {}).get(ATTEMPT_LABEL), 0),
        created=parse_time(metadata.get("creationTimestamp")),
        failed=conditions.get("Failed", {}).get("status") == "True",
        message=conditions.get("Failed", {}).get("message", ""),
        suspended=bool((job.get("spec") or {}).get("suspend")),
        resumed_at=_time(suspended.get("lastTransitionTime")) if suspended.get("status") == "False" else None,
        succeeded=conditions.get("Complete", {}).get("status") == "True",
        task=str((metadata.get("labels") or {}).get(TASK_LABEL) or ""),
        uid=str(metadata.get("uid") or ""),
        queue=str((metadata.get("labels") or {}).get(QUEUE_LABEL) or ""),
    )


def classify(
    pod: PodSummary, now: datetime.datetime, start_timeout: float, since: datetime.datetime | None = None
) -> Verdict:
    """What one attempt's pod says about its trial (``since``: when it could first start, if not at creation)."""
    if pod.phase == "Succeeded":
        return Verdict(Outcome.SUCCEEDED)
    if pod.phase == "Failed":
        return _failed(pod)
    waited = (now - max(pod.created, since or pod.created)).total_seconds()
    if not pod.started and not pod.deleting and waited > start_timeout:
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
    if pod.exit_code == EXIT_DATABASE_UNAVAILABLE:
        return Verdict(
            Outcome.DATABASE_UNAVAILABLE, pod.message or "the trial pod could not reach the study's database"
        )
    if pod.exit_code == EXIT_SUPERSEDED:
        return Verdict(Outcome.SUPERSEDED, "a later attempt owns the trial")
    if pod.exit_code in INTERRUPTED_EXIT_CODES:
        return Verdict(Outcome.PREEMPTED, "stopped from outside (deleted or preempted)")
    if not pod.started:
        return Verdict(Outcome.CRASHED, pod.message or pod.reason or "the trial container could not start")
    detail = pod.message or f"exit code {pod.exit_code}"
    return Verdict(Outcome.CRASHED, detail.splitlines()[-1][:500] if detail else "failed")


# -- the decision -------------------------------------------------------------------------------------


class Action(enum.Enum):
    WAIT = "wait"  # nothing to do now: running, starting, queued, or pausing before a free requeue
    START = "start"  # the trial has no Job: create its attempt
    REQUEUE = "requeue"  # the attempt ended at no cost to the trial: run the next one
    RETRY = "retry"  # the attempt crashed and a retry is left: run the next one
    FAIL = "fail"  # the trial fails with the reason
    STOP = "stop"  # the study stops its trials (suspended, or ended with endPolicy Kill)


class Waiting(enum.Enum):
    """Why a dispatched trial's pod has not started (the TrialsWaiting condition's reason)."""

    QUEUED = "Queued"  # the Job is suspended until a queue (Kueue) admits it
    UNSCHEDULABLE = "Unschedulable"
    STARTING = "Starting"  # no pod yet, pulling its image, creating its containers
    PAUSED = "DatabaseUnavailable"  # pausing before running it again after its pod could not reach the database


@dataclass(frozen=True)
class TrialView:
    """What the operator observes of one RUNNING trial: its earlier attempts, its heartbeat, its latest Job and pod.

    ``pod`` is the latest attempt's pod (of ``job``'s attempt), None when it has none (yet, or any more).
    ``heartbeat_age`` is the seconds since the trial's pod last recorded a heartbeat (the database's
    clock), None if it never did.
    """

    number: int
    outcomes: tuple[str, ...] = ()
    heartbeat_age: float | None = None
    job: JobSummary | None = None
    pod: PodSummary | None = None


@dataclass(frozen=True)
class Rules:
    """The study's and the operator's rules for attempts."""

    retries: int
    max_preemptions: int
    start_timeout: float
    lost_after: float
    ended: bool = False  # the study has ended (deadline, too many failures): no new attempts
    stopping: bool = False  # the study stops its trials: suspend, or ended with endPolicy Kill
    end_reason: str = ""


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""
    attempt: int = 0  # START, REQUEUE, RETRY: the attempt to run; else the current one
    record: Outcome | None = None  # the ended attempt's outcome, recorded at index ``attempt - 1``
    fence: bool = False  # the old attempt may still be alive: check the trial is RUNNING once fenced
    delete_job: bool = False
    waiting: Waiting | None = None  # the trial is dispatched but its pod has not started
    live: bool = False  # the attempt's pod still runs (it holds the trial's slot)
    fail: bool = True  # STOP: whether the trial is also failed (its pod is gone and the study ended)


def decide(view: TrialView, rules: Rules, now: datetime.datetime) -> Decision:
    """What to do about a RUNNING trial, given its latest attempt. Pure: `reconcile.py` carries it out."""
    job, pod = view.job, view.pod
    live = pod is not None and holds_slot(pod, now)
    if rules.stopping:
        return Decision(
            Action.STOP,
            f"stopped: the study ended ({rules.end_reason})" if rules.ended else "stopped: the study is suspended",
            attempt=job.attempt if job else len(view.outcomes),
            delete_job=job is not None,
            live=live,
            fail=rules.ended and not live,
        )
    if job is None:
        if live:  # its Job went away (deleted by hand, or the study was suspended) and the pod still stops
            return Decision(Action.WAIT, "waiting for the previous pod to stop", live=True)
        return Decision(
            Action.START,
            "asked but never given a Job, or its Job went away",
            attempt=_next_attempt(view, None),
            waiting=Waiting.STARTING,
        )
    pod = _current_pod(job, pod)
    verdict = _verdict(view, job, pod, rules, now)
    outcome, attempt = verdict.outcome, job.attempt
    if outcome is Outcome.ACTIVE:
        return Decision(
            Action.WAIT,
            verdict.reason,
            attempt=attempt,
            waiting=_waiting(job, pod),
            live=pod is not None and not pod.terminal,
        )
    earlier = [o for index, o in enumerate(view.outcomes) if index != attempt]
    if outcome is Outcome.SUCCEEDED:  # exited 0 yet the trial is still RUNNING
        outcome, verdict = (
            Outcome.CRASHED,
            Verdict(Outcome.CRASHED, "the trial pod exited 0 without reporting a result to Optuna"),
        )
    if outcome is Outcome.SUPERSEDED:  # a later attempt was being given the trial: carry that through
        outcome = Outcome.LOST
    if rules.ended:
        return Decision(
            Action.FAIL,
            f"{verdict.reason}; the study has ended ({rules.end_reason})",
            attempt=attempt,
            record=outcome,
            delete_job=outcome is Outcome.NEVER_STARTED,
        )
    if outcome in (Outcome.PREEMPTED, Outcome.LOST):
        preemptions = sum(o in PREEMPTIONS for o in earlier) + 1
        if preemptions > rules.max_preemptions:
            return Decision(
                Action.FAIL,
                f"{verdict.reason}; preempted {preemptions} times, more than "
                f"spec.budget.maxPreemptionsPerTrial ({rules.max_preemptions})",
                attempt=attempt,
                record=outcome,
            )
        return Decision(
            Action.REQUEUE,
            verdict.reason,
            attempt=attempt + 1,
            record=outcome,
            delete_job=True,
            fence=outcome is Outcome.LOST or pod is None,
        )
    if outcome is Outcome.DATABASE_UNAVAILABLE:
        return _after_database_outage(view, pod, job, verdict, earlier, now)
    if outcome is Outcome.CRASHED:
        crashes = sum(o == Outcome.CRASHED.value for o in earlier) + 1
        if crashes <= rules.retries:
            return Decision(
                Action.RETRY,
                f"{verdict.reason}; retry {crashes} of {rules.retries}",
                attempt=attempt + 1,
                record=outcome,
            )
        suffix = f"; no retry left (spec.budget.retriesPerTrial: {rules.retries})" if rules.retries else ""
        return Decision(Action.FAIL, verdict.reason + suffix, attempt=attempt, record=outcome)
    return Decision(
        Action.FAIL,
        verdict.reason,
        attempt=attempt,
        record=outcome,  # never started
        delete_job=True,
    )


def _next_attempt(view: TrialView, job: JobSummary | None) -> int:
    return max(len(view.outcomes), job.attempt + 1 if job else 0)


def _current_pod(job: JobSummary, pod: PodSummary | None) -> PodSummary | None:
    """The attempt's pod, unless it was stopped by a queue's suspension of the Job (which is no ending).

    A pod made before the Job's latest resumption belongs to an earlier admission: the suspension
    deleted it, and it may still be stopping after the queue has admitted the Job again (Kubernetes
    stamps whole seconds, so a pod of this admission may share the resumption's second: only an
    earlier one is judged stale).
    """
    if pod is None or job.resumed_at is None or not (pod.terminal or pod.deleting):
        return pod
    if pod.created < job.resumed_at or (pod.terminal and (pod.finished_at or pod.created) <= job.resumed_at):
        return None
    return pod


def _verdict(view: TrialView, job: JobSummary, pod: PodSummary | None, rules: Rules, now: datetime.datetime) -> Verdict:
    if job.suspended:
        return Verdict(Outcome.ACTIVE, "the Job is suspended until a queue admits it")
    if pod is not None:
        verdict = classify(pod, now, rules.start_timeout, since=job.resumed_at)
        if verdict.outcome is Outcome.ACTIVE and _unreachable(pod, now):
            silent = _silence(view, pod, now)
            if silent is not None and silent > rules.lost_after:
                return Verdict(Outcome.LOST, f"its pod is unreachable (node lost?) and silent for {silent:.0f}s")
        return verdict
    if job.failed:
        return Verdict(Outcome.PREEMPTED, "the trial pod was removed")
    since = max(job.created, job.resumed_at or job.created)  # created, or last admitted by its queue
    age = (now - since).total_seconds()
    beat = view.heartbeat_age
    if beat is not None and beat < age and beat > rules.lost_after:  # a pod of this admission ran, then vanished
        return Verdict(Outcome.LOST, f"its pod is gone and silent for {beat:.0f}s")
    if age > rules.start_timeout:
        why = job.message or "see the Job's events"
        return Verdict(Outcome.NEVER_STARTED, f"the Job made no pod within {rules.start_timeout:.0f}s: {why}")
    return Verdict(Outcome.ACTIVE, "the Job has not made a pod yet")


def holds_slot(pod: PodSummary, now: datetime.datetime) -> bool:
    """Whether the pod counts against the study's parallelism: it runs, and somewhere the cluster can reach.

    A pod on a lost node stays (Terminating) until the node is deleted; it must not hold a slot forever.
    """
    return not pod.terminal and not _unreachable(pod, now)


def _unreachable(pod: PodSummary, now: datetime.datetime) -> bool:
    """The pod runs somewhere the cluster cannot reach: its node stopped reporting, or never confirmed a deletion."""
    if pod.phase == "Unknown":
        return True
    if pod.deleting and pod.deletion_deadline is not None:
        return (now - pod.deletion_deadline).total_seconds() > UNCONFIRMED_DELETION_SECONDS
    # Ready=False on a running container is the node controller's mark of a node that stopped reporting. A
    # container that exited makes its pod unready too, but the pod keeps its slot (and its node's resources)
    # until the kubelet has torn it down and marked it Succeeded or Failed, a moment later.
    return pod.started and pod.phase == "Running" and pod.ready is False and pod.finished_at is None


def _silence(view: TrialView, pod: PodSummary, now: datetime.datetime) -> float | None:
    """Seconds since this attempt's pod last showed life: its heartbeat, or its start if it never beat."""
    since_start = (now - pod.started_at).total_seconds() if pod.started_at else None
    beat = view.heartbeat_age
    if beat is not None and (since_start is None or beat < since_start):
        return beat
    return since_start


def _waiting(job: JobSummary, pod: PodSummary | None) -> Waiting | None:
    if job.suspended:
        return Waiting.QUEUED
    if pod is None:
        return Waiting.STARTING
    if pod.started or pod.terminal:
        return None
    return Waiting.UNSCHEDULABLE if pod.unschedulable else Waiting.STARTING


def _after_database_outage(
    view: TrialView,
    pod: PodSummary | None,
    job: JobSummary,
    verdict: Verdict,
    earlier: list[str],
    now: datetime.datetime,
) -> Decision:
    """Run the trial again at no cost, after a pause that grows with each outage in a row."""
    in_a_row = 0
    for outcome in reversed(earlier):
        if outcome != Outcome.DATABASE_UNAVAILABLE.value:
            break
        in_a_row += 1
    pause = DATABASE_BACKOFF_SECONDS[min(in_a_row, len(DATABASE_BACKOFF_SECONDS) - 1)]
    ended_at = (pod.finished_at or pod.created) if pod is not None else job.created
    left = pause - (now - ended_at).total_seconds()
    if left > 0:
        return Decision(
            Action.WAIT,
            f"its pod could not reach the study's database; running it again in {left:.0f}s",
            attempt=job.attempt,
            waiting=Waiting.PAUSED,
        )
    return Decision(
        Action.REQUEUE,
        f"{verdict.reason} (the database was unavailable: no retry spent)",
        attempt=job.attempt + 1,
        record=Outcome.DATABASE_UNAVAILABLE,
        delete_job=True,
    )


def jobs_to_delete(
    jobs: list[JobSummary], pods: list[PodSummary], running: set[int], live: set[int], keep_failed: int
) -> list[str]:
    """The Jobs of finished trials to delete, all but the ``keep_failed`` newest failed attempts.

    A finished attempt failed when its pod ended Failed, whether or not the Job controller has
    marked the Job Failed yet (a real one does so a moment after the pod ends, and a Job judged by
    its condition alone was deleted before it was kept). Kept, its pod and log stay for
    `kubectl logs` and `kubectl hpo logs`.
    """
    failed_pods = {(p.trial, p.attempt) for p in pods if p.phase == "Failed"}
    done = [j for j in jobs if j.trial not in running and j.trial not in live]
    failed = sorted((j for j in done if j.failed or (j.trial, j.attempt) in failed_pods), key=lambda j: j.created)
    keep = {j.name for j in failed[-keep_failed:]} if keep_failed > 0 else set()
    return [j.name for j in done if j.name not in keep]
