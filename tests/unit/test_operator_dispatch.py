"""Trial Jobs, database names and pod outcomes: pure builders and classifiers."""

from __future__ import annotations

import datetime
import json

import pytest

from hpo_operator import database, dispatch
from hpo_operator.outcomes import Outcome, classify, summarise
from hpo_operator.validation import parse

pytestmark = pytest.mark.unit
NOW = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)
REF = dispatch.TrialRef("team", "mnist", "mnist", "mnist-storage")


def build(**spec_overrides: object) -> dict:
    spec, problems = parse({"budget": {"trials": 4, "parallelism": 2}, **spec_overrides})
    assert spec is not None, problems
    assignment = dispatch.assignment(spec, REF, 3, 17, {"class": "TPESampler", "kwargs": {}}, None)
    return dispatch.build_job(spec, REF, 3, 1, assignment, "trial:1")


def test_a_trial_job_runs_one_attempt_of_the_assigned_trial() -> None:
    job = build(checkpoints={"claimName": "ckpt"}, trial={"template": {"spec": {"containers": [
        {"name": "trial", "env": [{"name": "HPO_ASSIGNMENT", "value": "spoofed"}, {"name": "HPO_MINE", "value": "1"}],
         "resources": {"limits": {"nvidia.com/gpu": 1}}}]}}})
    assert job["metadata"]["name"] == "mnist-3-1"
    assert job["metadata"]["labels"]["hpo.dev/study"] == "mnist" and job["metadata"]["labels"]["hpo.dev/trial"] == "3"
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["podReplacementPolicy"] == "Failed"
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"]["hpo.dev/trial"] == "3" and pod["spec"]["restartPolicy"] == "Never"
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["hpo-trial"] and container["image"] == "trial:1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1", "quantities go to the API as strings"
    env = {e["name"]: e for e in container["env"]}
    assert json.loads(env["HPO_ASSIGNMENT"]["value"])["trial"] == {"number": 3, "id": 17}
    assert env["HPO_STORAGE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "mnist-storage", "key": "url"}
    assert env["HPO_MINE"]["value"] == "1", "the user's own variables stay"
    assert container["volumeMounts"] == [{"name": "hpo-checkpoints", "mountPath": "/checkpoints"}]


def test_job_names_fit_label_limits_and_stay_distinct() -> None:
    long = "x" * 80
    names = {dispatch.job_name(long, 1, 0), dispatch.job_name(long + "y", 1, 0)}
    assert len(names) == 2 and all(len(n) <= 63 for n in names)
    assert dispatch.job_name(long, 12, 3).endswith("-12-3")
    assert len(dispatch.label_value("s" * 100)) <= 63


@pytest.mark.parametrize(("occupied", "created", "expected"), [(0, 0, 2), (1, 0, 1), (2, 0, 0), (0, 3, 1), (0, 4, 0)])
def test_free_slots_respect_parallelism_and_budget(occupied: int, created: int, expected: int) -> None:
    assert dispatch.free_slots(2, occupied, created, 4) == expected


def test_database_names_are_safe_short_and_distinct_for_lookalike_studies() -> None:
    a, b = database.names_for("team", "my-study"), database.names_for("team", "my_study")
    assert a != b and all(len(n) <= 31 for n in (a, b))
    injected = database.names_for("ns", "x`; DROP DATABASE mysql; --")
    assert set(injected) <= set("abcdefghijklmnopqrstuvwxyz0123456789_")
    url = database.storage_url(database.Server("db", 3306, "root", "pw"), a, "p{a}ss")
    assert url == f"mysql+pymysql://{a}:p%7Ba%7Dss@db:3306/{a}?charset=utf8mb4"


def pod(phase: str, **status: object) -> dict:
    return {"metadata": {"name": "p", "labels": {"hpo.dev/trial": "2", "hpo.dev/attempt": "0"},
                         "creationTimestamp": "2026-11-22T11:59:00Z"},
            "status": {"phase": phase, **status}}


def terminated(code: int, reason: str = "Error", message: str = "") -> dict:
    return {"containerStatuses": [{"name": "trial", "state": {"terminated": {
        "exitCode": code, "reason": reason, "message": message}}}]}


@pytest.mark.parametrize(
    ("body", "outcome", "reason"),
    [
        (pod("Succeeded"), Outcome.SUCCEEDED, ""),
        (pod("Failed", **terminated(143)), Outcome.PREEMPTED, "stopped from outside"),
        (pod("Failed", conditions=[{"type": "DisruptionTarget", "status": "True"}], **terminated(137)),
         Outcome.PREEMPTED, "disrupted"),
        (pod("Failed", **terminated(3, message="STORAGE lost")), Outcome.CRASHED, "STORAGE lost"),
        (pod("Failed", **terminated(137, reason="OOMKilled")), Outcome.CRASHED, "OOMKilled"),
        (pod("Failed", reason="DeadlineExceeded", **terminated(143)), Outcome.CRASHED, "trialTimeoutSeconds"),
        (pod("Running", **{"containerStatuses": [{"name": "trial", "state": {"running": {}}}]}), Outcome.ACTIVE, ""),
        (pod("Pending", conditions=[{"type": "PodScheduled", "status": "False",
                                     "message": "0/1 nodes: Insufficient nvidia.com/gpu"}]),
         Outcome.NEVER_STARTED, "Insufficient nvidia.com/gpu"),
    ],
)
def test_pod_endings_are_classified_as_a_user_expects(body: dict, outcome: Outcome, reason: str) -> None:
    verdict = classify(summarise(body), NOW, start_timeout=30)
    assert verdict.outcome is outcome and reason in verdict.reason
