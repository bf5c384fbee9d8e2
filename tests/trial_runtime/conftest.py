"""Fixtures for the trial runtime's tests: a MariaDB database per test, and ``hpo-trial`` as a real process.

Trials are created the way the operator creates them: ``study.ask`` with the declared distributions,
then an ``HPO_ASSIGNMENT`` naming that trial's number and storage id. The runtime runs as the
``hpo-trial`` console script in a subprocess, with ``tests/trial_runtime`` on ``PYTHONPATH`` so it can
import the test objectives (``objectives:<function>``).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pymysql
import pytest
from optuna.distributions import BaseDistribution
from optuna.storages import RDBStorage

from tests.helpers import wait_for

HERE = Path(__file__).resolve().parent
HPO_TRIAL = Path(sys.executable).parent / "hpo-trial"


@dataclass
class Database:
    """A throw-away database and a user that may use only it, like the operator gives each study.

    The password holds ``{`` and ``}`` on purpose: Optuna formats RDB URLs with ``str.format``.
    """

    name: str
    user: str
    password: str
    host: str
    port: int
    admin: Callable[[], pymysql.connections.Connection]

    @property
    def url(self) -> str:
        """The literal URL the operator puts in the study's Secret."""
        return f"mysql+pymysql://{self.user}:{self.password}@{self.host}:{self.port}/{self.name}?charset=utf8mb4"

    def storage(self) -> RDBStorage:
        """The study's storage, as the operator opens it (braces escaped for Optuna's formatting)."""
        return RDBStorage(self.url.replace("{", "{{").replace("}", "}}"))


@pytest.fixture
def database(testbed_env: dict[str, str]) -> Iterator[Database]:
    """A database and user of its own for each test, dropped after it."""
    host, port = testbed_env["HPO_MYSQL_HOST"], int(testbed_env["HPO_MYSQL_PORT"])

    def admin() -> pymysql.connections.Connection:
        return pymysql.connect(
            host=host,
            port=port,
            user=testbed_env["HPO_MYSQL_USER"],
            password=testbed_env["HPO_MYSQL_PASSWORD"],
            autocommit=True,
        )

    name = f"hpo_trial_{uuid.uuid4().hex[:12]}"
    password = f"pw{{{secrets.token_hex(8)}}}"
    with admin() as connection, connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        cursor.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (name, password))
        cursor.execute(f"GRANT ALL PRIVILEGES ON `{name}`.* TO %s@'%%'", (name,))
    yield Database(name=name, user=name, password=password, host=host, port=port, admin=admin)
    with admin() as connection, connection.cursor() as cursor:
        cursor.execute("DROP USER IF EXISTS %s@'%%'", (name,))
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")


@dataclass
class OperatorSide:
    """What the operator does before a trial pod starts: create the study, ask, write the assignment."""

    database: Database
    storage: RDBStorage = field(init=False)

    def __post_init__(self) -> None:
        self.storage = self.database.storage()

    def create_study(self, name: str = "study") -> optuna.Study:
        return optuna.create_study(study_name=name, storage=self.storage)

    def ask(self, study: optuna.Study, distributions: Mapping[str, BaseDistribution] | None = None) -> optuna.Trial:
        return study.ask(dict(distributions or {}))

    def trial_id(self, study: optuna.Study, number: int) -> int:
        study_id = self.storage.get_study_id_from_name(study.study_name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def assignment(self, study: optuna.Study, trial: optuna.Trial, **overrides: Any) -> dict[str, Any]:
        assignment: dict[str, Any] = {
            "protocol": 1,
            "study": study.study_name,
            "trial": {"number": trial.number, "id": self.trial_id(study, trial.number)},
            "sampler": {"class": "TPESampler", "kwargs": {"seed": 0}},
            "pruner": None,
            "checkpoint_root": None,
            "objective": None,
            "heartbeat_seconds": 1,
        }
        assignment.update(overrides)
        return assignment

    def frozen(self, study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
        return self.storage.get_trial(self.trial_id(study, number))


@pytest.fixture
def operator(database: Database) -> Iterator[OperatorSide]:
    side = OperatorSide(database)
    yield side
    side.storage.engine.dispose()


class TrialProcess:
    """A running ``hpo-trial`` whose combined output is collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, termination_log: Path) -> None:
        self.termination_log = termination_log
        self.lines: list[str] = []
        self._process = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = 60) -> None:
        """Wait until a line equal to ``text`` has been printed (fail early if the process ended)."""

        def seen() -> bool:
            if text in self.lines:
                return True
            if self._process.poll() is not None:
                self._reader.join(timeout=5)
                if text in self.lines:
                    return True
                raise AssertionError(f"hpo-trial exited ({self._process.returncode}) before {text!r}:\n{self.output}")
            return False

        wait_for(seen, timeout, f"the line {text!r} from hpo-trial", interval=0.05)

    def signal(self, signum: signal.Signals) -> None:
        self._process.send_signal(signum)

    def stop(self) -> None:
        """Kill the process if it still runs (test teardown)."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def wait(self, timeout: float = 120) -> int:
        """Wait for the process to exit and return its exit code."""
        code = self._process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    @property
    def message(self) -> str:
        """The termination message the operator would read."""
        return self.termination_log.read_text() if self.termination_log.exists() else ""


RunTrial = Callable[..., TrialProcess]


@pytest.fixture
def start_trial(database: Database, tmp_path: Path) -> Iterator[RunTrial]:
    """Start ``hpo-trial`` for an assignment, as a trial pod would; every process is ended after the test."""
    started: list[TrialProcess] = []

    def start(assignment: dict[str, Any], *args: str, env: Mapping[str, str] | None = None) -> TrialProcess:
        run_dir = tmp_path / f"run-{len(started)}"
        run_dir.mkdir()
        termination_log = run_dir / "termination-log"
        base = {key: value for key, value in os.environ.items() if not key.startswith("HPO_")}
        full_env = {
            **base,
            # The test objectives, then whatever this test process imports from (a worktree's own sources).
            "PYTHONPATH": os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "HPO_STORAGE_URL": database.url,
            "HPO_ASSIGNMENT": json.dumps(assignment),
            "HPO_TERMINATION_LOG": str(termination_log),
            "TMPDIR": str(run_dir),  # where checkpoints go without a checkpoint root
            **(env or {}),
        }
        process = TrialProcess([str(HPO_TRIAL), *args], full_env, run_dir, termination_log)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
