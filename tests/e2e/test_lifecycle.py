"""A study lifecycle that cannot be broken, end to end: bad specs, runaway budgets, faults and endings.

The specs come from the unit tests' table of invalid and extreme specs (tests/unit/
test_operator_validation.py), applied as a user would. Faults are real: the testbed's MariaDB is
killed (its supervisor starts it again) or frozen, trial pods are evicted, a node is frozen.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pymysql
import pytest
from kubernetes import client

from hpo_operator.models import GROUP, PLURAL, VERSION
from tests import mysql
from tests.conftest import ROOT
from tests.e2e.conftest import DELETE_TIMEOUT_SECONDS
from tests.helpers import wait_for
from tests.studies import Studies
from tests.testbed.nodes import NODES
from tests.unit.test_operator_spec import study as valid_spec
from tests.unit.test_operator_validation import INVALID

pytestmark = pytest.mark.e2e

TESTBED = ROOT / ".testbed"


def condition(study: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (study.get("status") or {}).get("conditions", []) if c["type"] == kind), {})


def trials_of(study: dict[str, Any]) -> dict[str, int]:
    return dict((study.get("status") or {}).get("trials", {}))


def quadratic(
    template: dict[str, Any], trials: int, parallelism: int = 1, sleep: float = 0.5, **extra: Any
) -> dict[str, Any]:
    pod = copy.deepcopy(template)
    pod["spec"]["containers"][0]["env"].append({"name": "HPO_TEST_SLEEP", "value": str(sleep)})
    return {
        "searchSpace": {"x": {"type": "float", "low": -5, "high": 5}, "y": {"type": "int", "low": 0, "high": 3}},
        "budget": {"trials": trials, "parallelism": parallelism},
        "trial": {"objective": "objectives:quadratic", "template": pod},
        **extra,
    }


def kept(sent: Any, stored: Any) -> bool:
    """Whether the API server stored everything that was sent (it adds defaults, and prunes fields its
    schema lacks)."""
    if isinstance(sent, dict):
        return isinstance(stored, dict) and all(
            key in stored and kept(value, stored[key]) for key, value in sent.items()
        )
    return bool(sent == stored)


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


# --- 1. every spec the API server accepts gets a status within seconds --------------------------


def test_every_invalid_or_extreme_spec_gets_a_clear_status_quickly_and_no_job(
    studies: Studies, operator: int, kube: client.ApiClient
) -> None:
    cases = [(name, {**copy.deepcopy(valid_spec()), **overrides}, expected) for name, overrides, expected in INVALID]
    cases.append(
        ("missing-claim", {**valid_spec(), "checkpoints": {"claimName": "nowhere"}}, "spec.checkpoints.claimName")
    )
    accepted: dict[str, str] = {}
    for name, spec, expected in cases:
        try:
            studies.create(name, spec)
        except client.ApiException as refused:  # the CRD's schema refused it at apply: named there
            assert refused.status == 422 and refused.body, name
            continue
        if not kept(json.loads(json.dumps(spec)), studies.get(name)["spec"]):
            continue  # the API server pruned a field the schema lacks (kubectl warns): a valid study now
        accepted[name] = expected
    assert len(accepted) >= 40, f"only {len(accepted)} of the table's specs reach the operator"
    started = time.monotonic()
    memory_before = rss_kib(operator)
    for name, expected in accepted.items():
        remaining = max(5.0, 30 - (time.monotonic() - started))
        failed = studies.wait(
            name, lambda s: (s.get("status") or {}).get("phase") == "Failed", remaining, "fail with a clear status"
        )
        message = failed["status"]["message"] + " " + json.dumps(failed["status"]["conditions"])
        assert expected.split(":")[0] in message, (name, message)
        studies.wait_events(
            name, lambda e: e.type == "Warning", "a Warning Event", max(5.0, 30 - (time.monotonic() - started))
        )
    jobs = client.BatchV1Api(kube).list_namespaced_job(studies.namespace).items
    assert not {job.metadata.labels["hpo.dev/study"] for job in jobs} & set(accepted), "no Job for an invalid study"
    assert int((TESTBED / "operator.pid").read_text()) == operator, "the operator never restarted"
    assert rss_kib(operator) < memory_before + 200 * 1024, "the operator's memory stays steady"


def test_a_huge_parallelism_is_capped_and_paced_on_pods_that_cannot_schedule(
    studies: Studies, objectives: dict[str, Any], kube: client.ApiClient
) -> None:
    greedy = copy.deepcopy(objectives)
    greedy["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1500m"}}  # at most one per node
    studies.create(
        "runaway", {**quadratic(greedy, trials=10**9, sleep=30), "budget": {"trials": 10**9, "parallelism": 10**9}}
    )
    capped = studies.wait("runaway", lambda s: trials_of(s).get("waiting", 0) > 0, 120, "have waiting trials")
    assert "parallelism" in capped["status"]["message"] and capped["status"]["parallelism"] <= 256
    jobs = client.BatchV1Api(kube).list_namespaced_job(studies.namespace).items
    assert len(jobs) <= 16 + 2 + 2, f"{len(jobs)} Jobs: dispatch must pace on pods that have not started"
    waiting = condition(capped, "TrialsWaiting")
    assert waiting.get("status") == "True" and waiting.get("message"), waiting
    studies.patch("runaway", {"suspend": True})
    studies.wait_phase("runaway", "Suspended", 120)


# --- 3. faults cost nothing -------------------------------------------------------------------------


def _mariadb_pid() -> int:
    services = json.loads((TESTBED / "supervisor.json").read_text())["services"]
    return int(services["mariadb"])


def test_a_database_killed_and_restarted_mid_study_spends_no_retry_and_loses_nothing(
    studies: Studies, objectives: dict[str, Any], testbed_env: dict[str, str]
) -> None:
    studies.create(
        "outage",
        quadratic(
            objectives, trials=6, parallelism=2, sleep=6, budget={"trials": 6, "parallelism": 2, "retriesPerTrial": 0}
        ),
    )
    studies.wait(
        "outage",
        lambda s: trials_of(s).get("complete", 0) >= 1 and trials_of(s).get("running", 0) >= 1,
        180,
        "finish one trial and run another",
    )
    # Frozen first, so the outage lasts until the operator has seen it (a killed MariaDB alone may be back,
    # restarted by the supervisor, before the operator's next pass), then killed mid-study.
    victim = _mariadb_pid()
    os.kill(victim, signal.SIGSTOP)
    try:
        unavailable = studies.wait(
            "outage",
            lambda s: condition(s, "DatabaseReady").get("status") == "False",
            150,
            "report the database unavailable",
        )
    finally:
        os.kill(victim, signal.SIGKILL)  # never leave the testbed's MariaDB frozen
    assert condition(unavailable, "DatabaseReady")["reason"] == "DatabaseUnavailable"
    wait_for(lambda: _mariadb_pid() != victim and _answers(testbed_env), 120, "the supervisor to restart MariaDB")
    done = studies.wait_phase("outage", "Succeeded", 360)
    assert trials_of(done) == {"running": 0, "waiting": 0, "complete": 6, "pruned": 0, "failed": 0, "preemptions": 0}
    assert len(studies.optuna_study("outage").trials) == 6, "exactly N trials, none lost or duplicated"
    assert condition(done, "DatabaseReady")["status"] == "True"


def _answers(env: dict[str, str]) -> bool:
    try:
        mysql.admin(mysql.admin_server(env)).close()
    except pymysql.MySQLError:
        return False
    return True


def test_evictions_beyond_max_preemptions_per_trial_fail_the_trial(
    studies: Studies, objectives: dict[str, Any], kube: client.ApiClient
) -> None:
    studies.create(
        "evicted", quadratic(objectives, trials=1, sleep=120, budget={"trials": 1, "maxPreemptionsPerTrial": 1})
    )
    core = client.CoreV1Api(kube)

    def evict_running() -> bool:
        pods = [
            p
            for p in core.list_namespaced_pod(studies.namespace, label_selector="hpo.dev/study=evicted").items
            if p.status.phase == "Running" and not p.metadata.deletion_timestamp
        ]
        for pod in pods:
            core.create_namespaced_pod_eviction(
                pod.metadata.name,
                studies.namespace,
                client.V1Eviction(metadata=client.V1ObjectMeta(name=pod.metadata.name, namespace=studies.namespace)),
            )
        return bool(pods)

    wait_for(evict_running, 180, "the first attempt to run, then evict it")
    studies.wait(
        "evicted",
        lambda s: any(r.get("attempt") == 1 for r in (s.get("status") or {}).get("runningTrials", [])),
        120,
        "requeue the trial as attempt 1",
    )
    wait_for(evict_running, 180, "the second attempt to run, then evict it")
    failed = studies.wait("evicted", lambda s: trials_of(s).get("failed") == 1, 180, "fail the trial")
    assert failed["status"]["phase"] == "Failed"
    (trial,) = studies.optuna_study("evicted").trials
    assert trial.state == optuna.trial.TrialState.FAIL and "maxPreemptionsPerTrial" in trial.system_attrs["fail_reason"]


# --- 4. honest end states -----------------------------------------------------------------------------


def test_a_study_whose_every_trial_fails_ends_failed(studies: Studies, objectives: dict[str, Any]) -> None:
    studies.create(
        "hopeless",
        {
            "searchSpace": {"x": {"type": "float", "low": -5, "high": 5}},
            "budget": {"trials": 2, "parallelism": 2, "retriesPerTrial": 0},
            "trial": {"objective": "objectives:crash", "template": objectives},
        },
    )
    failed = studies.wait_phase("hopeless", "Failed", 240)
    assert trials_of(failed)["failed"] == 2
    assert condition(failed, "Finished")["reason"] == "NoTrialCompleted"
    for trial in studies.optuna_study("hopeless").trials:
        assert trial.system_attrs.get("fail_reason"), "the reason is where Optuna and the dashboard show it"


def test_continuing_a_finished_study_resets_finished_and_posts_each_event_once(
    studies: Studies, objectives: dict[str, Any]
) -> None:
    studies.create("more", quadratic(objectives, trials=2, parallelism=2))
    studies.wait_phase("more", "Succeeded")
    studies.patch("more", {"budget": {"trials": 4}})
    running = studies.wait("more", lambda s: condition(s, "Finished").get("status") == "False", 60, "reset Finished")
    assert running["status"]["phase"] == "Running"
    done = studies.wait_phase("more", "Succeeded")
    assert trials_of(done)["complete"] == 4 and condition(done, "Finished")["status"] == "True"
    finished = studies.wait_events("more", lambda e: e.reason == "StudyFinished", "two StudyFinished Events", count=2)
    assert len(finished) == 2 and all(e.count in (None, 1) for e in finished), "one Event per transition"
    assert {e.source.component for e in studies.events("more")} == {"hpo-operator"}


def test_finished_studies_hold_no_database_connections(
    studies: Studies, objectives: dict[str, Any], testbed_env: dict[str, str]
) -> None:
    studies.create("idle", quadratic(objectives, trials=1))
    studies.wait_phase("idle", "Succeeded")
    names = mysql.recorded(mysql.admin_server(testbed_env), studies.namespace, "idle")
    assert names is not None

    def sessions() -> int:
        with mysql.admin(mysql.admin_server(testbed_env)) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM information_schema.processlist WHERE user = %s", (names.user,))
            return int(cursor.fetchone()[0])

    wait_for(lambda: sessions() == 0, 60, "the finished study's connections to close")


def test_deleting_a_study_with_mysql_down_completes_within_the_bound_with_an_event(
    studies: Studies, objectives: dict[str, Any], kube: client.ApiClient
) -> None:
    studies.create("doomed", quadratic(objectives, trials=1, storage={"deletionPolicy": "Delete"}))
    studies.wait_phase("doomed", "Succeeded")
    with frozen(_mariadb_pid()):
        started = time.monotonic()
        studies.api.delete_namespaced_custom_object(GROUP, VERSION, studies.namespace, PLURAL, "doomed")

        def gone() -> bool:
            try:
                studies.get("doomed")
            except client.ApiException as error:
                return error.status == 404
            return False

        wait_for(gone, 240, "the study to be deleted although its database cannot be dropped")
        assert time.monotonic() - started < DELETE_TIMEOUT_SECONDS + 60, "within the operator's bound"
    notes = [
        e
        for e in client.CoreV1Api(kube).list_namespaced_event(studies.namespace).items
        if e.reason == "DatabaseNotDropped"
    ]
    assert notes, "an Event says the database was not dropped"
    assert "drop" in notes[0].message.lower(), notes[0].message


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """A process stopped (SIGSTOP) for the length of the block: to its clients, a hung server."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


