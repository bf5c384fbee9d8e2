"""Importing a Slurm-era study into a study's MariaDB database, and snapshotting a study to SQLite.

The sources are made the way users made them: real processes sharing one SQLite or journal file,
each running ``study.optimize(objective, n_trials=1)``, one of them killed mid-trial. ``hpo-transfer``
runs as a real process (``python -m hpo_trial.transfer``), as an import Job would run it.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.storages import BaseStorage, InMemoryStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from hpo_trial.contract import FAIL_REASON_ATTR, IMPORTED_ATTR, RERUN_OF_ATTR
from hpo_trial.snapshots import snapshot
from tests.trial_runtime.conftest import Database

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SOURCES = os.pathsep.join(str(ROOT / part) for part in ("trial-image/src", "operator/src", "."))
SPACE = {
    "x": {"type": "float", "low": -5, "high": 5},
    "layers": {"type": "int", "low": 1, "high": 4},
    "activation": {"type": "categorical", "choices": ["relu", "tanh"]},
}
ADDED_ATTRS = {IMPORTED_ATTR, FAIL_REASON_ATTR}


def _env(**extra: str) -> dict[str, str]:
    base = {key: value for key, value in os.environ.items() if not key.startswith("HPO_")}
    return {**base, "PYTHONPATH": SOURCES, **extra}


@dataclass
class Slurm:
    """A Slurm-style study: jobs sharing one storage file, one trial each, one job killed mid-trial."""

    storage_arg: str  # what slurm_job.py opens: an sqlite:/// URL or a journal path
    path: Path
    killed: int  # the number of the trial left RUNNING

    def storage(self) -> BaseStorage:
        if "://" in self.storage_arg:
            return RDBStorage(self.storage_arg)
        return JournalStorage(JournalFileBackend(self.storage_arg))

    def trials(self, study: str = "slurm") -> list[FrozenTrial]:
        return optuna.load_study(study_name=study, storage=self.storage()).get_trials(deepcopy=False)


def run_slurm_array(tmp_path: Path, kind: str, jobs: int = 6) -> Slurm:
    """Run the array two jobs at a time; the job after the first pair hangs mid-trial and is killed."""
    path = tmp_path / ("slurm.db" if kind == "sqlite" else "slurm.log")
    storage_arg = f"sqlite:///{path}" if kind == "sqlite" else str(path)
    slurm = Slurm(storage_arg, path, killed=-1)
    optuna.create_study(study_name="slurm", storage=slurm.storage(), direction="minimize")
    job = [sys.executable, str(HERE / "slurm_job.py"), storage_arg, "slurm"]
    for first in range(0, jobs, 2):
        pair = [subprocess.Popen([*job, str(index)], env=_env()) for index in (first, first + 1)]
        assert [process.wait(timeout=120) for process in pair] == [0, 0]
        if first == 2:
            hanging = subprocess.Popen([*job, "9"], env=_env(HANG="1"), stdout=subprocess.PIPE, text=True)
            assert hanging.stdout is not None and hanging.stdout.readline().strip() == "sleeping"
            hanging.send_signal(signal.SIGKILL)
            hanging.wait()
            slurm.killed = first + 2
    return slurm


@dataclass
class Transfer:
    returncode: int
    output: str
    message: str


@pytest.fixture
def transfer(database: Database, tmp_path: Path) -> Callable[..., Transfer]:
    """Run ``python -m hpo_trial.transfer`` with the study's database as ``HPO_STORAGE_URL``."""
    runs = iter(range(1000))

    def run(*args: str, env: dict[str, str] | None = None) -> Transfer:
        log = tmp_path / f"termination-{next(runs)}"
        full_env = {**_env(HPO_STORAGE_URL=database.url, HPO_TERMINATION_LOG=str(log)), **(env or {})}
        result = subprocess.run(
            [sys.executable, "-m", "hpo_trial.transfer", *args],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return Transfer(result.returncode, result.stdout + result.stderr, log.read_text() if log.exists() else "")

    return run


@pytest.fixture
def storage(database: Database) -> Iterator[RDBStorage]:
    storage = database.storage()
    yield storage
    storage.engine.dispose()


def import_args(*extra: str, destination: str = "study") -> list[str]:
    return ["import", "--destination-study", destination, "--directions", "minimize", *extra]


def stored_trials(storage: RDBStorage, study: str = "study") -> list[FrozenTrial]:
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def assert_same_trials(
    source: list[FrozenTrial], copied: list[FrozenTrial], failed: frozenset[int] = frozenset()
) -> None:
    """Every source trial is in ``copied``, number for number, identical but for the import's marks."""
    assert [t.number for t in copied[: len(source)]] == [t.number for t in source]
    for before, after in zip(source, copied, strict=False):
        assert after.params == before.params
        assert after.distributions == before.distributions
        assert after.values == before.values
        assert after.intermediate_values == before.intermediate_values
        assert after.user_attrs == before.user_attrs
        assert {k: v for k, v in after.system_attrs.items() if k not in ADDED_ATTRS} == {
            k: v for k, v in before.system_attrs.items() if k not in ADDED_ATTRS
        }
        assert same_time(after.datetime_start, before.datetime_start)
        if before.number in failed:
            assert after.state is TrialState.FAIL
        else:
            assert after.state is before.state
            assert same_time(after.datetime_complete, before.datetime_complete)


def same_time(a: datetime.datetime | None, b: datetime.datetime | None) -> bool:
    """Equal to the second: Optuna's schema keeps whole seconds on MariaDB (``DATETIME``), microseconds on SQLite."""
    if a is None or b is None:
        return a is b
    return abs(a - b) < datetime.timedelta(seconds=1) and a.replace(microsecond=0) == b.replace(microsecond=0)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_slurm_study_is_imported_trial_for_trial_and_its_killed_trial_is_run_again_once(
    kind: str, tmp_path: Path, transfer: Callable[..., Transfer], storage: RDBStorage
) -> None:
    slurm = run_slurm_array(tmp_path, kind)
    source = slurm.trials()
    assert {t.state for t in source} == {TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED, TrialState.RUNNING}
    killed = source[slurm.killed]
    assert killed.state is TrialState.RUNNING

    space = json.dumps(SPACE)
    first = transfer(*import_args("--file", str(slurm.path), "--rerun-unfinished", "--search-space-json", space))
    assert first.returncode == 0, first.output
    assert first.message.startswith(f"IMPORTED copied={len(source)} skipped=0 failed_unfinished=1 enqueued=1 ")
    assert f"imported {len(source)}/{len(source)} trials" in first.output

    again = transfer(*import_args("--file", str(slurm.path), "--rerun-unfinished", "--search-space-json", space))
    assert again.returncode == 0, again.output
    assert again.message.startswith(f"IMPORTED copied=0 skipped={len(source)} failed_unfinished=0 enqueued=0 ")

    copied = stored_trials(storage)
    assert_same_trials(source, copied, failed=frozenset({slurm.killed}))
    reason = copied[slurm.killed].system_attrs[FAIL_REASON_ATTR]
    assert "where it was RUNNING" in reason and "'slurm'" in reason
    assert [t.system_attrs[IMPORTED_ATTR]["number"] for t in copied[: len(source)]] == [t.number for t in source]
    queued = copied[len(source) :]
    assert len(queued) == 1 and queued[0].state is TrialState.WAITING
    assert queued[0].system_attrs["fixed_params"] == killed.params
    assert queued[0].system_attrs[RERUN_OF_ATTR]["number"] == slurm.killed
    # Optuna continues the study as its own: the next trial runs the queued params, numbered after all.
    study = optuna.load_study(study_name="study", storage=storage)
    trial = study.ask(dict(killed.distributions))
    assert trial.number == len(source) and trial.params == killed.params


def test_an_import_killed_mid_way_and_run_again_leaves_every_trial_once(
    tmp_path: Path, database: Database, storage: RDBStorage
) -> None:
    source_file = make_sqlite_source(tmp_path, trials=3000)
    env = _env(HPO_STORAGE_URL=database.url, HPO_TERMINATION_LOG=str(tmp_path / "log"))
    args = [
        sys.executable,
        "-m",
        "hpo_trial.transfer",
        *import_args("--file", str(source_file), "--chunk-trials", "50"),
    ]
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    first_progress = next((line for line in process.stdout if line.startswith("imported ")), None)
    assert first_progress is not None, f"the import ended ({process.wait()}) without a progress line"
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    partial = stored_trials(storage)
    assert 0 < len(partial) < 3000, "the import was not killed mid-way"
    assert len(partial) % 50 == 0, "a killed import left part of a chunk"

    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(partial)} of the 3000 trials were imported before" in rerun.stdout
    copied = stored_trials(storage)
    assert [t.number for t in copied] == list(range(3000))
    assert sorted(t.system_attrs[IMPORTED_ATTR]["number"] for t in copied) == list(range(3000))
    assert [t.params["x"] for t in copied] == [t.params["x"] for t in sqlite_trials(source_file)]


