"""Importing and snapshotting through the study loop: real MariaDB, real `hpo-transfer` runs, a fake API server.

The fake cluster of `test_study_loop` records the import and snapshot Jobs the loop makes; each test
then runs the Job's command as its pod would (``python -m hpo_trial.transfer`` with the Job's
arguments and environment, the claims being local directories) and reports its exit code and
termination message the way Kubernetes does. What the loop does with that is what a user sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from hpo_trial.contract import IMPORTED_ATTR, RERUN_OF_ATTR
from tests.integration.test_study_loop import Harness, condition
from tests.trial_runtime.test_transfer import SOURCES, run_slurm_array

pytestmark = pytest.mark.integration

SLURM_SPACE = {
    "x": {"type": "float", "low": -5, "high": 5},
    "layers": {"type": "int", "low": 1, "high": 4},
    "activation": {"type": "categorical", "choices": ["relu", "tanh"]},
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
}


def run_job(h: Harness, name: str, claims: dict[str, Path]) -> tuple[int, str]:
    """Run an import or snapshot Job's container as its pod would, the claims being local directories.

    The pod is then ended with the exit code and the termination message (paths as the pod saw them).
    """
    job = h.cluster.jobs[name]
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    claim_of = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: claims[claim_of[m["name"]]] for m in container.get("volumeMounts", [])}
    env = {key: value for key, value in os.environ.items() if not key.startswith("HPO_")}
    for variable in container["env"]:
        ref = variable["valueFrom"]["secretKeyRef"]
        env[variable["name"]] = h.cluster.secrets[ref["name"]][ref["key"]]
    log = claims.get("_logs", Path("/tmp")) / f"{name}.termination"
    env.update(PYTHONPATH=SOURCES, HPO_TERMINATION_LOG=str(log))
    args = list(container["args"])
    for mount, local in mounts.items():
        args = [arg.replace(mount, str(local)) for arg in args]
    assert container["command"] == ["hpo-transfer"]
    done = subprocess.run(
        [sys.executable, "-m", "hpo_trial.transfer", *args], env=env, capture_output=True, text=True, timeout=300
    )
    message = log.read_text() if log.exists() else ""
    for mount, local in mounts.items():
        message = message.replace(str(local), mount)
    h.cluster.start_pods()
    h.cluster.end(name, done.returncode, message)
    return done.returncode, message


def play_trials(h: Harness, value: float = 0.5) -> dict[str, Any]:
    """Run passes, each trial pod telling ``value`` (a little less each time), until the study has finished."""
    status: dict[str, Any] = {}
    for _ in range(50):
        status = h.run()
        if status.get("phase") in ("Succeeded", "Failed") and not h.cluster.running_jobs():
            return status
        h.cluster.start_pods()
        for job in h.cluster.running_jobs():
            if "hpo.dev/trial" in h.cluster.jobs[job]["metadata"]["labels"]:
                value -= 0.01
                h.tell(job, value)
    raise AssertionError(f"the study did not finish: {status}")


def trial_jobs(h: Harness) -> list[str]:
    return [n for n, j in h.cluster.jobs.items() if "hpo.dev/trial" in j["metadata"]["labels"]]


def test_a_slurm_study_is_imported_before_any_trial_and_the_study_continues_to_its_budget(
    harness: Any, tmp_path: Path
) -> None:
    slurm = run_slurm_array(tmp_path, "sqlite")
    source = {t.number: t for t in slurm.trials()}
    h = harness(
        {
            "searchSpace": SLURM_SPACE,
            "budget": {"trials": 10, "parallelism": 2, "maxFailedTrials": 0},
            "importFrom": {"claimName": "slurm", "path": "slurm.db"},
        }
    )
    h.cluster.claims.add("slurm")
    status = h.run()
    assert list(h.cluster.jobs) == ["study-import"] and trial_jobs(h) == [], "no trial before the import"
    assert status["phase"] == "Running" and condition(status, "Imported")["reason"] == "Importing"
    assert "ImportStarted" in h.reasons()
    h.run()
    assert list(h.cluster.jobs) == ["study-import"], "the Job is found, not made twice"

    code, message = run_job(h, "study-import", {"slurm": tmp_path, "_logs": tmp_path})
    assert code == 0 and message.startswith("IMPORTED copied=7"), message
    status = h.run()
    imported = condition(status, "Imported")
    assert imported["status"] == "True" and "imported 7 trials from slurm.db on claim slurm" in imported["message"]
    assert status["trials"]["imported"] == 7 and status["trials"]["importedFailed"] == 2
    assert "study-import" in h.cluster.deleted_jobs and len(trial_jobs(h)) == 2
    assert h.reasons().count("Imported") == 1

    status = play_trials(h)
    assert status["phase"] == "Succeeded", "imported failures are not this study's: maxFailedTrials 0 holds"
    assert status["progress"] == "10/10" and status["trials"]["imported"] == 7
    trials = h.study().get_trials(deepcopy=False)
    assert len(trials) == 10
    for number, original in source.items():
        copy = trials[number]
        assert copy.params == original.params and copy.system_attrs[IMPORTED_ATTR]["number"] == number
        assert copy.state is (TrialState.FAIL if number == slurm.killed else original.state)
        assert copy.values == original.values
    assert [t.state for t in trials[7:]] == [TrialState.COMPLETE] * 3
    best = min(t.values[0] for t in trials if t.state is TrialState.COMPLETE)
    assert status["bestTrial"]["value"] == best
    assert h.reasons().count("ImportStarted") == 1


def test_unfinished_source_trials_are_run_again_and_count_in_the_budget(harness: Any, tmp_path: Path) -> None:
    slurm = run_slurm_array(tmp_path, "journal")
    h = harness(
        {
            "searchSpace": SLURM_SPACE,
            "budget": {"trials": 9, "parallelism": 2},
            "importFrom": {"claimName": "slurm", "path": "slurm.log", "studyName": "slurm", "rerunUnfinished": True},
        }
    )
    h.cluster.claims.add("slurm")
    h.run()
    code, message = run_job(h, "study-import", {"slurm": tmp_path, "_logs": tmp_path})
    assert code == 0 and "enqueued=1" in message, message
    status = play_trials(h)
    assert status["phase"] == "Succeeded" and status["progress"] == "9/9"
    trials = h.study().get_trials(deepcopy=False)
    [rerun] = [t for t in trials if RERUN_OF_ATTR in t.system_attrs]
    assert rerun.number == 7 and rerun.state is TrialState.COMPLETE, "the queued re-run is the first new trial"
    assert rerun.params == trials[slurm.killed].params


def test_an_import_that_cannot_work_fails_the_study_naming_the_field_until_the_spec_changes(
    harness: Any, tmp_path: Path
) -> None:
    run_slurm_array(tmp_path, "sqlite", jobs=2)
    h = harness(
        {
            "searchSpace": SLURM_SPACE,
            "budget": {"trials": 4},
            "importFrom": {"claimName": "slurm", "path": "nowhere.db"},
        }
    )
    h.cluster.claims.add("slurm")
    h.run()
    code, _ = run_job(h, "study-import", {"slurm": tmp_path, "_logs": tmp_path})
    assert code == 2
    status = h.run()
    assert status["phase"] == "Failed" and trial_jobs(h) == []
    imported = condition(status, "Imported")
    assert (imported["status"], imported["reason"]) == ("False", "ImportFailed")
    assert imported["message"].startswith("spec.importFrom.path: "), imported
    assert status["message"].startswith("import failed: spec.importFrom.path: ")
    assert h.reasons().count("ImportFailed") == 1 and h.reasons().count("StudyFailed") == 1
    assert h.cluster.jobs == {}, "the failed import's Job is deleted"
    h.run()
    assert h.cluster.jobs == {} and h.reasons().count("ImportFailed") == 1, "no run again, nothing posted again"

    h.edit(budget={"trials": 5})  # the source was fixed meanwhile: any edit runs the import again
    status = h.run()
    assert list(h.cluster.jobs) == ["study-import"] and condition(status, "Imported")["reason"] == "Importing"


def test_a_study_name_that_is_not_in_the_source_names_the_field_and_the_names_there(
    harness: Any, tmp_path: Path
) -> None:
    run_slurm_array(tmp_path, "sqlite", jobs=2)
    h = harness(
        {
            "searchSpace": SLURM_SPACE,
            "budget": {"trials": 4},
            "importFrom": {"claimName": "slurm", "path": "slurm.db", "studyName": "other"},
        }
    )
    h.cluster.claims.add("slurm")
    h.run()
    run_job(h, "study-import", {"slurm": tmp_path, "_logs": tmp_path})
    imported = condition(h.run(), "Imported")
    assert imported["message"].startswith("spec.importFrom.studyName: ") and "slurm" in imported["message"]


def test_an_import_that_lost_its_database_runs_again_as_a_new_job_and_copies_nothing_twice(
    harness: Any, tmp_path: Path
) -> None:
    run_slurm_array(tmp_path, "sqlite", jobs=2)
    h = harness(
        {"searchSpace": SLURM_SPACE, "budget": {"trials": 4}, "importFrom": {"claimName": "s", "path": "slurm.db"}}
    )
    h.cluster.claims.add("s")
    h.run()
    h.cluster.start_pods()
    h.cluster.end("study-import", 3, "FAIL cannot reach a database: (2003, 'Connection refused')")
    status = h.run()
    assert list(h.cluster.jobs) == ["study-import-1"] and "study-import" in h.cluster.deleted_jobs
    assert "ImportRetried" in h.reasons() and condition(status, "Imported")["status"] == "False"
    run_job(h, "study-import-1", {"s": tmp_path, "_logs": tmp_path})
    status = h.run()
    assert condition(status, "Imported")["status"] == "True" and status["trials"]["imported"] == 2
    assert len(h.study().get_trials(deepcopy=False)) == 2 + len(trial_jobs(h)), "each source trial once"


def test_snapshots_every_k_trials_restore_into_a_new_study(harness: Any, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    h = harness(
        {
            "searchSpace": SLURM_SPACE,
            "budget": {"trials": 5, "parallelism": 1},
            "checkpoints": {"claimName": "ckpt", "everyTrials": 2},
        },
        name="original",
    )
    h.cluster.claims.add("ckpt")
    snapshots_run: list[str] = []
    status: dict[str, Any] = {}
    for _ in range(40):
        status = h.run()
        for name in [n for n in h.cluster.jobs if "-snapshot-" in n and n not in h.cluster.pods]:
            code, message = run_job(h, name, {"ckpt": ckpt, "_logs": tmp_path})
            assert code == 0, message
            snapshots_run.append(name)
        if status.get("phase") == "Succeeded" and not h.cluster.jobs:
            break
        h.cluster.start_pods()
        for job in h.cluster.running_jobs():
            if job in trial_jobs(h):
                h.tell(job, 1.0 - len(h.cluster.deleted_jobs) / 100)
    assert snapshots_run == ["original-snapshot-2", "original-snapshot-4"]
    assert status["phase"] == "Succeeded" and h.loop.store is None
    snapshot = status["snapshot"]
    assert snapshot["claimName"] == "ckpt" and snapshot["finishedTrials"] >= 4
    assert snapshot["path"].startswith("snapshots/original/original-"), snapshot
    assert (ckpt / snapshot["path"]).exists()
    assert h.reasons().count("SnapshotTaken") == 2
    original = {t.number: t for t in h.study().get_trials(deepcopy=False)}

    restored = harness(
        {
            "searchSpace": SLURM_SPACE,
            "budget": {"trials": snapshot["trials"] + 2},
            "importFrom": {"claimName": "ckpt", "path": snapshot["path"]},
        },
        name="restored",
    )
    restored.cluster.claims.add("ckpt")
    restored.run()
    code, message = run_job(restored, "restored-import", {"ckpt": ckpt, "_logs": tmp_path})
    assert code == 0, message
    status = play_trials(restored)
    assert status["phase"] == "Succeeded" and status["trials"]["imported"] == snapshot["trials"]
    trials = restored.study().get_trials(deepcopy=False)
    unfinished = []  # trials still running when the snapshot was taken: imported as FAIL
    for copy in trials[: snapshot["trials"]]:
        assert copy.params == original[copy.number].params
        if copy.values != original[copy.number].values:
            assert copy.state is TrialState.FAIL and "RUNNING" in copy.system_attrs["fail_reason"]
            unfinished.append(copy.number)
    assert len(unfinished) == snapshot["trials"] - snapshot["finishedTrials"], "every finished trial kept"
    assert len(trials) == snapshot["trials"] + 2
