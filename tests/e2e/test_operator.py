"""The operator end to end: HpoStudy in, trial pods on the testbed's nodes, results in status.

Each test runs in its own namespace against the real testbed and the operator from `make operator-up`.
Trials run the small objectives in objectives.py (a ConfigMap mounted into the trial pods).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import optuna
import pytest
from kubernetes import client

from hpo_operator import database
from tests import mysql
from tests.conftest import ROOT
from tests.e2e.conftest import start_operator
from tests.helpers import wait_for
from tests.mysql import admin_server
from tests.pod_logs import PodLogs
from tests.studies import Studies

pytestmark = pytest.mark.e2e


def spec(
    template: dict[str, Any],
    trials: int = 6,
    parallelism: int = 2,
    objective: str = "objectives:quadratic",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "searchSpace": {"x": {"type": "float", "low": -5, "high": 5}, "y": {"type": "int", "low": 0, "high": 3}},
        "budget": {"trials": trials, "parallelism": parallelism},
        "trial": {"objective": objective, "template": template},
        **extra,
    }


def counts(study: optuna.Study) -> dict[str, int]:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {
        "complete": states.count(optuna.trial.TrialState.COMPLETE),
        "pruned": states.count(optuna.trial.TrialState.PRUNED),
        "failed": states.count(optuna.trial.TrialState.FAIL),
        "running": states.count(optuna.trial.TrialState.RUNNING),
        "waiting": 0,
        "preemptions": 0,
    }  # waiting: RUNNING trials whose pod has not started (none at the end); preemptions: none here


def test_a_study_completes_within_parallelism_and_its_status_matches_optuna(
    studies: Studies, objectives: dict[str, Any], live_pods: Any, kube: client.ApiClient
) -> None:
    pods = live_pods("full")
    studies.create("full", spec(objectives, trials=6, parallelism=2))
    done = studies.wait_phase("full", "Succeeded")
    pods.stop()

    study = studies.optuna_study("full")
    assert len(study.trials) == 6
    assert done["status"]["trials"] == counts(study)
    assert done["status"]["bestTrial"]["number"] == study.best_trial.number
    assert done["status"]["bestTrial"]["value"] == study.best_value
    assert done["status"]["bestTrial"]["params"] == study.best_params
    assert done["status"]["progress"] == "6/6"
    assert 1 <= pods.most <= 2, f"{pods.most} trial pods were alive at once with parallelism 2: {pods.peak}"
    assert len(pods.seen) == 6
    reasons = {e.reason for e in studies.events("full")}
    assert {"TrialStarted", "NewBest", "StudyFinished"} <= reasons
    jobs = client.BatchV1Api(kube).list_namespaced_job(studies.namespace).items
    assert jobs == [], "finished trials' Jobs are cleaned up"


def test_an_invalid_study_is_rejected_with_the_field_and_fixed_by_an_edit(
    studies: Studies, objectives: dict[str, Any]
) -> None:
    bad = spec(objectives, trials=2, parallelism=1)
    bad["searchSpace"]["x"] = {"type": "float", "low": 3, "high": -3}
    studies.create("bad", bad)
    failed = studies.wait_phase("bad", "Failed", 60)
    validated = {c["type"]: c for c in failed["status"]["conditions"]}["Validated"]
    assert validated["status"] == "False"
    assert "spec.searchSpace.x.low: low (3) must be less than high (-3)" in validated["message"]
    warning = wait_for(lambda: [e for e in studies.events("bad") if e.reason == "InvalidSpec"], 30, "the Event")
    assert warning[0].type == "Warning" and "spec.searchSpace.x.low" in warning[0].message

    studies.patch("bad", {"searchSpace": {"x": {"type": "float", "low": -3, "high": 3}}})
    studies.wait_phase("bad", "Succeeded")


def test_warm_start_runs_first_and_multi_objective_reports_a_pareto_front(
    studies: Studies, objectives: dict[str, Any]
) -> None:
    studies.create(
        "multi",
        {
            "objective": {"directions": ["minimize", "minimize"], "metrics": ["a", "b"]},
            "searchSpace": {"x": {"type": "float", "low": 0, "high": 1}},
            "warmStart": [{"x": 0.25}],
            "budget": {"trials": 5, "parallelism": 2},
            "trial": {"objective": "objectives:two_objectives", "template": objectives},
        },
    )
    done = studies.wait_phase("multi", "Succeeded")
    study = studies.optuna_study("multi")
    assert study.trials[0].params == {"x": 0.25}
    front = done["status"]["paretoFront"]
    assert sorted(t["number"] for t in front) == sorted(t.number for t in study.best_trials)
    assert "bestTrial" not in done["status"]


def test_suspend_stops_trials_and_resume_finishes_without_losing_or_duplicating(
    studies: Studies, objectives: dict[str, Any], kube: client.ApiClient
) -> None:
    template = {**objectives}
    template["spec"]["containers"][0]["env"].append({"name": "HPO_TEST_SLEEP", "value": "6"})
    studies.create("pause", spec(template, trials=4, parallelism=2))
    studies.wait(
        "pause", lambda s: (s.get("status") or {}).get("trials", {}).get("running", 0) == 2, 120, "run two trials"
    )
    studies.patch("pause", {"suspend": True})
    studies.wait_phase("pause", "Suspended", 120)
    core = client.CoreV1Api(kube)
    wait_for(
        lambda: (
            not [
                p
                for p in core.list_namespaced_pod(studies.namespace).items
                if p.status.phase not in ("Succeeded", "Failed")
            ]
        ),
        60,
        "trial pods to stop",
    )
    studies.patch("pause", {"suspend": False})
    studies.wait_phase("pause", "Succeeded", 240)
    study = studies.optuna_study("pause")
    assert len(study.trials) == 4 and counts(study)["complete"] == 4


def test_a_trial_whose_pod_is_deleted_resumes_from_its_checkpoint_on_the_other_node(
    studies: Studies, objectives: dict[str, Any], kube: client.ApiClient, testbed_env: dict[str, str]
) -> None:
    """The checkpoint claim is ReadWriteMany: the requeued attempt finds the checkpoint wherever it lands
    (the first attempt's node is cordoned, so it lands on the other)."""
    size = client.V1VolumeResourceRequirements(requests={"storage": "1Gi"})
    claim = client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name="ckpt"),
        spec=client.V1PersistentVolumeClaimSpec(access_modes=["ReadWriteMany"], resources=size),
    )
    core = client.CoreV1Api(kube)
    core.create_namespaced_persistent_volume_claim(studies.namespace, claim)
    cordoned = None
    try:
        with PodLogs(kube, studies.namespace, "hpo.dev/trial=0") as logs:
            studies.create(
                "resume",
                spec(
                    objectives,
                    trials=1,
                    parallelism=1,
                    objective="objectives:slow_with_checkpoints",
                    checkpoints={"claimName": "ckpt"},
                ),
            )

            def first_pod_checkpointed() -> str | None:
                return next((pod for pod, text in logs.all().items() if "checkpoint saved at step 3" in text), None)

            victim = wait_for(first_pod_checkpointed, 120, "the trial to save its step-3 checkpoint")
            cordoned = core.read_namespaced_pod(victim, studies.namespace).spec.node_name
            core.patch_node(cordoned, {"spec": {"unschedulable": True}})
            core.delete_namespaced_pod(victim, studies.namespace)
            done = studies.wait_phase("resume", "Succeeded", 180)
            attempts = sorted(logs.all().items())
    finally:
        if cordoned:
            core.patch_node(cordoned, {"spec": {"unschedulable": False}})
    assert done["status"]["trials"] == {
        "running": 0,
        "waiting": 0,
        "complete": 1,
        "pruned": 0,
        "failed": 0,
        "preemptions": 1,
    }, "the deleted pod counts as one preemption, not a failure"
    assert [pod.split("-")[2] for pod, _ in attempts] == ["0", "1"], "one requeued attempt, no more"
    resumed = attempts[1][1]
    assert "resumed from step 3" in resumed or "resumed from step 4" in resumed
    assert "checkpoint saved at step 0" not in resumed
    assert any(e.reason == "TrialRequeued" for e in studies.events("resume"))


