"""Trial Jobs, database names and pod outcomes: pure builders and classifiers."""

from __future__ import annotations

import datetime
import json

import pytest

from hpo_operator import contract, database, dispatch
from hpo_operator.outcomes import Outcome, classify, summarise
from hpo_operator.validation import parse
from tests.legacy_names import colliding_studies

pytestmark = pytest.mark.unit
NOW = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)
REF = dispatch.TrialRef("team", "mnist", "mnist", "mnist-storage")


def build(**spec_overrides: object) -> dict:
    spec, problems = parse({"budget": {"trials": 4, "parallelism": 2}, **spec_overrides})
    assert spec is not None, problems
    assignment = dispatch.assignment(spec, REF, 3, 17, {"class": "TPESampler", "kwargs": {}}, None)
    return dispatch.build_job(spec, REF, 3, 1, assignment, "trial:1")


def test_a_trial_job_runs_one_attempt_of_the_assigned_trial() -> None:
    job = build(
        checkpoints={"claimName": "ckpt"},
        trial={
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "trial",
                            "env": [{"name": "HPO_ASSIGNMENT", "value": "spoofed"}, {"name": "HPO_MINE", "value": "1"}],
                            "resources": {"limits": {"nvidia.com/gpu": 1}},
                        }
                    ]
                }
            }
        },
    )
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


