"""What happened to a trial's latest attempt, and what the operator does next: one row per situation."""

from __future__ import annotations

import datetime
from dataclasses import replace

import pytest

from hpo_operator.outcomes import (
    Action,
    Decision,
    JobSummary,
    Outcome,
    PodSummary,
    Rules,
    TrialView,
    Waiting,
    decide,
    holds_slot,
    jobs_to_delete,
    summarise,
    summarise_job,
)

pytestmark = pytest.mark.unit
NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)


def ago(seconds: float) -> datetime.datetime:
    return NOW - datetime.timedelta(seconds=seconds)


RULES = Rules(retries=1, max_preemptions=2, start_timeout=300, lost_after=120)
JOB = JobSummary("s-3-1", trial=3, attempt=1, created=ago(600), failed=False)
RUNNING = PodSummary(
    "s-3-1-x", trial=3, attempt=1, phase="Running", created=ago(590), started=True, ready=True, started_at=ago(580)
)


def ended(code: int, reason: str = "Error", message: str = "", **fields: object) -> PodSummary:
    changes: dict[str, object] = {"finished_at": ago(5), **fields}
    return replace(RUNNING, phase="Failed", exit_code=code, reason=reason, message=message, ready=False, **changes)  # type: ignore[arg-type]


PENDING = replace(RUNNING, phase="Pending", started=False, ready=False, started_at=None, created=ago(20))