def make_sqlite_source(tmp_path: Path, trials: int, name: str = "big") -> Path:
    """A finished study of ``trials`` trials as an SQLite file (built in memory, written as a snapshot)."""
    memory = InMemoryStorage()
    study = optuna.create_study(study_name=name, storage=memory)
    x = FloatDistribution(-5, 5)
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={"x": -5 + 10 * (i * 0.618 % 1)},
                distributions={"x": x},
                value=float(i % 97),
                intermediate_values={0: 1.0, 1: 0.5},
                user_attrs={"i": i},
            )
            for i in range(trials)
        ]
    )
    return snapshot(memory, name, tmp_path / "sources").path


def sqlite_trials(path: Path) -> list[FrozenTrial]:
    storage = RDBStorage(f"sqlite:///{path}")
    try:
        (summary,) = storage.get_all_studies()
        return storage.get_all_trials(summary._study_id)
    finally:
        storage.engine.dispose()


def test_trials_imported_into_a_study_that_has_some_come_after_them(
    tmp_path: Path, transfer: Callable[..., Transfer], storage: RDBStorage
) -> None:
    study = optuna.create_study(study_name="study", storage=storage)
    study.optimize(lambda trial: trial.suggest_float("x", -5, 5), n_trials=2)
    source_file = make_sqlite_source(tmp_path, trials=5)
    result = transfer(*import_args("--file", str(source_file)))
    assert result.returncode == 0, result.output
    copied = stored_trials(storage)
    assert [t.number for t in copied] == list(range(7))
    assert [t.system_attrs[IMPORTED_ATTR]["number"] for t in copied[2:]] == list(range(5))
    assert study.ask().number == 7