# --- losing a node --------------------------------------------------------------------------------------


@contextlib.contextmanager
def machine_down(index: int) -> Iterator[None]:
    """Node ``index`` as a machine that died: its kubelet and containerd stopped, its containers frozen
    (cgroup freezer), so nothing on it answers, heartbeats or reports; thawed after the block."""
    services = json.loads((TESTBED / "supervisor.json").read_text())["services"]
    pids = [int(services[f"kubelet-{index}"]), int(services[f"containerd-{index}"])]
    freezer = Path("/sys/fs/cgroup/freezer") / NODES[index - 1].cgroup_root.lstrip("/") / "freezer.state"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    freezer.write_text("FROZEN\n")
    try:
        yield
    finally:
        freezer.write_text("THAWED\n")
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_losing_a_node_requeues_its_trial_elsewhere_from_its_checkpoint_and_the_dead_attempt_never_reports(
    studies: Studies, objectives: dict[str, Any], kube: client.ApiClient
) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_persistent_volume_claim(
        studies.namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "ckpt"},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    studies.create(
        "node-loss",
        {
            "searchSpace": {"x": {"type": "float", "low": -5, "high": 5}},
            "budget": {"trials": 1},
            "checkpoints": {"claimName": "ckpt"},
            "trial": {"objective": "objectives:slow_with_checkpoints", "template": objectives},
        },
    )
    checkpointed = studies.wait(
        "node-loss",
        lambda s: any((r.get("checkpointStep") or 0) >= 2 for r in (s.get("status") or {}).get("runningTrials", [])),
        180,
        "checkpoint step 2",
    )
    assert checkpointed
    (pod,) = [
        p
        for p in core.list_namespaced_pod(studies.namespace, label_selector="hpo.dev/study=node-loss").items
        if p.status.phase == "Running"
    ]
    index = next(node.index for node in NODES if node.name == pod.spec.node_name)
    with machine_down(index):
        requeued = studies.wait(
            "node-loss",
            lambda s: any(r.get("attempt", 0) >= 1 for r in (s.get("status") or {}).get("runningTrials", [])),
            300,
            "requeue the trial from the lost node",
        )
        assert any(e.reason == "TrialRequeued" for e in studies.events("node-loss")), requeued
        done = studies.wait_phase("node-loss", "Succeeded", 300)
    assert trials_of(done)["complete"] == 1 and trials_of(done)["failed"] == 0
    (trial,) = studies.optuna_study("node-loss").trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    # The dead attempt, thawed with its node, cannot change what was told: its pod goes away unheard.
    wait_for(
        lambda: not core.list_namespaced_pod(studies.namespace, label_selector="hpo.dev/study=node-loss").items,
        180,
        "the lost attempt's pod to be removed once its node is back",
    )
    (after,) = studies.optuna_study("node-loss").trials
    assert (after.state, after.value) == (trial.state, trial.value)