CASES: list[tuple[str, TrialView, Rules, Decision]] = [
    ("running: wait", TrialView(3, ("crashed",), 3, JOB, RUNNING), RULES, Decision(Action.WAIT, attempt=1, live=True)),
    ("no Job yet: start it", TrialView(3), RULES, Decision(Action.START, attempt=0, waiting=Waiting.STARTING)),
    (
        "Job gone after two attempts: start the third",
        TrialView(3, ("preempted", "crashed")),
        RULES,
        Decision(Action.START, attempt=2, waiting=Waiting.STARTING),
    ),
    (
        "Job gone, pod still stopping: wait",
        TrialView(3, (), None, None, RUNNING),
        RULES,
        Decision(Action.WAIT, live=True),
    ),
    (
        "no pod yet: waiting, starting",
        TrialView(3, ("crashed",), None, replace(JOB, created=ago(5))),
        RULES,
        Decision(Action.WAIT, attempt=1, waiting=Waiting.STARTING),
    ),
    (
        "pod unschedulable: waiting",
        TrialView(3, ("crashed",), None, JOB, replace(PENDING, unschedulable=True)),
        RULES,
        Decision(Action.WAIT, attempt=1, waiting=Waiting.UNSCHEDULABLE, live=True),
    ),
    (
        "Job suspended by a queue: waiting, whatever its pod did",
        TrialView(3, ("crashed",), None, replace(JOB, suspended=True), ended(143)),
        RULES,
        Decision(Action.WAIT, attempt=1, waiting=Waiting.QUEUED),
    ),
    (
        "pod stopped by the queue before the Job was resumed: not a preemption",
        TrialView(3, ("crashed",), None, replace(JOB, resumed_at=ago(2)), ended(143)),
        RULES,
        Decision(Action.WAIT, attempt=1, waiting=Waiting.STARTING),
    ),
    (
        "never started: fail, delete the Job",
        TrialView(3, ("crashed",), None, JOB, replace(PENDING, created=ago(400))),
        RULES,
        Decision(Action.FAIL, attempt=1, record=Outcome.NEVER_STARTED, delete_job=True),
    ),
    (
        "resumed by the queue: the start timeout counts from then",
        TrialView(3, ("crashed",), None, replace(JOB, resumed_at=ago(10)), replace(PENDING, created=ago(400))),
        RULES,
        Decision(Action.WAIT, attempt=1, waiting=Waiting.STARTING, live=True),
    ),
    (
        "preempted: requeue for free",
        TrialView(3, ("crashed",), None, JOB, ended(143)),
        RULES,
        Decision(Action.REQUEUE, attempt=2, record=Outcome.PREEMPTED, delete_job=True),
    ),
    (
        "evicted: requeue",
        TrialView(3, ("preempted",), None, JOB, ended(137, disrupted=True)),
        RULES,
        Decision(Action.REQUEUE, attempt=2, record=Outcome.PREEMPTED, delete_job=True),
    ),
    (
        "preempted a third time with a bound of 2: fail",
        TrialView(3, ("preempted", "lost"), None, replace(JOB, attempt=2), ended(143, attempt=2)),
        RULES,
        Decision(Action.FAIL, attempt=2, record=Outcome.PREEMPTED),
    ),
    (
        "pod removed with its Job failed: requeue, fenced",
        TrialView(3, ("crashed",), None, replace(JOB, failed=True)),
        RULES,
        Decision(Action.REQUEUE, attempt=2, record=Outcome.PREEMPTED, delete_job=True, fence=True),
    ),
    (
        "crash with a retry left: retry",
        TrialView(3, ("preempted",), None, JOB, ended(1)),
        RULES,
        Decision(Action.RETRY, attempt=2, record=Outcome.CRASHED),
    ),
    (
        "second crash: fail",
        TrialView(3, ("crashed",), None, JOB, ended(1)),
        RULES,
        Decision(Action.FAIL, attempt=1, record=Outcome.CRASHED),
    ),
    (
        "OOMKilled: a crash",
        TrialView(3, ("crashed",), None, JOB, ended(137, reason="OOMKilled")),
        RULES,
        Decision(Action.FAIL, attempt=1, record=Outcome.CRASHED),
    ),
    (
        "exit 0 but still RUNNING: a crash",
        TrialView(3, (), None, replace(JOB, attempt=0), replace(RUNNING, attempt=0, phase="Succeeded")),
        RULES,
        Decision(Action.RETRY, attempt=1, record=Outcome.CRASHED),
    ),
    (
        "database unavailable, just now: pause",
        TrialView(3, ("crashed",), None, JOB, ended(3)),
        RULES,
        Decision(Action.WAIT, attempt=1, waiting=Waiting.PAUSED),
    ),
    (
        "database unavailable, paused long enough: requeue for free",
        TrialView(3, ("crashed",), None, JOB, ended(3, finished_at=ago(11))),
        RULES,
        Decision(Action.REQUEUE, attempt=2, record=Outcome.DATABASE_UNAVAILABLE, delete_job=True),
    ),
    (
        "database unavailable a third time in a row: a longer pause",
        TrialView(
            3,
            ("database-unavailable", "database-unavailable"),
            None,
            replace(JOB, attempt=2),
            ended(3, attempt=2, finished_at=ago(30)),
        ),
        RULES,
        Decision(Action.WAIT, attempt=2, waiting=Waiting.PAUSED),
    ),
    (
        "database unavailable, however often: never a retry spent",
        TrialView(
            3,
            ("crashed",) + ("database-unavailable",) * 20,
            None,
            replace(JOB, attempt=21),
            ended(3, attempt=21, finished_at=ago(301)),
        ),
        replace(RULES, retries=0, max_preemptions=0),
        Decision(Action.REQUEUE, attempt=22, record=Outcome.DATABASE_UNAVAILABLE, delete_job=True),
    ),
    (
        "node lost, heartbeat stale: requeue, fence the old attempt",
        TrialView(3, ("crashed",), 200, JOB, replace(RUNNING, ready=False)),
        RULES,
        Decision(Action.REQUEUE, attempt=2, record=Outcome.LOST, delete_job=True, fence=True),
    ),
    (
        "node lost, heartbeat fresh: wait",
        TrialView(3, ("crashed",), 30, JOB, replace(RUNNING, ready=False)),
        RULES,
        Decision(Action.WAIT, attempt=1, live=True),
    ),
    (
        "ready, heartbeat stale (the database is away): wait",
        TrialView(3, ("crashed",), 500, JOB, RUNNING),
        RULES,
        Decision(Action.WAIT, attempt=1, live=True),
    ),
    (
        "deletion never confirmed, silent: requeue, fenced",
        TrialView(3, ("crashed",), 400, JOB, replace(RUNNING, deleting=True, deletion_deadline=ago(60))),
        RULES,
        Decision(Action.REQUEUE, attempt=2, record=Outcome.LOST, delete_job=True, fence=True),
    ),
    (
        "pod gone, Job not yet failed, heartbeat stale: requeue, fenced",
        TrialView(3, ("crashed",), 200, JOB, None),
        RULES,
        Decision(Action.REQUEUE, attempt=2, record=Outcome.LOST, delete_job=True, fence=True),
    ),
    (
        "no pod, heartbeat of an earlier attempt: still waiting to start",
        TrialView(3, ("crashed",), 700, replace(JOB, created=ago(200)), None),
        RULES,
        Decision(Action.WAIT, attempt=1, waiting=Waiting.STARTING),
    ),
    (
        "a superseded pod: carry the requeue through",
        TrialView(3, ("crashed", "lost"), None, JOB, ended(4)),
        RULES,
        Decision(Action.REQUEUE, attempt=2, record=Outcome.LOST, delete_job=True, fence=True),
    ),
    (
        "the study ended: a preempted trial fails",
        TrialView(3, ("crashed",), None, JOB, ended(143)),
        replace(RULES, ended=True, end_reason="spec.budget.deadlineSeconds reached"),
        Decision(Action.FAIL, attempt=1, record=Outcome.PREEMPTED),
    ),
    (
        "suspended: stop, keep the trial",
        TrialView(3, ("crashed",), None, JOB, RUNNING),
        replace(RULES, stopping=True),
        Decision(Action.STOP, attempt=1, delete_job=True, live=True, fail=False),
    ),
    (
        "ended with Kill, pod gone: stop and fail",
        TrialView(3, ("crashed",), None, JOB, ended(143)),
        replace(RULES, stopping=True, ended=True, end_reason="deadline"),
        Decision(Action.STOP, attempt=1, delete_job=True, fail=True),
    ),
    (
        "ended with Kill, pod still stopping: stop, fail later",
        TrialView(3, ("crashed",), None, JOB, RUNNING),
        replace(RULES, stopping=True, ended=True, end_reason="deadline"),
        Decision(Action.STOP, attempt=1, delete_job=True, live=True, fail=False),
    ),
]