def test_operator_killed_mid_study_still_ends_with_exactly_n_trials(
    studies: Studies, objectives: dict[str, Any], live_pods: Any, operator: int
) -> None:
    pods = live_pods("crash")
    template = {**objectives}
    template["spec"]["containers"][0]["env"].append({"name": "HPO_TEST_SLEEP", "value": "2"})
    studies.create("crash", spec(template, trials=8, parallelism=3))
    studies.wait(
        "crash", lambda s: (s.get("status") or {}).get("trials", {}).get("complete", 0) >= 2, 120, "finish two trials"
    )
    pid = int((ROOT / ".testbed" / "operator.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    start_operator()
    studies.wait_phase("crash", "Succeeded", 240)
    pods.stop()
    study = studies.optuna_study("crash")
    assert len(study.trials) == 8 and counts(study)["complete"] == 8
    assert pods.most <= 3, f"{pods.most} trial pods were alive at once with parallelism 3: {pods.peak}"


def test_deletion_drops_the_database_only_under_policy_delete_and_lookalike_names_get_their_own(
    studies: Studies, objectives: dict[str, Any], testbed_env: dict[str, str]
) -> None:
    studies.create("keep-me", spec(objectives, trials=1, parallelism=1))
    studies.create("keep.me", spec(objectives, trials=1, parallelism=1, storage={"deletionPolicy": "Delete"}))
    studies.wait_phase("keep-me", "Succeeded")
    studies.wait_phase("keep.me", "Succeeded")
    server = admin_server(testbed_env)
    kept, dropped = (mysql.recorded(server, studies.namespace, n) for n in ("keep-me", "keep.me"))
    assert kept is not None and dropped is not None and kept.database != dropped.database
    assert mysql.exists(server, kept.database) and mysql.exists(server, dropped.database)
    for name in ("keep-me", "keep.me"):
        studies.api.delete_namespaced_custom_object("hpo.dev", "v1alpha1", studies.namespace, "hpostudies", name)
    wait_for(lambda: not mysql.exists(server, dropped.database), 60, "the Delete-policy database to be dropped")
    assert mysql.exists(server, kept.database)
    assert mysql.users(server, dropped.user, dropped.reader) == set()
    database.drop(server, studies.namespace, "keep-me")


def test_a_running_study_refuses_immutable_edits_and_continues_when_its_budget_grows(
    studies: Studies, objectives: dict[str, Any]
) -> None:
    studies.create("grow", spec(objectives, trials=2, parallelism=2))
    studies.wait_phase("grow", "Succeeded")
    with pytest.raises(client.ApiException) as refused:
        studies.patch("grow", {"objective": {"directions": ["maximize"]}})
    assert refused.value.status == 422
    assert "spec.objective cannot change once the study has started" in str(refused.value.body)

    studies.patch("grow", {"budget": {"trials": 3}})
    done = studies.wait(
        "grow",
        lambda s: (s.get("status") or {}).get("progress") == "3/3" and s["status"]["phase"] == "Succeeded",
        120,
        "finish its third trial",
    )
    assert done["status"]["trials"]["complete"] == 3
    assert len(studies.optuna_study("grow").trials) == 3


def test_crashes_are_retried_then_failed_and_too_many_failures_fail_the_study(
    studies: Studies, objectives: dict[str, Any]
) -> None:
    studies.create(
        "crashy",
        spec(
            objectives,
            trials=3,
            parallelism=1,
            objective="objectives:crash",
            budget={"trials": 3, "parallelism": 1, "retriesPerTrial": 1, "maxFailedTrials": 0},
        ),
    )
    failed = studies.wait_phase("crashy", "Failed", 120)
    assert "more than spec.budget.maxFailedTrials" in failed["status"]["message"]
    trial = studies.optuna_study("crashy").trials[0]
    assert trial.state is optuna.trial.TrialState.FAIL
    assert "exit code 5" in trial.system_attrs["fail_reason"]
    assert trial.system_attrs["hpo:outcomes"] == ["crashed", "crashed"], "one retry, then FAIL"
    assert len(studies.optuna_study("crashy").trials) == 1, "no new trial after the study failed"
    assert any(e.reason == "TrialRetried" for e in studies.events("crashy"))


def test_a_trial_pod_that_cannot_be_scheduled_fails_with_the_reason(
    studies: Studies, objectives: dict[str, Any]
) -> None:
    template = {**objectives}
    template["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": 99}}
    studies.create(
        "greedy",
        spec(template, trials=1, parallelism=1, budget={"trials": 1, "parallelism": 1, "startTimeoutSeconds": 10}),
    )
    done = studies.wait_phase("greedy", "Failed", 90)  # its only trial failed: no trial completed
    assert done["status"]["trials"]["failed"] == 1
    assert {c["type"]: c for c in done["status"]["conditions"]}["Finished"]["reason"] == "NoTrialCompleted"
    reason = studies.optuna_study("greedy").trials[0].system_attrs["fail_reason"]
    assert "did not start within 10s" in reason and "nvidia.com/gpu" in reason


def test_metrics_count_trials_by_state(studies: Studies, objectives: dict[str, Any]) -> None:
    import urllib.request

    from tests.testbed.operator import METRICS_PORT

    studies.create("counted", spec(objectives, trials=2, parallelism=2))
    studies.wait_phase("counted", "Succeeded")
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as response:
        text = response.read().decode()
    line = f'hpo_study_trials{{namespace="{studies.namespace}",state="complete",study="counted"}} 2.0'
    assert line in text
    assert "hpo_dispatch_seconds_count" in text and "hpo_reconcile_errors_total" in text


def test_a_deadline_with_policy_kill_stops_running_trials_and_leaves_none_running(
    studies: Studies, objectives: dict[str, Any]
) -> None:
    template = {**objectives}
    template["spec"]["containers"][0]["env"].append({"name": "HPO_TEST_SLEEP", "value": "30"})
    studies.create(
        "late",
        spec(
            template,
            trials=4,
            parallelism=2,
            endPolicy="Kill",
            budget={"trials": 4, "parallelism": 2, "deadlineSeconds": 5},
        ),
    )
    done = studies.wait_phase("late", "Failed", 120)  # both trials were stopped: none completed
    finished = {c["type"]: c for c in done["status"]["conditions"]}["Finished"]
    assert finished["reason"] == "NoTrialCompleted"
    assert done["status"]["message"].startswith("spec.budget.deadlineSeconds reached, but no trial completed")
    study = studies.optuna_study("late")
    assert counts(study)["running"] == 0 and len(study.trials) == 2, "no new trial after the deadline"
    assert all("stopped: the study ended" in t.system_attrs["fail_reason"] for t in study.trials)
