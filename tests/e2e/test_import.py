"""Bringing a Slurm-era study to the cluster, and restoring a study from its snapshot, end to end.

The source studies are made the way our users made them (tests/trial_runtime/slurm_job.py: real
processes sharing one SQLite or journal file, one killed mid-trial), copied onto a claim with
`kubectl cp` (as the README tells users to), or put in a MySQL database that a Secret's URL names.
An HpoStudy with `spec.importFrom` then continues the search to its budget.
"""

from __future__ import annotations

import base64
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from kubernetes import client
from optuna.trial import FrozenTrial, TrialState

from hpo_operator.models import TASK_LABEL, TRIAL_LABEL
from tests import mysql
from tests.conftest import KubectlRunner
from tests.e2e.conftest import start_operator
from tests.helpers import wait_for
from tests.studies import Studies
from tests.trial_runtime.test_transfer import Slurm, run_slurm_array

pytestmark = pytest.mark.e2e

SLURM_SPACE = {
    "x": {"type": "float", "low": -5, "high": 5},
    "layers": {"type": "int", "low": 1, "high": 4},
    "activation": {"type": "categorical", "choices": ["relu", "tanh"]},
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
}


def continued(objectives: dict[str, Any], trials: int, **extra: Any) -> dict[str, Any]:
    """A study that runs the Slurm study's objective over its search space, with at most 0 failures of its own."""
    return {
        "searchSpace": SLURM_SPACE,
        "budget": {"trials": trials, "parallelism": 2, "maxFailedTrials": 0},
        "trial": {"objective": "objectives:slurm_like", "template": objectives},
        **extra,
    }


def condition(study: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (study.get("status") or {}).get("conditions", []) if c["type"] == kind), {})


def make_claim(kube: client.ApiClient, namespace: str, name: str) -> None:
    client.CoreV1Api(kube).create_namespaced_persistent_volume_claim(
        namespace,
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteMany"],
                storage_class_name="standard",
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        ),
    )


def copy_onto_claim(
    kube: client.ApiClient, kubectl: KubectlRunner, namespace: str, image: str, claim: str, files: list[Path]
) -> None:
    """What users do: a pod that mounts the claim, `kubectl cp` into it (the trial image has tar), then delete it."""
    core = client.CoreV1Api(kube)
    pod = f"{claim}-copy"
    core.create_namespaced_pod(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "copy",
                        "image": image,
                        "command": ["sleep", "600"],
                        "volumeMounts": [{"name": "claim", "mountPath": "/claim"}],
                    }
                ],
                "volumes": [{"name": "claim", "persistentVolumeClaim": {"claimName": claim}}],
            },
        },
    )
    wait_for(lambda: core.read_namespaced_pod(pod, namespace).status.phase == "Running", 120, f"pod {pod} to run")
    for file in files:
        kubectl("cp", str(file), f"{namespace}/{pod}:/claim/{file.name}", "-c", "copy")
    core.delete_namespaced_pod(pod, namespace, grace_period_seconds=0)


SlurmClaim = Callable[[list[Path]], None]


@pytest.fixture
def slurm_claim(
    kube: client.ApiClient, kubectl: KubectlRunner, testbed_env: dict[str, str], namespace: str
) -> SlurmClaim:
    """Put files on a new claim `slurm` of the test's namespace, as the README tells users to."""

    def fill(files: list[Path]) -> None:
        make_claim(kube, namespace, "slurm")
        copy_onto_claim(kube, kubectl, namespace, testbed_env["HPO_TRIAL_IMAGE"], "slurm", files)

    return fill