@pytest.mark.parametrize(("case", "view", "rules", "expected"), CASES, ids=[case for case, *_ in CASES])
def test_the_decision_for_each_situation(case: str, view: TrialView, rules: Rules, expected: Decision) -> None:
    decision = decide(view, rules, NOW)
    assert replace(decision, reason="") == replace(expected, reason=""), decision.reason


@pytest.mark.parametrize(
    ("view", "rules", "words"),
    [
        (
            TrialView(3, ("preempted", "lost"), None, replace(JOB, attempt=2), ended(143, attempt=2)),
            RULES,
            "preempted 3 times, more than spec.budget.maxPreemptionsPerTrial (2)",
        ),
        (
            TrialView(3, ("crashed",), None, JOB, ended(5, message="boom")),
            RULES,
            "boom; no retry left (spec.budget.retriesPerTrial: 1)",
        ),
        (TrialView(3, ("preempted",), None, JOB, ended(5)), RULES, "exit code 5; retry 1 of 1"),
        (
            TrialView(3, ("crashed",), None, JOB, ended(3, finished_at=ago(4))),
            RULES,
            "could not reach the study's database; running it again in 6s",
        ),
        (
            TrialView(3, ("crashed",), 200, JOB, replace(RUNNING, ready=False)),
            RULES,
            "its pod is unreachable (node lost?) and silent for 200s",
        ),
        (
            TrialView(3, ("crashed",), None, JOB, replace(PENDING, created=ago(400), waiting="ImagePullBackOff: nope")),
            RULES,
            "the trial pod did not start within 300s: ImagePullBackOff: nope",
        ),
    ],
)
def test_decisions_say_why(view: TrialView, rules: Rules, words: str) -> None:
    assert words in decide(view, rules, NOW).reason


def test_a_pod_on_a_lost_node_holds_no_slot() -> None:
    assert holds_slot(RUNNING, NOW) and holds_slot(PENDING, NOW)
    assert not holds_slot(ended(143), NOW)
    assert not holds_slot(replace(RUNNING, deleting=True, deletion_deadline=ago(60)), NOW)
    assert holds_slot(replace(RUNNING, deleting=True, deletion_deadline=ago(5)), NOW), "still stopping normally"
    assert not holds_slot(replace(RUNNING, phase="Unknown"), NOW)
    assert not holds_slot(replace(RUNNING, ready=False), NOW), "its node stopped reporting"


def test_a_pod_whose_trial_exited_holds_its_slot_until_the_kubelet_ends_it() -> None:
    exited = replace(ended(0, reason="Completed"), phase="Running")
    assert holds_slot(exited, NOW)


def pod_body(phase: str, **status: object) -> dict:
    return {
        "metadata": {
            "name": "p",
            "labels": {"hpo.dev/trial": "2", "hpo.dev/attempt": "1"},
            "creationTimestamp": "2026-12-01T11:59:00Z",
        },
        "status": {"phase": phase, **status},
    }


