"""The import Job and the snapshot Jobs: what they run, with what, and what the operator does with how they end."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from hpo_operator import importing, snapshots
from hpo_operator.contract import IMPORT_URL_ENV, STORAGE_URL_ENV, TRANSFER_CONTAINER
from hpo_operator.dispatch import TrialRef
from hpo_operator.importing import Action, Imported, decide, parse_imported
from hpo_operator.models import ATTEMPT_LABEL, STUDY_LABEL, TASK_LABEL, TRIAL_LABEL, HpoStudySpec
from hpo_operator.outcomes import JobSummary, PodSummary, summarise, summarise_job
from hpo_operator.policy import Policy
from hpo_operator.validation import parse
from tests.unit.test_operator_spec import study

pytestmark = pytest.mark.unit
NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
REF = TrialRef("team", "mnist", "mnist", "mnist-storage")
FROM_FILE = {"claimName": "slurm", "path": "runs/study.db", "studyName": "lr-search", "rerunUnfinished": True}
FROM_DB = {"urlSecret": {"name": "old-db", "key": "dsn"}}
TEMPLATE = {
    "spec": {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
        "nodeSelector": {"pool": "cpu"},
        "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "serviceAccountName": "trainer",
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "datasets"}}],
        "containers": [
            {
                "name": "trial",
                "image": "registry.example.com/mine:1",
                "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False},
                "resources": {"limits": {"nvidia.com/gpu": 1}},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }
        ],
    }
}


def ago(seconds: float) -> datetime.datetime:
    return NOW - datetime.timedelta(seconds=seconds)


def spec_of(**overrides: Any) -> HpoStudySpec:
    spec, problems = parse(study(**overrides))
    assert spec is not None, problems
    return spec


def env_of(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    [container] = job["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in container["env"]}


def test_the_import_job_copies_the_file_on_the_claim_read_only_with_the_specs_directions_and_space() -> None:
    spec = spec_of(importFrom=FROM_FILE, objective={"directions": ["maximize"]})
    job = importing.build_import_job(spec, REF, 0, "trial:1")
    assert job["metadata"]["name"] == "mnist-import"
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["name"] == TRANSFER_CONTAINER and container["image"] == "trial:1"
    assert container["command"] == ["hpo-transfer"]
    args = container["args"]
    assert args[:3] == ["import", "--destination-study", "mnist"]
    assert args[args.index("--file") + 1] == "/import/runs/study.db"
    assert args[args.index("--study-name") + 1] == "lr-search"
    assert args[args.index("--directions") + 1] == "maximize"
    space = json.loads(args[args.index("--search-space-json") + 1])
    assert space["lr"] == {"type": "float", "low": 1e-4, "high": 1e-1, "log": True, "choices": []}
    assert space["activation"]["choices"] == ["relu", "tanh"]
    assert "--rerun-unfinished" in args
    assert pod["volumes"] == [{"name": "hpo-import", "persistentVolumeClaim": {"claimName": "slurm", "readOnly": True}}]
    assert container["volumeMounts"] == [{"name": "hpo-import", "mountPath": "/import", "readOnly": True}]
    env = env_of(job)
    assert env[STORAGE_URL_ENV]["valueFrom"]["secretKeyRef"] == {"name": "mnist-storage", "key": "url"}
    assert IMPORT_URL_ENV not in env


def test_the_import_job_reads_the_source_url_from_the_users_secret_never_from_the_operator() -> None:
    job = importing.build_import_job(spec_of(importFrom=FROM_DB), REF, 2, "trial:1")
    assert job["metadata"]["name"] == "mnist-import-2"
    env = env_of(job)
    assert env[IMPORT_URL_ENV] == {
        "name": IMPORT_URL_ENV,
        "valueFrom": {"secretKeyRef": {"name": "old-db", "key": "dsn"}},
    }
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--file" not in args and "--rerun-unfinished" not in args and "--study-name" not in args
    assert "volumes" not in job["spec"]["template"]["spec"]


def test_import_and_snapshot_jobs_carry_the_study_label_but_no_trial_label() -> None:
    spec = spec_of(importFrom=FROM_FILE, checkpoints={"claimName": "ckpt", "everyTrials": 5})
    for job in (
        importing.build_import_job(spec, REF, 1, "trial:1"),
        snapshots.build_snapshot_job(spec, REF, "mnist-storage-readonly", 10, "trial:1"),
    ):
        for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
            assert labels[STUDY_LABEL] == "mnist"
            assert TRIAL_LABEL not in labels
            assert labels[TASK_LABEL] in ("import", "snapshot")
        summary = summarise_job(job)
        assert summary.trial == -1 and summary.task in ("import", "snapshot")


def test_the_transfer_pod_runs_where_and_as_whom_trial_pods_run_and_nothing_more() -> None:
    spec = spec_of(importFrom=FROM_FILE, trial={"template": TEMPLATE})
    pod = importing.build_import_job(spec, REF, 0, "trial:1")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000}
    assert pod["nodeSelector"] == {"pool": "cpu"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    assert "serviceAccountName" not in pod  # no ServiceAccount of the trials' (and no token)
    [container] = pod["containers"]
    assert container["image"] == "trial:1"  # the trial image has hpo-transfer; the user's image may not
    assert container["securityContext"] == {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
    assert "resources" not in container  # no GPU for copying rows
    assert [v["name"] for v in pod["volumes"]] == ["hpo-import"]  # none of the trial template's volumes
    assert Policy("mysql", 3306).trial_pod_problems({"spec": pod}) == []


def test_a_transfer_pod_without_a_template_drops_every_capability() -> None:
    pod = importing.build_import_job(spec_of(importFrom=FROM_DB), REF, 0, "trial:1")["spec"]["template"]["spec"]
    assert pod["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


def test_the_import_job_retries_outages_itself_but_fails_at_once_on_a_wrong_spec_or_a_bug() -> None:
    job = importing.build_import_job(spec_of(importFrom=FROM_DB), REF, 0, "trial:1")
    assert job["spec"]["backoffLimit"] == importing.BACKOFF_LIMIT
    fail_job, ignore = job["spec"]["podFailurePolicy"]["rules"]
    assert fail_job["action"] == "FailJob" and fail_job["onExitCodes"]["values"] == [1, 2]
    assert ignore == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}


def test_a_study_on_a_tls_server_gives_the_transfer_pod_its_ca() -> None:
    ref = TrialRef("team", "mnist", "mnist", "mnist-storage", storage_tls=True)
    pod = importing.build_import_job(spec_of(importFrom=FROM_DB), ref, 0, "trial:1")["spec"]["template"]["spec"]
    assert pod["volumes"][0]["secret"]["secretName"] == "mnist-storage"
    assert pod["containers"][0]["volumeMounts"][0]["readOnly"] is True


@pytest.mark.parametrize(
    ("study_name", "run", "expected"),
    [("mnist", 0, "mnist-import"), ("mnist", 3, "mnist-import-3"), ("s" * 56, 0, "s" * 56 + "-import")],
)
def test_job_names_are_the_study_and_the_task(study_name: str, run: int, expected: str) -> None:
    assert importing.import_job_name(study_name, run) == expected


@pytest.mark.parametrize("length", [57, 63, 120, 236])
def test_long_study_names_are_shortened_with_a_hash_to_63_characters(length: int) -> None:
    names = {importing.import_job_name("s" * length, 4), importing.import_job_name("s" * (length - 1) + "t", 4)}
    assert len(names) == 2
    assert all(len(name) <= 63 and name.endswith("-import-4") for name in names)


def test_a_253_character_study_gets_valid_job_names_and_label_values() -> None:
    name = "a" * 236  # the longest a study may be (its read-only Secret's name must stay valid)
    ref = TrialRef("team", name, name, f"{name}-storage")
    spec = spec_of(importFrom=FROM_FILE, checkpoints={"claimName": "ckpt"})
    for job in (
        importing.build_import_job(spec, ref, 0, "i"),
        snapshots.build_snapshot_job(spec, ref, f"{name}-storage-readonly", 100000, "i"),
    ):
        assert len(job["metadata"]["name"]) <= 63
        assert all(len(v) <= 63 for v in job["metadata"]["labels"].values())


# -- the import's termination message --------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "IMPORTED copied=12 skipped=0 failed_unfinished=1 enqueued=0 total=12 best=0.125",
            Imported(12, 0, 1, 0, 12, 0.125),
        ),
        (
            "IMPORTED copied=0 skipped=40 failed_unfinished=0 enqueued=2 total=40 best=None",
            Imported(0, 40, 0, 2, 40, None),
        ),
        (
            "IMPORTED copied=1 skipped=0 failed_unfinished=0 enqueued=0 total=1 best=-inf",
            Imported(1, 0, 0, 0, 1, float("-inf")),
        ),
        ("FAIL spec.importFrom.path: no file", None),
        ("", None),
    ],
)
def test_the_import_message_is_parsed(message: str, expected: Imported | None) -> None:
    assert parse_imported(message) == expected


@pytest.mark.parametrize(
    ("message", "field", "said"),
    [
        ("FAIL spec.importFrom.path: no file x.db on the claim", "spec.importFrom.path", "no file x.db on the claim"),
        (
            "FAIL spec.importFrom.studyName: no study 'x'; the source holds 'a', 'b'",
            "spec.importFrom.studyName",
            "no study 'x'; the source holds 'a', 'b'",
        ),
        ("FAIL spec.searchSpace.lr: log differs", "spec.searchSpace.lr", "log differs"),
        ("FAIL internal error: KeyError: 'x'", "spec.importFrom.urlSecret", "internal error: KeyError: 'x'"),
        ("OOMKilled", "spec.importFrom.urlSecret", "OOMKilled"),
    ],
)
def test_a_failure_names_the_field_the_runtime_named(message: str, field: str, said: str) -> None:
    assert importing.failure(message, "spec.importFrom.urlSecret") == (field, said)


# -- what the operator does, from the import Job and its pod ----------------------------------------


def job(run: int = 0, created: float = 60, **fields: Any) -> JobSummary:
    fields.setdefault("failed", False)
    return JobSummary(importing.import_job_name("mnist", run), -1, run, ago(created), task="import", **fields)


def pod(run: int = 0, phase: str = "Running", code: int | None = None, message: str = "", **fields: Any) -> PodSummary:
    fields.setdefault("started", phase != "Pending")
    fields.setdefault("created", ago(50))
    return PodSummary(f"mnist-import-{run}-x", -1, run, phase, exit_code=code, message=message, task="import", **fields)


IMPORTED_MESSAGE = "IMPORTED copied=12 skipped=0 failed_unfinished=1 enqueued=0 total=12 best=0.125"
CASES: list[tuple[str, list[JobSummary], list[PodSummary], Action, int, str]] = [
    ("nothing-yet", [], [], Action.CREATE, 0, ""),
    ("job-without-pod", [job()], [], Action.WAIT, 0, "importing: waiting for the import pod"),
    ("pod-pulling", [job()], [pod(phase="Pending", waiting="ContainerCreating")], Action.WAIT, 0, "is starting"),
    ("copying", [job()], [pod()], Action.WAIT, 0, "importing: copying"),
    (
        "succeeded",
        [job(succeeded=True)],
        [pod(phase="Succeeded", code=0, message=IMPORTED_MESSAGE)],
        Action.DONE,
        0,
        "imported",
    ),
    ("succeeded-pod-gone", [job(succeeded=True)], [], Action.DONE, 0, "imported"),
    (
        "file-missing",
        [job(failed=True)],
        [pod(phase="Failed", code=2, message="FAIL spec.importFrom.path: no file runs/x.db on claim slurm")],
        Action.FAIL,
        0,
        "no file runs/x.db",
    ),
    (
        "a-bug",
        [job(failed=True)],
        [pod(phase="Failed", code=1, message="FAIL internal error: KeyError")],
        Action.FAIL,
        0,
        "the import failed: internal error: KeyError",
    ),
    (
        "database-down",
        [job(failed=True)],
        [pod(phase="Failed", code=3, message="FAIL cannot reach a database")],
        Action.RERUN,
        1,
        "a database was unavailable",
    ),
    ("pod-lost", [job(failed=True, message="BackoffLimitExceeded")], [], Action.RERUN, 1, "BackoffLimitExceeded"),
    (
        "job-failed-pod-not-seen-ended-yet",
        [job(failed=True)],
        [pod()],
        Action.WAIT,
        0,
        "stopping",
    ),
    (
        "rerun-of-rerun",
        [job(0, failed=True), job(1, failed=True)],
        [pod(0, "Failed", 3), pod(1, "Failed", 3)],
        Action.RERUN,
        2,
        "run 2",
    ),
    (
        "too-many-runs",
        [job(importing.MAX_RUNS - 1, failed=True)],
        [pod(importing.MAX_RUNS - 1, "Failed", 3, "FAIL cannot reach a database: refused")],
        Action.FAIL,
        importing.MAX_RUNS - 1,
        f"failed {importing.MAX_RUNS} times",
    ),
    (
        "never-starts",
        [job(created=400)],
        [pod(phase="Pending", started=False, waiting="Unschedulable: 0/2 nodes", created=ago(400))],
        Action.FAIL,
        0,
        "did not start within 300s",
    ),
    ("job-makes-no-pod", [job(created=400)], [], Action.FAIL, 0, "made no pod"),
    ("trial-jobs-ignored", [JobSummary("mnist-0-0", 0, 0, ago(10), failed=True)], [], Action.CREATE, 0, ""),
]


@pytest.mark.parametrize(("case", "jobs", "pods", "action", "run", "says"), CASES, ids=[c[0] for c in CASES])
def test_the_import_decision(
    case: str, jobs: list[JobSummary], pods: list[PodSummary], action: Action, run: int, says: str
) -> None:
    decision = decide(spec_of(importFrom=FROM_FILE), jobs, pods, NOW)
    assert (decision.action, decision.run) == (action, run), decision
    assert says in decision.message, decision
    if action is Action.DONE and case == "succeeded":
        assert decision.result == Imported(12, 0, 1, 0, 12, 0.125)
    if action is Action.FAIL:
        assert decision.field.startswith("spec.importFrom.")


def test_a_file_import_that_cannot_start_names_the_claim() -> None:
    decision = decide(
        spec_of(importFrom=FROM_FILE),
        [job(created=400)],
        [pod(phase="Pending", started=False, created=ago(400), waiting="FailedMount")],
        NOW,
    )
    assert decision.field == "spec.importFrom.claimName"


def test_a_wrong_spec_names_its_field_from_the_termination_message() -> None:
    decision = decide(
        spec_of(importFrom=FROM_DB),
        [job(failed=True)],
        [pod(phase="Failed", code=2, message="FAIL spec.importFrom.studyName: no study 'x'; there are: 'a'")],
        NOW,
    )
    assert (decision.field, decision.message) == ("spec.importFrom.studyName", "no study 'x'; there are: 'a'")


def test_the_import_pods_status_is_read_from_the_pod_body() -> None:
    body = {
        "metadata": {
            "name": "mnist-import-abc",
            "labels": {STUDY_LABEL: "mnist", TASK_LABEL: "import", ATTEMPT_LABEL: "0"},
            "creationTimestamp": "2026-12-01T11:59:00Z",
        },
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": TRANSFER_CONTAINER,
                    "state": {"terminated": {"exitCode": 2, "message": "FAIL spec.importFrom.path: no file"}},
                }
            ],
        },
    }
    summary = summarise(body)
    assert (summary.trial, summary.task, summary.exit_code) == (-1, "import", 2)
    assert summary.message == "FAIL spec.importFrom.path: no file"


# -- snapshots -------------------------------------------------------------------------------------

CHECKPOINTS = {"claimName": "ckpt", "mountPath": "/ckpt", "everyTrials": 5}


def test_the_snapshot_job_reads_through_the_read_only_secret_and_writes_to_the_checkpoint_claim() -> None:
    spec = spec_of(checkpoints=CHECKPOINTS)
    built = snapshots.build_snapshot_job(spec, REF, "mnist-storage-readonly", 10, "trial:1")
    assert built["metadata"]["name"] == "mnist-snapshot-10"
    pod = built["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["snapshot", "--study", "mnist", "--directory", "/ckpt/snapshots/mnist", "--keep", "3"]
    assert env_of(built)[STORAGE_URL_ENV]["valueFrom"]["secretKeyRef"]["name"] == "mnist-storage-readonly"
    assert pod["volumes"] == [{"name": "hpo-checkpoints", "persistentVolumeClaim": {"claimName": "ckpt"}}]
    assert container["volumeMounts"] == [{"name": "hpo-checkpoints", "mountPath": "/ckpt"}]


def test_a_snapshot_is_recorded_by_its_path_on_the_claim_which_import_from_takes() -> None:
    taken = snapshots.parse_snapshot(
        "SNAPSHOT path=/ckpt/snapshots/mnist/mnist-10-20261201T120000Z.db trials=11 finished=10 "
        "at=2026-12-01T12:00:00.123456+00:00"
    )
    assert taken is not None
    assert taken.status(spec_of(checkpoints=CHECKPOINTS)) == {
        "claimName": "ckpt",
        "path": "snapshots/mnist/mnist-10-20261201T120000Z.db",
        "time": "2026-12-01T12:00:00Z",
        "trials": 11,
        "finishedTrials": 10,
    }
    assert snapshots.parse_snapshot("FAIL cannot reach") is None


SNAPSHOT_OK = "SNAPSHOT path=/ckpt/snapshots/mnist/mnist-5-x.db trials=6 finished=5 at=2026-12-01T12:00:00+00:00"


def snap_job(n: int, **fields: Any) -> JobSummary:
    fields.setdefault("failed", False)
    return JobSummary(f"mnist-snapshot-{n}", -1, n, ago(30), task="snapshot", **fields)


def snap_pod(n: int, phase: str, code: int | None = None, message: str = "") -> PodSummary:
    return PodSummary(f"mnist-snapshot-{n}-x", -1, n, phase, ago(20), exit_code=code, message=message, task="snapshot")


SNAPSHOT_CASES: list[tuple[str, int, int, list[JobSummary], list[PodSummary], snapshots.Decision]] = [
    ("no-checkpoint-yet", 0, 0, [], [], snapshots.Decision()),
    ("first-due", 5, 0, [], [], snapshots.Decision(create=5)),
    ("already-taken", 5, 5, [], [], snapshots.Decision()),
    ("one-runs", 10, 5, [snap_job(5)], [snap_pod(5, "Running")], snapshots.Decision()),
    (
        "done-then-next",
        10,
        0,
        [snap_job(5, succeeded=True)],
        [snap_pod(5, "Succeeded", 0, SNAPSHOT_OK)],
        snapshots.Decision(
            create=10,
            taken=snapshots.parse_snapshot(SNAPSHOT_OK),
            delete=("mnist-snapshot-5",),
        ),
    ),
    (
        "failed",
        5,
        0,
        [snap_job(5, failed=True)],
        [snap_pod(5, "Failed", 1, "FAIL internal error: disk full")],
        snapshots.Decision(failed=(("mnist-snapshot-5", "internal error: disk full"),), delete=("mnist-snapshot-5",)),
    ),
    ("tried-by-a-job-still-there", 5, 0, [snap_job(5)], [], snapshots.Decision()),
    ("import-jobs-ignored", 5, 0, [job()], [pod()], snapshots.Decision(create=5)),
]


@pytest.mark.parametrize(
    ("case", "due", "done", "jobs", "pods", "expected"), SNAPSHOT_CASES, ids=[c[0] for c in SNAPSHOT_CASES]
)
def test_the_snapshot_decision(
    case: str, due: int, done: int, jobs: list[JobSummary], pods: list[PodSummary], expected: snapshots.Decision
) -> None:
    assert snapshots.decide(due, done, jobs, pods) == expected