@pytest.mark.parametrize(
    ("setup", "field", "words"),
    [
        ("missing", "spec.importFrom.path", "does not exist"),
        ("text", "spec.importFrom.path", "is not an Optuna storage"),
        ("unknown-name", "spec.importFrom.studyName", "it holds 'a', 'b'"),
        ("two-studies", "spec.importFrom.studyName", "holds 2 studies ('a', 'b')"),
        ("directions", "spec.objective.directions", "has directions [maximize], this study [minimize]"),
        ("range", "spec.searchSpace.x", "sampled it in [-5.0, 5.0], outside the declared [0.0, 1.0]"),
        ("type", "spec.searchSpace.x", "sampled it as float, the spec declares categorical"),
    ],
)
def test_a_source_that_cannot_be_imported_is_refused_naming_the_field(
    setup: str, field: str, words: str, tmp_path: Path, transfer: Callable[..., Transfer], storage: RDBStorage
) -> None:
    path = tmp_path / "source.db"
    args = ["--file", str(path)]
    if setup == "text":
        path.write_text("not a study\n")
    elif setup in {"unknown-name", "two-studies"}:
        for name in ("a", "b"):
            optuna.create_study(study_name=name, storage=f"sqlite:///{path}")
        args += ["--study-name", "c"] if setup == "unknown-name" else []
    elif setup == "directions":
        optuna.create_study(study_name="a", storage=f"sqlite:///{path}", direction="maximize")
    elif setup in {"range", "type"}:
        study = optuna.create_study(study_name="a", storage=f"sqlite:///{path}")
        study.optimize(lambda trial: trial.suggest_float("x", -5, 5), n_trials=2)
        declared = (
            {"type": "float", "low": 0, "high": 1} if setup == "range" else {"type": "categorical", "choices": [1]}
        )
        args += ["--search-space-json", json.dumps({"x": declared})]
    result = transfer(*import_args(*args))
    assert result.returncode == 2, result.output
    assert result.message.startswith(f"FAIL {field}: "), result.message
    assert words in result.message
    assert all(storage.get_n_trials(study._study_id) == 0 for study in storage.get_all_studies())