def test_a_pod_body_is_summarised_with_what_the_decisions_need() -> None:
    lost = summarise(
        {
            **pod_body(
                "Running",
                conditions=[{"type": "Ready", "status": "False"}],
                containerStatuses=[{"name": "trial", "state": {"running": {"startedAt": "2026-12-01T11:59:30Z"}}}],
            ),
            "metadata": {
                "name": "p",
                "labels": {"hpo.dev/trial": "2", "hpo.dev/attempt": "1"},
                "creationTimestamp": "2026-12-01T11:59:00Z",
                "deletionTimestamp": "2026-12-01T11:59:50Z",
            },
        }
    )
    assert (lost.trial, lost.attempt, lost.started, lost.ready, lost.deleting) == (2, 1, True, False, True)
    assert lost.started_at == ago(30) and lost.deletion_deadline == ago(10)
    waiting = summarise(
        pod_body(
            "Pending",
            conditions=[{"type": "PodScheduled", "status": "False", "message": "0/1 nodes: Insufficient cpu"}],
        )
    )
    assert waiting.unschedulable and waiting.waiting == "0/1 nodes: Insufficient cpu" and not waiting.started
    done = summarise(
        pod_body(
            "Failed",
            containerStatuses=[
                {
                    "name": "trial",
                    "state": {
                        "terminated": {
                            "exitCode": 3,
                            "finishedAt": "2026-12-01T11:59:55Z",
                            "message": "FAIL cannot reach",
                        }
                    },
                }
            ],
        )
    )
    assert (done.exit_code, done.finished_at, done.message) == (3, ago(5), "FAIL cannot reach")
    odd = summarise({"metadata": {"labels": {"hpo.dev/trial": "x"}}, "status": None})
    assert odd.trial == -1 and odd.phase == "Pending", "a malformed pod is summarised, not an exception"


def test_a_job_body_says_whether_a_queue_holds_it() -> None:
    job = summarise_job(
        {
            "metadata": {
                "name": "s-3-1",
                "labels": {"hpo.dev/trial": "3", "hpo.dev/attempt": "1"},
                "creationTimestamp": "2026-12-01T11:50:00Z",
            },
            "spec": {"suspend": False},
            "status": {
                "conditions": [{"type": "Suspended", "status": "False", "lastTransitionTime": "2026-12-01T11:59:00Z"}]
            },
        }
    )
    assert (job.trial, job.attempt, job.suspended, job.resumed_at) == (3, 1, False, ago(60))
    assert summarise_job({"metadata": {"name": "j"}, "spec": {"suspend": True}}).suspended


def trial_job(trial: int, failed: bool = False, attempt: int = 0) -> JobSummary:
    return JobSummary(f"s-{trial}-{attempt}", trial=trial, attempt=attempt, created=ago(100 - trial), failed=failed)


def trial_pod(trial: int, phase: str, attempt: int = 0) -> PodSummary:
    return PodSummary(f"s-{trial}-{attempt}-x", trial=trial, attempt=attempt, phase=phase, created=ago(100 - trial))


CLEAN_UP: list[tuple[str, list[JobSummary], list[PodSummary], set[int], set[int], int, list[str]]] = [
    ("a succeeded trial's Job goes", [trial_job(1)], [trial_pod(1, "Succeeded")], set(), set(), 3, ["s-1-0"]),
    ("a running trial's Job stays", [trial_job(1)], [trial_pod(1, "Running")], {1}, set(), 3, []),
    ("a trial whose pod still stops keeps its Job", [trial_job(1)], [], set(), {1}, 3, []),
    ("a Job marked Failed is kept", [trial_job(1, failed=True)], [], set(), set(), 3, []),
    (
        "a pod that ended Failed keeps its Job before the Job controller marks it",
        [trial_job(1), trial_job(2)],
        [trial_pod(1, "Failed"), trial_pod(2, "Succeeded")],
        set(),
        set(),
        3,
        ["s-2-0"],
    ),
    (
        "only the newest failed attempts are kept",
        [trial_job(n, failed=True) for n in range(5)],
        [],
        set(),
        set(),
        2,
        ["s-0-0", "s-1-0", "s-2-0"],
    ),
    ("none kept when the operator keeps none", [trial_job(1, failed=True)], [], set(), set(), 0, ["s-1-0"]),
    (
        "a failed earlier attempt's pod does not keep the next attempt's Job",
        [trial_job(1, attempt=1)],
        [trial_pod(1, "Failed", attempt=0), trial_pod(1, "Succeeded", attempt=1)],
        set(),
        set(),
        3,
        ["s-1-1"],
    ),
]


@pytest.mark.parametrize(
    ("jobs", "pods", "running", "live", "keep", "expected"),
    [case[1:] for case in CLEAN_UP],
    ids=[case[0] for case in CLEAN_UP],
)
def test_jobs_of_finished_trials_go_but_the_newest_failed_attempts_stay(
    jobs: list[JobSummary], pods: list[PodSummary], running: set[int], live: set[int], keep: int, expected: list[str]
) -> None:
    assert jobs_to_delete(jobs, pods, running, live, keep) == expected
