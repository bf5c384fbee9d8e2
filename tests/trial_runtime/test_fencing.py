"""Faults cost nothing: the final tell survives a database outage, and a superseded attempt never reports.

The operator fences a trial (moves its ``hpo:attempt`` attribute on, `storage.advance_attempt`) before
it gives the trial to a new pod; these tests play the operator's side with its own function.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from hpo_operator.storage import advance_attempt
from hpo_trial import attach
from hpo_trial.assignment import TrialRef
from hpo_trial.contract import ATTEMPT_ATTR
from tests.helpers import wait_for
from tests.trial_runtime.conftest import Database, OperatorSide, RunTrial

pytestmark = pytest.mark.integration


def lose_database(database: Database) -> None:
    """The study's user can no longer log in, and its open connections are gone."""
    with database.admin() as connection, connection.cursor() as cursor:
        cursor.execute("DROP USER %s@'%%'", (database.user,))
        cursor.execute("SELECT id FROM information_schema.processlist WHERE user = %s", (database.user,))
        for (connection_id,) in cursor.fetchall():
            cursor.execute(f"KILL CONNECTION {int(connection_id)}")


def restore_database(database: Database) -> None:
    with database.admin() as connection, connection.cursor() as cursor:
        cursor.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (database.user, database.password))
        cursor.execute(f"GRANT ALL PRIVILEGES ON `{database.name}`.* TO %s@'%%'", (database.user,))


def test_a_result_computed_during_an_outage_is_told_once_the_database_is_back(
    operator: OperatorSide, database: Database, start_trial: RunTrial, tmp_path: Path
) -> None:
    study = operator.create_study()
    trial = operator.ask(study)
    operator.storage.set_trial_system_attr(operator.trial_id(study, trial.number), ATTEMPT_ATTR, 0)
    release = tmp_path / "release"
    run = start_trial(
        operator.assignment(study, trial, objective="objectives:return_when_released", attempt=0, deadline_seconds=600),
        env={"TEST_RELEASE": str(release)},
    )
    run.wait_for_line("waiting for release")

    lose_database(database)
    release.touch()
    wait_for(lambda: any("cannot record the outcome yet" in line for line in run.lines), 60, "a failed tell")
    restore_database(database)

    assert run.wait() == 0, run.output
    assert run.message == "COMPLETE value=0.25"
    assert operator.frozen(study, trial.number).state == TrialState.COMPLETE
    assert database.password not in run.output


def test_an_outage_past_the_attempts_deadline_leaves_the_trial_running_and_exits_3(
    operator: OperatorSide, database: Database, start_trial: RunTrial, tmp_path: Path
) -> None:
    study = operator.create_study()
    trial = operator.ask(study)
    release = tmp_path / "release"
    run = start_trial(
        operator.assignment(study, trial, objective="objectives:return_when_released", deadline_seconds=25),
        env={"TEST_RELEASE": str(release)},
    )
    run.wait_for_line("waiting for release")
    lose_database(database)
    started = time.monotonic()
    release.touch()

    assert run.wait(timeout=60) == 3, run.output
    assert time.monotonic() - started < 25, "it gave up before the deadline, so the operator requeues it for free"
    assert run.message.startswith("FAIL ")
    restore_database(database)
    assert operator.frozen(study, trial.number).state == TrialState.RUNNING


def test_an_attempt_the_operator_superseded_before_it_started_runs_nothing(
    operator: OperatorSide, start_trial: RunTrial, tmp_path: Path
) -> None:
    study = operator.create_study()
    trial = operator.ask(study)
    operator.storage.set_trial_system_attr(operator.trial_id(study, trial.number), ATTEMPT_ATTR, 1)
    record = tmp_path / "seen.json"

    run = start_trial(
        operator.assignment(study, trial, objective="objectives:record_params", attempt=0),
        env={"TEST_RECORD": str(record)},
    )

    assert run.wait() == 4, run.output
    assert run.message.startswith(
        f"SUPERSEDED trial {trial.number} belongs to attempt 1 now, not to this pod's attempt 0"
    )
    assert not record.exists(), "the objective did not run"
    assert operator.frozen(study, trial.number).state == TrialState.RUNNING


def test_an_attempt_superseded_while_it_ran_cannot_report_its_result(
    operator: OperatorSide, start_trial: RunTrial, tmp_path: Path
) -> None:
    study = operator.create_study()
    trial = operator.ask(study)
    trial_id = operator.trial_id(study, trial.number)
    operator.storage.set_trial_system_attr(trial_id, ATTEMPT_ATTR, 0)
    release = tmp_path / "release"
    run = start_trial(
        operator.assignment(study, trial, objective="objectives:return_when_released", attempt=0),
        env={"TEST_RELEASE": str(release)},
    )
    run.wait_for_line("waiting for release")

    advance_attempt(operator.storage, trial_id, 1)  # the operator thought the pod lost
    release.touch()

    assert run.wait() == 4, run.output
    stored = operator.frozen(study, trial.number)
    assert stored.state == TrialState.RUNNING and stored.values is None, "attempt 1 alone may report"


def test_the_operators_fence_waits_for_a_tell_in_progress(operator: OperatorSide) -> None:
    """Either the old pod's tell lands before the fence moves on, or it is refused: never both."""
    study = operator.create_study()
    trial = operator.ask(study)
    trial_id = operator.trial_id(study, trial.number)
    operator.storage.set_trial_system_attr(trial_id, ATTEMPT_ATTR, 0)
    ref = TrialRef(study.study_name, trial.number, trial_id)
    pod_storage = operator.database.storage()
    in_tell, fenced = threading.Event(), threading.Event()

    def operator_fences() -> None:
        in_tell.wait(10)
        advance_attempt(operator.storage, trial_id, 1)
        fenced.set()

    fencer = threading.Thread(target=operator_fences)
    fencer.start()
    with attach.fence(pod_storage, ref, 0):
        in_tell.set()
        assert not fenced.wait(1.0), "the fence's write waits while the pod holds the attempt row"
        study.tell(trial.number, 1.0)
    fencer.join(10)
    assert fenced.is_set()
    assert operator.frozen(study, trial.number).state == TrialState.COMPLETE
    with pytest.raises(Exception, match="belongs to attempt 1 now"), attach.fence(pod_storage, ref, 0):
        pass
    pod_storage.engine.dispose()
