"""Trials under a Kueue queue: which queue, the Job Kueue is given, what its Workload says (pure)."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import pytest

from hpo_operator import dispatch, outcomes, queueing, validation
from hpo_operator.validation import parse
from tests.testbed import kueue

pytestmark = pytest.mark.unit
REF = dispatch.TrialRef("team", "mnist", "mnist", "mnist-storage")
NOW = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.UTC)
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def build(**spec_overrides: object) -> dict[str, Any]:
    spec, problems = parse({"budget": {"trials": 4, "parallelism": 2}, **spec_overrides})
    assert spec is not None, problems
    assignment = dispatch.assignment(spec, REF, 3, 17, {"class": "TPESampler", "kwargs": {}}, None)
    return dispatch.build_job(spec, REF, 3, 0, assignment, "trial:1")


def template(labels: dict[str, str]) -> dict[str, Any]:
    return {"template": {"metadata": {"labels": labels}, "spec": {"priorityClassName": "low"}}}


@pytest.mark.parametrize(
    ("overrides", "queue", "field"),
    [
        ({}, None, None),
        ({"queueName": "user-queue"}, "user-queue", "spec.queueName"),
        ({"trial": template({QUEUE_LABEL: "team-queue"})}, "team-queue", queueing.TEMPLATE_QUEUE_FIELD),
        ({"queueName": "user-queue", "trial": template({QUEUE_LABEL: "team-queue"})}, "user-queue", "spec.queueName"),
        ({"trial": template({QUEUE_LABEL: ""})}, None, None),
    ],
    ids=["none", "spec", "template-label", "spec-wins", "empty-label"],
)
def test_the_queue_is_the_spec_field_else_the_template_label(
    overrides: dict[str, Any], queue: str | None, field: str | None
) -> None:
    job = build(**overrides)
    labels = job["metadata"]["labels"]
    assert labels.get(QUEUE_LABEL) == queue
    assert job["spec"].get("suspend") is (True if queue else None), "queued Jobs start suspended, others not"
    assert QUEUE_LABEL not in job["spec"]["template"]["metadata"]["labels"], "pods carry no queue: one workload"
    spec, _ = parse({"budget": {"trials": 4}, **overrides})
    assert spec is not None
    references = [r for r in validation.references(spec) if r.kind == "LocalQueue"]
    assert [(r.name, r.field) for r in references] == ([(queue, field)] if queue else [])


def test_a_queued_job_keeps_the_pods_priority_and_gives_kueue_the_workload_priority_class() -> None:
    job = build(
        queueName="user-queue",
        trial=template({"kueue.x-k8s.io/priority-class": "research", "team": "vision"}),
    )
    assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "research"
    pod = job["spec"]["template"]
    assert pod["spec"]["priorityClassName"] == "low", "Kueue reads the pods' priority class as the workload's"
    assert (
        pod["metadata"]["labels"]["team"] == "vision"
        and "kueue.x-k8s.io/priority-class" not in pod["metadata"]["labels"]
    )
    assert job["spec"]["backoffLimit"] == 0 and "parallelism" not in job["spec"], "one pod: a pod set Kueue sizes"


@pytest.mark.parametrize(
    ("value", "accepted"),
    [("user-queue", True), ("q" * 63, True), ("q" * 64, False), ("", False), ("User Queue", False), (7, False)],
)
def test_queue_names_must_be_label_values_kueue_can_read(value: object, accepted: bool) -> None:
    spec, problems = parse({"budget": {"trials": 4}, "queueName": value})
    assert (spec is not None) is accepted
    assert accepted or any(p.field == "spec.queueName" for p in problems)


@pytest.mark.parametrize(
    ("exists", "needle"),
    [(True, None), (False, "does not exist in namespace team; create it"), (None, "this cluster has no Kueue")],
    ids=["exists", "missing", "no-kueue"],
)
def test_a_missing_local_queue_or_kueue_names_the_field_and_what_to_do(exists: bool | None, needle: str | None) -> None:
    reference = validation.Reference("spec.queueName", "LocalQueue", "user-queue")
    problem = validation.missing_reference(reference, "team", exists)
    if needle is None:
        assert problem is None
    else:
        assert problem is not None and problem.field == "spec.queueName" and needle in problem.message


def workload(
    conditions: Sequence[dict[str, Any]] = (), evictions: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": list(conditions)}
    if evictions is not None:
        status["schedulingStats"] = {"evictions": evictions}
    return {"metadata": {"labels": {"kueue.x-k8s.io/job-uid": "u1"}}, "status": status}


PENDING = {
    "type": "QuotaReserved",
    "status": "False",
    "reason": "Pending",
    "message": "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu",
}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (None, "waiting for Kueue to admit it from LocalQueue q (no Workload yet)"),
        (
            workload([PENDING]),
            "not admitted by LocalQueue q (Pending: couldn't assign flavors to pod set main: insufficient "
            "unused quota for nvidia.com/gpu)",
        ),
        (workload([{**PENDING, "message": ""}]), "not admitted by LocalQueue q (Pending: waiting for quota)"),
        (
            workload([{"type": "QuotaReserved", "status": "True"}]),
            "admitted by LocalQueue q, waiting for its admission checks",
        ),
    ],
    ids=["no-workload", "quota", "no-message", "reserved"],
)
def test_why_a_queued_trial_waits_is_kueues_own_reason(body: dict[str, Any] | None, expected: str) -> None:
    assert queueing.pending_message(body, "q") == expected


@pytest.mark.parametrize(
    ("body", "count"),
    [
        (None, 0),
        (workload(), 0),
        (workload(evictions=[{"reason": "Preempted", "underlyingCause": "", "count": 2}]), 2),
        (
            workload(
                evictions=[
                    {"reason": "Preempted", "underlyingCause": "", "count": 1},
                    {"reason": "InactiveWorkload", "underlyingCause": "", "count": 1},
                    {"reason": "odd", "count": "3"},
                ]
            ),
            2,
        ),
    ],
)
def test_evictions_are_kueues_count_over_the_jobs_life(body: dict[str, Any] | None, count: int) -> None:
    assert queueing.evictions(body) == count


def test_a_workload_is_matched_to_its_job_by_label_else_by_its_controller() -> None:
    assert queueing.job_uid(workload()) == "u1"
    owned = {"metadata": {"ownerReferences": [{"kind": "Job", "uid": "u2", "controller": True}]}}
    assert queueing.job_uid(owned) == "u2"
    evicted = workload([{"type": "Evicted", "status": "True", "reason": "Preempted", "message": "to make room"}])
    assert queueing.eviction_reason(evicted) == "Preempted: to make room"


def job(suspended: bool, resumed: datetime.datetime | None, created: datetime.datetime) -> outcomes.JobSummary:
    return outcomes.JobSummary(
        "mnist-3-0", 3, 0, created, failed=False, suspended=suspended, resumed_at=resumed, queue="user-queue"
    )


def pod(**fields: Any) -> outcomes.PodSummary:
    return outcomes.PodSummary(**{"name": "p", "trial": 3, "attempt": 0, "phase": "Pending", "created": NOW, **fields})


RULES = outcomes.Rules(retries=0, max_preemptions=0, start_timeout=60, lost_after=120)
HOUR = datetime.timedelta(hours=1)


@pytest.mark.parametrize(
    ("job_", "pod_", "action", "waiting"),
    [
        # an hour in the queue, far past the start timeout: waiting, not failing
        (job(True, None, NOW - HOUR), None, outcomes.Action.WAIT, outcomes.Waiting.QUEUED),
        # preempted by the queue: its pod is being stopped, the Job suspended again; no preemption is spent
        (
            job(True, NOW - HOUR, NOW - 2 * HOUR),
            pod(phase="Failed", started=True, exit_code=143, created=NOW - HOUR, finished_at=NOW - HOUR / 2),
            outcomes.Action.WAIT,
            outcomes.Waiting.QUEUED,
        ),
        # admitted 10 s ago after an hour in the queue: the start timeout counts from admission
        (
            job(False, NOW - datetime.timedelta(seconds=10), NOW - HOUR),
            None,
            outcomes.Action.WAIT,
            outcomes.Waiting.STARTING,
        ),
        # admitted again after a preemption: the old pod's end is not this attempt's end
        (
            job(False, NOW - datetime.timedelta(seconds=5), NOW - HOUR),
            pod(phase="Failed", started=True, exit_code=143, created=NOW - HOUR, finished_at=NOW - HOUR / 2),
            outcomes.Action.WAIT,
            outcomes.Waiting.STARTING,
        ),
        # admitted again while the preempted pod still stops: that pod is not this admission's
        (
            job(False, NOW - datetime.timedelta(seconds=1), NOW - HOUR),
            pod(phase="Running", started=True, deleting=True, created=NOW - HOUR, deletion_deadline=NOW),
            outcomes.Action.WAIT,
            outcomes.Waiting.STARTING,
        ),
        # admitted long ago and still no pod: the start timeout applies
        (job(False, NOW - HOUR, NOW - 2 * HOUR), None, outcomes.Action.FAIL, None),
    ],
    ids=[
        "queued-for-an-hour",
        "preempted-by-the-queue",
        "just-admitted",
        "re-admitted",
        "re-admitted-old-pod-stopping",
        "admitted-never-started",
    ],
)
def test_a_queued_trial_waits_and_its_start_timeout_counts_from_admission(
    job_: outcomes.JobSummary,
    pod_: outcomes.PodSummary | None,
    action: outcomes.Action,
    waiting: outcomes.Waiting | None,
) -> None:
    # The trial last beat before its latest admission (it ran, then the queue preempted it): no sign of a lost pod.
    since_admission = (NOW - job_.resumed_at).total_seconds() if job_.resumed_at else 0
    beat = since_admission + 60 if since_admission < 600 else None
    decision = outcomes.decide(outcomes.TrialView(3, (), beat, job_, pod_), RULES, NOW)
    assert decision.action is action, decision.reason
    assert decision.waiting is waiting
    assert decision.record is None or decision.record is outcomes.Outcome.NEVER_STARTED, "no preemption recorded"


def test_a_job_summary_knows_its_queue_and_uid() -> None:
    body = {
        "metadata": {
            "name": "mnist-3-0",
            "uid": "u1",
            "labels": {"hpo.dev/trial": "3", "hpo.dev/attempt": "0", QUEUE_LABEL: "user-queue"},
            "creationTimestamp": "2026-12-03T11:00:00Z",
        },
        "spec": {"suspend": True},
        "status": {
            "conditions": [{"type": "Suspended", "status": "True", "lastTransitionTime": "2026-12-03T11:00:01Z"}]
        },
    }
    summary = outcomes.summarise_job(body)
    assert (summary.queue, summary.uid, summary.suspended, summary.resumed_at) == ("user-queue", "u1", True, None)


def test_the_testbeds_kueue_runs_our_image_and_leaves_out_the_aggregated_visibility_api() -> None:
    documents = [
        {"kind": "APIService", "metadata": {"name": "v1beta1.visibility.kueue.x-k8s.io"}},
        {
            "kind": "Deployment",
            "metadata": {"name": kueue.DEPLOYMENT},
            "spec": {
                "template": {
                    "spec": {"containers": [{"name": "manager", "image": "upstream", "imagePullPolicy": "Always"}]}
                }
            },
        },
        {"kind": "CustomResourceDefinition", "metadata": {"name": "workloads.kueue.x-k8s.io"}},
    ]
    adapted = kueue.adapt(documents, "127.0.0.1:5000/hpo/kueue:abc")
    assert [d["kind"] for d in adapted] == ["Deployment", "CustomResourceDefinition"]
    container = adapted[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "127.0.0.1:5000/hpo/kueue:abc" and container["imagePullPolicy"] == "IfNotPresent"