def test_a_source_password_never_appears_in_the_output(
    database: Database, transfer: Callable[..., Transfer], storage: RDBStorage
) -> None:
    optuna.create_study(study_name="study", storage=storage)
    wrong = f"mysql+pymysql://{database.user}:not-{database.password}@{database.host}:{database.port}/{database.name}"
    refused = transfer(*import_args(), env={"HPO_IMPORT_URL": wrong})
    assert refused.returncode == 2, refused.output
    assert refused.message.startswith("FAIL spec.importFrom.urlSecret: ") and "Access denied" in refused.message
    unreachable = transfer(*import_args(), env={"HPO_IMPORT_URL": f"mysql://u:{database.password}@127.0.0.1:1/x"})
    assert unreachable.returncode == 3, unreachable.output
    assert unreachable.message.startswith("FAIL cannot reach the study to import (mysql database x on 127.0.0.1)")
    for result in (refused, unreachable):
        for text in (result.output, result.message):
            assert database.password not in text and f"not-{database.password}" not in text


def test_a_study_in_another_database_is_imported_from_its_url(
    tmp_path: Path, database: Database, transfer: Callable[..., Transfer], storage: RDBStorage
) -> None:
    source = optuna.create_study(study_name="elsewhere", storage=storage)
    source.optimize(lambda trial: trial.suggest_float("x", -5, 5), n_trials=3)
    result = transfer(*import_args("--study-name", "elsewhere"), env={"HPO_IMPORT_URL": database.url})
    assert result.returncode == 0, result.output
    assert_same_trials(stored_trials(storage, "elsewhere"), stored_trials(storage))
    assert database.password not in result.output + result.message


def test_a_snapshot_is_what_an_import_reads_back_identically(
    tmp_path: Path, transfer: Callable[..., Transfer], storage: RDBStorage
) -> None:
    slurm = run_slurm_array(tmp_path, "sqlite")
    assert transfer(*import_args("--file", str(slurm.path), "--rerun-unfinished")).returncode == 0
    optuna.load_study(study_name="study", storage=storage).set_user_attr("team", "vision")
    taken = transfer("snapshot", "--study", "study", "--directory", str(tmp_path / "snapshots"))
    assert taken.returncode == 0, taken.output
    path = Path(taken.message.split("path=")[1].split()[0])
    assert path.parent == tmp_path / "snapshots" and path.name.startswith(f"study-{len(slurm.trials())}-")
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left
    assert optuna.load_study(study_name="study", storage=f"sqlite:///{path}").user_attrs == {"team": "vision"}

    restored = transfer(*import_args("--file", str(path), destination="restored"))
    assert restored.returncode == 0, restored.output
    original = stored_trials(storage)
    assert_same_trials(original, stored_trials(storage, "restored"), failed=frozenset({original[-1].number}))


def test_a_snapshot_keeps_only_the_newest_of_its_study(tmp_path: Path, storage: RDBStorage) -> None:
    study = optuna.create_study(study_name="study", storage=storage)
    directory = tmp_path / "snapshots"
    directory.mkdir()
    (directory / "other-1-20200101T000000.000000Z.db").write_text("another study's snapshot")
    taken = []
    for _ in range(4):
        study.optimize(lambda trial: trial.suggest_float("x", -5, 5), n_trials=1)
        taken.append(snapshot(storage, "study", directory, keep=2))
    assert [t.trials for t in taken] == [1, 2, 3, 4]
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [taken[2].path.name, taken[3].path.name, "other-1-20200101T000000.000000Z.db"]
    )
    assert len(optuna.load_study(study_name="study", storage=f"sqlite:///{taken[3].path}").trials) == 4


def test_an_unreachable_study_database_exits_3_to_be_run_again(
    tmp_path: Path, database: Database, transfer: Callable[..., Transfer]
) -> None:
    source_file = make_sqlite_source(tmp_path, trials=3)
    away = f"mysql+pymysql://{database.user}:{database.password}@127.0.0.1:1/{database.name}"
    result = transfer(*import_args("--file", str(source_file)), env={"HPO_STORAGE_URL": away})
    assert result.returncode == 3, result.output
    assert result.message.startswith("FAIL cannot reach the study's database: 2003 ")
    assert database.password not in result.output + result.message