def assert_continued(studies: Studies, name: str, source: list[FrozenTrial], killed: int, total: int) -> optuna.Study:
    """The study holds every source trial unchanged (the killed one FAIL), then its own, all finished."""
    done = studies.wait_phase(name, "Succeeded", 300)
    status = done["status"]
    assert status["progress"] == f"{total}/{total}"
    assert status["trials"]["imported"] == len(source)
    assert status["trials"]["importedFailed"] == sum(t.state is TrialState.FAIL for t in source) + 1
    assert condition(done, "Imported")["status"] == "True"
    study = studies.optuna_study(name)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == total
    for original in source:
        copy = trials[original.number]
        assert copy.params == original.params and copy.distributions == original.distributions
        assert copy.values == original.values and copy.intermediate_values == original.intermediate_values
        assert copy.user_attrs == original.user_attrs
        assert copy.state is (TrialState.FAIL if original.number == killed else original.state)
    complete = [t.values[0] for t in trials if t.state is TrialState.COMPLETE]
    assert status["bestTrial"]["value"] == pytest.approx(min(complete))
    studies.wait_events(name, lambda e: e.reason == "StudyFinished", "the StudyFinished Event")
    reasons = [e.reason for e in studies.events(name)]
    assert reasons.count("ImportStarted") == 1 and reasons.count("Imported") == 1, reasons
    return study


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_slurm_study_on_a_claim_is_imported_and_continued_to_its_budget(
    kind: str,
    studies: Studies,
    objectives: dict[str, Any],
    kube: client.ApiClient,
    slurm_claim: SlurmClaim,
    tmp_path: Path,
) -> None:
    slurm = run_slurm_array(tmp_path, kind)
    source = slurm.trials()
    slurm_claim([slurm.path])
    total = len(source) + 3
    studies.create(
        "continued", continued(objectives, total, importFrom={"claimName": "slurm", "path": slurm.path.name})
    )
    importing = studies.wait(
        "continued", lambda s: bool(condition(s, "Imported")), 60, "show the import in its conditions"
    )
    assert condition(importing, "Imported")["status"] in ("False", "True")
    assert_continued(studies, "continued", source, slurm.killed, total)
    jobs = client.BatchV1Api(kube).list_namespaced_job(studies.namespace).items
    assert not [j.metadata.name for j in jobs if "import" in j.metadata.name], "the import Job is cleaned up"


@pytest.fixture
def source_database(testbed_env: dict[str, str]) -> Iterator[str]:
    """An empty database and its own user on the testbed's MariaDB: the URL a user's Secret would hold."""
    server = mysql.admin_server(testbed_env)
    name = f"slurm_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    with mysql.admin(server) as connection, connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        cursor.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (name, password))
        cursor.execute(f"GRANT ALL PRIVILEGES ON `{name}`.* TO %s@'%%'", (name,))
    yield f"mysql+pymysql://{name}:{password}@{server.host}:{server.port}/{name}"
    with mysql.admin(server) as connection, connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cursor.execute("DROP USER IF EXISTS %s@'%%'", (name,))


def test_a_study_in_a_mysql_database_is_imported_through_a_url_secret_and_its_killed_trial_run_again(
    studies: Studies,
    objectives: dict[str, Any],
    kube: client.ApiClient,
    source_database: str,
    tmp_path: Path,
) -> None:
    slurm: Slurm = run_slurm_array(tmp_path, "sqlite")
    optuna.copy_study(from_study_name="slurm", from_storage=slurm.storage_arg, to_storage=source_database)
    source = optuna.load_study(study_name="slurm", storage=source_database).get_trials(deepcopy=False)
    client.CoreV1Api(kube).create_namespaced_secret(
        studies.namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="old-db"), string_data={"url": source_database}),
    )
    total = len(source) + 2  # the killed trial's re-run, then one new trial
    studies.create(
        "from-mysql",
        continued(
            objectives,
            total,
            importFrom={"urlSecret": {"name": "old-db"}, "studyName": "slurm", "rerunUnfinished": True},
        ),
    )
    study = assert_continued(studies, "from-mysql", source, slurm.killed, total)
    rerun = study.get_trials(deepcopy=False)[len(source)]
    assert rerun.params == source[slurm.killed].params and rerun.state is TrialState.COMPLETE
    password = source_database.split(":")[2].split("@")[0]
    said = " ".join(e.message or "" for e in studies.events("from-mysql"))
    assert password not in said and password not in str(studies.get("from-mysql")["status"])


