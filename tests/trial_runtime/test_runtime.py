"""The trial runtime end to end: operator-style ask, then ``hpo-trial`` as a real process on MariaDB.

Each test checks what the operator and the user see: the trial's state and values in the database,
the exit code, the termination message and the pod's log lines.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hpo_trial.contract import ATTEMPT_ATTR, NODE_NAME_ENV, PLACEMENT_ATTR, POD_NAME_ENV
from tests.trial_runtime.conftest import Database, OperatorSide, RunTrial
from tests.trial_runtime.objectives import PRUNED_CURVE

pytestmark = pytest.mark.integration

DECLARED = {
    "x": FloatDistribution(-10.0, 10.0),
    "n": IntDistribution(1, 100),
    "kind": CategoricalDistribution(["a", "b", "c"]),
}


def test_objective_sees_the_assigned_parameters_and_its_value_lands_in_the_database(
    operator: OperatorSide, start_trial: RunTrial, tmp_path: Path
) -> None:
    study = operator.create_study()
    trial = operator.ask(study, DECLARED)
    record = tmp_path / "seen.json"

    run = start_trial(
        operator.assignment(study, trial), "--objective", "objectives:record_params", env={"TEST_RECORD": str(record)}
    )

    assert run.wait() == 0, run.output
    seen = json.loads(record.read_text())
    assert {name: seen[name] for name in DECLARED} == trial.params
    stored = operator.frozen(study, trial.number)
    assert stored.state == TrialState.COMPLETE
    assert stored.value == pytest.approx(seen["x"] * seen["n"] + seen["extra"])
    assert stored.params["extra"] == seen["extra"], "the define-by-run parameter is stored too"
    assert run.message == f"COMPLETE value={stored.value!r}"


def test_pruned_trial_ends_pruned_with_its_intermediate_values_stored(
    operator: OperatorSide, start_trial: RunTrial
) -> None:
    study = operator.create_study()
    trial = operator.ask(study)
    pruner = {"class": "ThresholdPruner", "kwargs": {"upper": 1.0}}

    run = start_trial(operator.assignment(study, trial, pruner=pruner, objective="objectives:report_a_curve"))

    assert run.wait() == 0, run.output
    stored = operator.frozen(study, trial.number)
    assert stored.state == TrialState.PRUNED
    assert stored.intermediate_values == dict(enumerate(PRUNED_CURVE[:4]))
    assert run.message == "PRUNED step=3"


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_trial_stopped_mid_training_resumes_from_its_last_checkpoint(
    operator: OperatorSide, database: Database, start_trial: RunTrial, tmp_path: Path, stop: signal.Signals
) -> None:
    study = operator.create_study()
    trial = operator.ask(study)
    assignment = operator.assignment(
        study, trial, objective="objectives:count_with_checkpoints", checkpoint_root=str(tmp_path / "checkpoints")
    )

    first = start_trial(assignment, env={"TEST_HOLD_AT_STEP": "2"})
    first.wait_for_line("checkpoint saved at step 2")
    first.signal(stop)
    code = first.wait()

    stored = operator.frozen(study, trial.number)
    assert stored.state == TrialState.RUNNING, "a stopped pod leaves its trial for the operator to run again"
    assert stored.user_attrs["checkpoint"]["step"] == 2
    with database.admin() as connection, connection.cursor() as cursor:
        cursor.execute(
            f"SELECT COUNT(*) FROM `{database.name}`.trial_heartbeats WHERE trial_id = %s",
            (operator.trial_id(study, trial.number),),
        )
        assert cursor.fetchone() == (1,), "the pod recorded heartbeats, so the operator can tell it is gone"
    if stop == signal.SIGTERM:
        assert code == 143, first.output
        assert first.message.startswith("INTERRUPTED step=2 "), first.message
        assert "resumed" in first.message

    second = start_trial(assignment)

    assert second.wait() == 0, second.output
    assert "resumed from step 2" in second.lines
    assert [line for line in second.lines if line.startswith("ran step")] == ["ran step 3", "ran step 4", "ran step 5"]
    stored = operator.frozen(study, trial.number)
    assert stored.state == TrialState.COMPLETE
    assert stored.value == 15.0, "the state carried over from the first run"
    assert stored.user_attrs["checkpoint"]["step"] == 5


@pytest.mark.parametrize(
    ("objective", "expected"),
    [
        ("no_such_module:objective", "no module named 'no_such_module'"),
        ("objectives:no_such_function", "module 'objectives' has no attribute 'no_such_function'"),
        ("objectives:NOT_CALLABLE", "'objectives:NOT_CALLABLE' is a int, not a function"),
        ("objectives", "is not of the form module:function"),
    ],
)
def test_a_bad_objective_path_fails_the_trial_with_a_message_naming_it(
    operator: OperatorSide, start_trial: RunTrial, objective: str, expected: str
) -> None:
    study = operator.create_study()
    trial = operator.ask(study)

    run = start_trial(operator.assignment(study, trial), "--objective", objective)

    assert run.wait() == 2, run.output
    assert run.message.startswith("FAIL "), run.message
    assert expected in run.message and objective in run.message
    stored = operator.frozen(study, trial.number)
    assert stored.state == TrialState.FAIL
    assert stored.system_attrs["fail_reason"] == run.message.removeprefix("FAIL ")


@pytest.mark.parametrize("attempt", [None, 0], ids=["unfenced", "fenced as the operator runs it"])
def test_an_exception_in_user_code_fails_the_trial_with_a_one_line_reason(
    operator: OperatorSide, start_trial: RunTrial, attempt: int | None
) -> None:
    study = operator.create_study()
    trial = operator.ask(study)
    if attempt is not None:
        operator.storage.set_trial_system_attr(operator.trial_id(study, trial.number), ATTEMPT_ATTR, attempt)

    run = start_trial(operator.assignment(study, trial, objective="objectives:raise_error", attempt=attempt))

    # Well before MySQL's 50 s lock wait timeout: the fence must not make the tell wait for itself.
    assert run.wait(timeout=30) == 1, run.output
    assert run.message.startswith(
        "FAIL objective objectives:raise_error raised ValueError: the training data is empty (at objectives.py:"
    ), run.message
    assert "\n" not in run.message and "second line" not in run.message
    assert "Traceback" in run.output, "the full traceback goes to the pod's log"
    stored = operator.frozen(study, trial.number)
    assert stored.state == TrialState.FAIL
    assert stored.system_attrs["fail_reason"] == run.message.removeprefix("FAIL ")


@pytest.mark.parametrize(
    ("objective", "message"),
    [
        ("objectives:return_nan", "FAIL objective objectives:return_nan: the objective returned nan (not a finite"),
        ("objectives:exit_early", "FAIL objective objectives:exit_early called sys.exit(0) instead of returning"),
    ],
    ids=["nan", "sys.exit"],
)
def test_no_usable_value_fails_the_trial(
    operator: OperatorSide, start_trial: RunTrial, objective: str, message: str
) -> None:
    study = operator.create_study()
    trial = operator.ask(study)

    run = start_trial(operator.assignment(study, trial), "--objective", objective)

    assert run.wait() == 1, run.output
    assert run.message.startswith(message), run.message
    assert operator.frozen(study, trial.number).state == TrialState.FAIL


def test_an_assignment_of_another_protocol_fails_the_trial_naming_both_versions(
    operator: OperatorSide, start_trial: RunTrial
) -> None:
    study = operator.create_study()
    trial = operator.ask(study)

    run = start_trial(operator.assignment(study, trial, protocol=2, sampler={"name": "tpe"}))

    assert run.wait() == 2, run.output
    assert "the assignment uses protocol 2 but this trial runtime speaks protocol 1" in run.message
    assert operator.frozen(study, trial.number).state == TrialState.FAIL


def test_an_unreachable_database_exits_3_without_showing_the_password(
    operator: OperatorSide, database: Database, start_trial: RunTrial
) -> None:
    study = operator.create_study()
    trial = operator.ask(study)
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    url = database.url.replace(f":{database.port}/", f":{closed_port}/")

    run = start_trial(operator.assignment(study, trial), env={"HPO_STORAGE_URL": url})

    assert run.wait() == 3, run.output
    assert run.message.startswith("FAIL cannot reach the study's database: 2003"), run.message
    assert database.password not in run.output + run.message
    assert operator.frozen(study, trial.number).state == TrialState.RUNNING, "left for the operator to reconcile"


def test_losing_the_database_mid_trial_exits_3_with_a_clear_message(
    operator: OperatorSide, database: Database, start_trial: RunTrial, tmp_path: Path
) -> None:
    study = operator.create_study()
    trial = operator.ask(study)
    release = tmp_path / "release"
    run = start_trial(
        operator.assignment(study, trial, objective="objectives:report_until_released"),
        env={"TEST_RELEASE": str(release)},
    )
    run.wait_for_line("waiting for release")

    with database.admin() as connection, connection.cursor() as cursor:  # the study's database goes away
        cursor.execute("DROP USER %s@'%%'", (database.user,))
        cursor.execute("SELECT id FROM information_schema.processlist WHERE user = %s", (database.user,))
        for (connection_id,) in cursor.fetchall():
            cursor.execute(f"KILL CONNECTION {int(connection_id)}")
    release.touch()

    assert run.wait() == 3, run.output
    assert run.message.startswith("FAIL lost the connection to the study's database: "), run.message
    assert "Access denied" in run.message and "RUNNING" in run.message
    assert database.password not in run.output + run.message


def test_a_trial_pod_opens_its_storage_without_optuna_schema_versioning(
    operator: OperatorSide, database: Database
) -> None:
    """Opening the storage neither imports alembic nor touches the version tables: the operator did that.

    Alembic and Optuna's version manager are about a fifth of a trial pod's CPU (README, Benchmarks).
    The runtime leaves them out by swapping a private Optuna name; this fails if a new Optuna renames it.
    """
    operator.create_study()
    probe = (
        "import sys\n"
        "from hpo_trial import attach\n"
        "storage = attach.open_storage(sys.argv[1], 60)\n"
        "print(storage.get_all_studies()[0].study_name)\n"
        "print(sorted(name for name in sys.modules if name.partition('.')[0] == 'alembic'))\n"
    )

    result = subprocess.run([sys.executable, "-c", probe, database.url], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["study", "[]"]


def test_what_an_objective_leaves_for_the_exit_still_reaches_disk(
    operator: OperatorSide, start_trial: RunTrial, tmp_path: Path
) -> None:
    """The runtime ends fast (it skips the interpreter's last full garbage collection) but ends cleanly:
    the objective's atexit handlers run and its open files are flushed, as trackers such as MLflow expect."""
    study = operator.create_study()
    trial = operator.ask(study)
    record = tmp_path / "exit.txt"

    run = start_trial(
        operator.assignment(study, trial, objective="objectives:flush_at_exit"), env={"TEST_RECORD": str(record)}
    )

    assert run.wait() == 0, run.output
    assert record.read_text() == f"atexit handler ran after trial {trial.number}"
    assert record.with_suffix(".buffered").read_text() == "written by the objective"


@pytest.mark.parametrize("sampler", ["RandomSampler", "QMCSampler", "CmaEsSampler", "GridSampler"])
def test_a_pod_suggests_a_parameter_the_operator_did_not_declare_whatever_its_sampler(
    operator: OperatorSide, start_trial: RunTrial, tmp_path: Path, sampler: str
) -> None:
    """Samplers that read no history used to fail here (Optuna's trial cache did not know the pod's trial)."""
    study = operator.create_study()
    trial = operator.ask(study, DECLARED)
    record = tmp_path / "seen.json"
    kwargs = {"seed": 3}
    objective = "objectives:record_params"
    if sampler == "GridSampler":  # a grid knows only its own parameters: the pod suggests just those
        kwargs["search_space"] = {"x": [trial.params["x"]], "n": [trial.params["n"]], "kind": ["a", "b", "c"]}
        objective = "objectives:record_declared"
    run = start_trial(
        operator.assignment(study, trial, sampler={"class": sampler, "kwargs": kwargs}),
        "--objective",
        objective,
        env={"TEST_RECORD": str(record)},
    )

    assert run.wait() == 0, run.output
    assert operator.frozen(study, trial.number).state == TrialState.COMPLETE


def test_the_pod_records_where_the_trial_ran_when_the_operator_names_pod_and_node(
    operator: OperatorSide, start_trial: RunTrial
) -> None:
    study = operator.create_study()
    placed, by_hand = operator.ask(study), operator.ask(study)
    env = {NODE_NAME_ENV: "node-b", POD_NAME_ENV: f"s-{placed.number}-0-abcde"}

    curve = "objectives:report_a_curve"
    assert start_trial(operator.assignment(study, placed, attempt=0, objective=curve), env=env).wait() == 0
    assert start_trial(operator.assignment(study, by_hand, objective=curve)).wait() == 0, "by hand: no Downward API"

    recorded = operator.frozen(study, placed.number).system_attrs[PLACEMENT_ATTR]
    assert recorded == {"attempt": 0, "pod": f"s-{placed.number}-0-abcde", "node": "node-b"}
    assert PLACEMENT_ATTR not in operator.frozen(study, by_hand.number).system_attrs