def test_trial_pods_get_no_service_account_token_unless_the_template_asks() -> None:
    assert build()["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    asked = build(trial={"template": {"spec": {"automountServiceAccountToken": True}}})
    assert asked["spec"]["template"]["spec"]["automountServiceAccountToken"] is True


def test_trial_pods_learn_their_pod_and_node_names_to_record_where_the_trial_ran() -> None:
    env = {e["name"]: e for e in build()["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[contract.POD_NAME_ENV]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env[contract.NODE_NAME_ENV]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_trial_pods_of_a_tls_study_mount_the_servers_ca_from_the_storage_secret() -> None:
    spec, _ = parse({"budget": {"trials": 1}})
    assert spec is not None
    ref = dispatch.TrialRef("team", "mnist", "mnist", "mnist-storage", storage_tls=True)
    job = dispatch.build_job(spec, ref, 0, 0, {}, "trial:1")
    pod = job["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == dispatch.STORAGE_TLS_VOLUME)
    assert volume["secret"] == {"secretName": "mnist-storage", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == dispatch.STORAGE_TLS_VOLUME)
    assert f"{mount['mountPath']}/ca.crt" == database.TLS_CA_PATH


SAFE_NAME = set("abcdefghijklmnopqrstuvwxyz0123456789_")


def test_database_and_user_names_are_safe_fit_mysql_and_differ_for_lookalike_studies() -> None:
    a, b = database.names_for("team", "my-study"), database.names_for("team", "my_study")
    assert len({a.database, b.database, a.user, b.user, a.reader, b.reader}) == 6
    for longest in (database.names_for("n" * 63, "s" * 253), database.names_for("t-chart-70f72c", "a-b" * 84 + "a")):
        assert len(longest.user) <= 32 and len(longest.reader) <= 32
        # The GRANT names the database as a pattern with every `_` escaped: that too must fit 64.
        assert len(longest.database) + longest.database.count("_") <= 64, longest.database
    injected = database.names_for("ns", "x`; DROP DATABASE mysql; --")
    assert all(set(name) <= SAFE_NAME for name in (injected.database, injected.user, injected.reader))


def test_names_that_collided_under_the_former_32_bit_scheme_no_longer_meet() -> None:
    victim, attacker = colliding_studies("t-1234abcd-victim", "t-1234abcd-victim-x")
    assert database.legacy_database("t-1234abcd-victim", victim) == database.legacy_database(
        "t-1234abcd-victim-x", attacker
    )
    ours, theirs = database.names_for("t-1234abcd-victim", victim), database.names_for("t-1234abcd-victim-x", attacker)
    assert ours.database != theirs.database and ours.user != theirs.user and ours.reader != theirs.reader


def test_the_storage_url_encodes_the_password_and_names_the_ca_when_tls_is_on() -> None:
    server = database.Server("db", 3306, "root", "pw")
    assert database.storage_url(server, "u", "d", "p{a}ss") == "mysql+pymysql://u:p%7Ba%7Dss@db:3306/d?charset=utf8mb4"
    tls = database.Server("db", 3306, "root", "pw", database.Tls(ca_pem="PEM", verify_identity=False))
    assert database.storage_url(tls, "u", "d", "pw").endswith(
        "?charset=utf8mb4&ssl_ca=%2Fvar%2Frun%2Fhpo%2Fstorage-tls%2Fca.crt&ssl_check_hostname=false"
    )


def test_no_password_is_printed_in_a_server_or_credentials_repr() -> None:
    server = database.Server("db", 3306, "root", "admin-secret-1", database.Tls(ca_pem="PEM"))
    credentials = database.Credentials("study-secret-2", "reader-secret-3", "hpo_x")
    assert "secret" not in repr(server) + repr(credentials)


def pod(phase: str, **status: object) -> dict:
    return {
        "metadata": {
            "name": "p",
            "labels": {"hpo.dev/trial": "2", "hpo.dev/attempt": "0"},
            "creationTimestamp": "2026-11-22T11:59:00Z",
        },
        "status": {"phase": phase, **status},
    }


def terminated(code: int, reason: str = "Error", message: str = "") -> dict:
    return {
        "containerStatuses": [
            {"name": "trial", "state": {"terminated": {"exitCode": code, "reason": reason, "message": message}}}
        ]
    }


@pytest.mark.parametrize(
    ("body", "outcome", "reason"),
    [
        (pod("Succeeded"), Outcome.SUCCEEDED, ""),
        (pod("Failed", **terminated(143)), Outcome.PREEMPTED, "stopped from outside"),
        (
            pod("Failed", conditions=[{"type": "DisruptionTarget", "status": "True"}], **terminated(137)),
            Outcome.PREEMPTED,
            "disrupted",
        ),
        (pod("Failed", **terminated(3, message="STORAGE lost")), Outcome.DATABASE_UNAVAILABLE, "STORAGE lost"),
        (pod("Failed", **terminated(4)), Outcome.SUPERSEDED, "a later attempt owns the trial"),
        (pod("Failed", **terminated(2, message="FAIL bad objective")), Outcome.CRASHED, "FAIL bad objective"),
        (pod("Failed", **terminated(137, reason="OOMKilled")), Outcome.CRASHED, "OOMKilled"),
        (pod("Failed", reason="DeadlineExceeded", **terminated(143)), Outcome.CRASHED, "trialTimeoutSeconds"),
        (pod("Running", **{"containerStatuses": [{"name": "trial", "state": {"running": {}}}]}), Outcome.ACTIVE, ""),
        (
            pod(
                "Pending",
                conditions=[
                    {"type": "PodScheduled", "status": "False", "message": "0/1 nodes: Insufficient nvidia.com/gpu"}
                ],
            ),
            Outcome.NEVER_STARTED,
            "Insufficient nvidia.com/gpu",
        ),
    ],
)
def test_pod_endings_are_classified_as_a_user_expects(body: dict, outcome: Outcome, reason: str) -> None:
    verdict = classify(summarise(body), NOW, start_timeout=30)
    assert verdict.outcome is outcome and reason in verdict.reason


@pytest.mark.parametrize(
    ("requested", "trials", "operator_max", "value", "capped"),
    [
        (8, 100, 256, 8, ""),
        (10, 2, 256, 2, ""),  # never more than the budget: not worth a word
        (
            10**9,
            10**9,
            256,
            256,
            "parallelism capped at 256 by the operator's HPO_MAX_PARALLELISM (spec.budget.parallelism is 1000000000)",
        ),
        (300, 100, 256, 100, ""),
        (300, 10**9, 256, 256, "parallelism capped at 256"),
    ],
)
def test_parallelism_is_capped_by_the_budget_and_the_operator(
    requested: int, trials: int, operator_max: int, value: int, capped: str
) -> None:
    result = dispatch.parallelism(requested, trials, operator_max)
    assert result.value == value and result.capped.startswith(capped) and bool(result.capped) == bool(capped)


@pytest.mark.parametrize(
    ("parallelism", "occupied", "created", "total", "waiting", "expected"),
    [
        (8, 0, 0, 100, 0, dispatch.Plan(8)),
        (8, 8, 8, 100, 0, dispatch.Plan(0)),
        (8, 0, 98, 100, 0, dispatch.Plan(2)),
        (256, 0, 0, 10**9, 0, dispatch.Plan(16, paced=True)),  # the first pass of a huge study
        (256, 16, 16, 10**9, 16, dispatch.Plan(0, paced=True)),  # nothing started yet: nothing more
        (256, 16, 16, 10**9, 4, dispatch.Plan(12, paced=True)),  # twelve started: twelve more
        (4, 4, 4, 10, 4, dispatch.Plan(0)),  # full: not paced, just busy
        (20, 3, 3, 10**9, 20, dispatch.Plan(0, paced=True)),  # more waiting than the bound (it was lowered)
    ],
)
def test_dispatch_paces_itself_on_pods_that_have_not_started(
    parallelism: int, occupied: int, created: int, total: int, waiting: int, expected: dispatch.Plan
) -> None:
    assert dispatch.plan(parallelism, occupied, created, total, waiting, max_waiting=16) == expected