def test_an_import_that_cannot_work_names_the_field_and_runs_no_trial(
    studies: Studies, objectives: dict[str, Any], kube: client.ApiClient, slurm_claim: SlurmClaim, tmp_path: Path
) -> None:
    slurm = run_slurm_array(tmp_path, "sqlite", jobs=2)
    notes = tmp_path / "notes.txt"
    notes.write_text("lr=0.01 gave 0.93\n")
    slurm_claim([slurm.path, notes])
    narrower = {**SLURM_SPACE, "x": {"type": "float", "low": -1, "high": 1}}
    # study -> (importFrom, other spec fields, the condition that fails, the start of its message)
    cases: dict[str, tuple[dict[str, Any], dict[str, Any], str, str]] = {
        "no-file": ({"claimName": "slurm", "path": "missing.db"}, {}, "Imported", "spec.importFrom.path: "),
        "not-optuna": ({"claimName": "slurm", "path": "notes.txt"}, {}, "Imported", "spec.importFrom.path: "),
        "no-study": (
            {"claimName": "slurm", "path": "slurm.db", "studyName": "nope"},
            {},
            "Imported",
            "spec.importFrom.studyName: ",
        ),
        "directions": (
            {"claimName": "slurm", "path": "slurm.db"},
            {"objective": {"directions": ["maximize"]}},
            "Imported",
            "spec.objective.directions: ",
        ),
        "narrower": (
            {"claimName": "slurm", "path": "slurm.db"},
            {"searchSpace": narrower},
            "Imported",
            "spec.searchSpace.x",
        ),
        "no-claim": ({"claimName": "nowhere", "path": "slurm.db"}, {}, "Validated", "spec.importFrom.claimName: "),
        "escapes": ({"claimName": "slurm", "path": "../../etc/passwd"}, {}, "Validated", "spec.importFrom.path: "),
    }
    for name, (source, extra, _, _) in cases.items():
        studies.create(name, continued(objectives, 4, importFrom=source, **extra))
    for name, (_, _, kind, field) in cases.items():
        failed = studies.wait_phase(name, "Failed", 180)
        said = condition(failed, kind)
        assert said.get("status") == "False" and said["message"].startswith(field), (name, said)
        studies.wait_events(name, lambda e: e.type == "Warning", "a Warning Event")
    no_study = condition(studies.get("no-study"), "Imported")["message"]
    assert "slurm" in no_study, "the names the source holds are listed"
    jobs = client.BatchV1Api(kube).list_namespaced_job(studies.namespace).items
    assert not [j for j in jobs if TRIAL_LABEL in (j.metadata.labels or {})], "no trial ran"


def test_an_operator_killed_during_the_import_duplicates_no_trial(
    studies: Studies,
    objectives: dict[str, Any],
    kube: client.ApiClient,
    slurm_claim: SlurmClaim,
    tmp_path: Path,
    operator: int,
) -> None:
    slurm = run_slurm_array(tmp_path, "journal")
    source = slurm.trials()
    slurm_claim([slurm.path])
    total = len(source) + 2
    source_file = {"claimName": "slurm", "path": slurm.path.name}
    studies.create("restarted", continued(objectives, total, importFrom=source_file))
    batch = client.BatchV1Api(kube)
    wait_for(
        lambda: batch.list_namespaced_job(studies.namespace, label_selector=f"{TASK_LABEL}=import").items,
        120,
        "the import Job",
    )
    os.kill(operator, signal.SIGKILL)
    start_operator()
    assert_continued(studies, "restarted", source, slurm.killed, total)


def test_a_study_snapshotted_every_5_trials_is_restored_after_its_database_is_lost(
    studies: Studies,
    objectives: dict[str, Any],
    kube: client.ApiClient,
    testbed_env: dict[str, str],
) -> None:
    make_claim(kube, studies.namespace, "ckpt")
    studies.create("lost", continued(objectives, 10, checkpoints={"claimName": "ckpt", "everyTrials": 5}))
    done = studies.wait(
        "lost",
        lambda s: ((s.get("status") or {}).get("snapshot") or {}).get("finishedTrials") == 10,
        300,
        "snapshot its tenth trial",
    )
    snapshot = done["status"]["snapshot"]
    assert snapshot["claimName"] == "ckpt" and snapshot["path"].startswith("snapshots/lost/lost-10-")
    assert [e.reason for e in studies.events("lost")].count("SnapshotTaken") == 2
    before = studies.optuna_study("lost").get_trials(deepcopy=False)
    secret = client.CoreV1Api(kube).read_namespaced_secret("lost-storage", studies.namespace)
    database = base64.b64decode(secret.data["database"]).decode()
    with mysql.admin(mysql.admin_server(testbed_env)) as connection, connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE `{database}`")  # the disaster
    jobs = client.BatchV1Api(kube).list_namespaced_job(studies.namespace).items
    assert not [j.metadata.name for j in jobs if "snapshot" in j.metadata.name], "snapshot Jobs are cleaned up"

    studies.create(
        "restored",
        continued(objectives, 13, importFrom={"claimName": "ckpt", "path": snapshot["path"]}),
    )
    restored = studies.wait_phase("restored", "Succeeded", 300)
    assert restored["status"]["trials"]["imported"] == 10 and restored["status"]["progress"] == "13/13"
    after = studies.optuna_study("restored").get_trials(deepcopy=False)
    assert [(t.params, t.values, t.state) for t in after[:10]] == [(t.params, t.values, t.state) for t in before]
    assert [t.state for t in after[10:]] == [TrialState.COMPLETE] * 3
