"""Outcomes: the value checks, the one-line termination messages and their exit codes, redaction."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from hpo_trial.errors import ConfigurationError, ObjectiveError, StorageUnavailableError
from hpo_trial.logs import configure_logging, redact
from hpo_trial.outcome import ExitCode, Outcome, describe_exception, values_from_result, write_termination_message

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("result", "n_objectives", "values"),
    [
        (0.25, 1, [0.25]),
        (3, 1, [3.0]),
        (np.float32(0.5), 1, [0.5]),
        (torch.tensor(1.5), 1, [1.5]),
        ((1, 2.5), 2, [1.0, 2.5]),
    ],
)
def test_numbers_become_the_values_to_tell(result: object, n_objectives: int, values: list[float]) -> None:
    assert values_from_result(result, n_objectives) == values


@pytest.mark.parametrize(
    ("result", "n_objectives", "message"),
    [
        (None, 1, "the objective returned None; it must return a float"),
        (math.nan, 1, "the objective returned nan (not a finite number)"),
        (-math.inf, 1, "the objective returned -inf (not a finite number)"),
        ("0.5", 1, "the objective returned '0.5' (str)"),
        ((1.0, 2.0), 1, "returned 2 value(s) but the study has 1 objective(s)"),
        (1.0, 2, "it must return a sequence of 2 floats"),
    ],
)
def test_unusable_results_are_objective_errors(result: object, n_objectives: int, message: str) -> None:
    with pytest.raises(ObjectiveError) as raised:
        values_from_result(result, n_objectives)
    assert message in str(raised.value)


def test_messages_and_exit_codes() -> None:
    assert Outcome.complete([0.1]).message == "COMPLETE value=0.1"
    assert Outcome.complete([0.1, 2.0]).message == "COMPLETE values=0.1,2.0"
    assert (Outcome.pruned(4).message, Outcome.pruned(None).message) == ("PRUNED step=4", "PRUNED")
    assert Outcome.failed("boom\nsecond line").message == "FAIL boom second line"
    assert Outcome.interrupted(3, 2).message.startswith("INTERRUPTED step=2 by SIGTERM; trial 3 left RUNNING")
    assert Outcome.interrupted(3, None).message.startswith("INTERRUPTED by SIGTERM")
    codes = [
        Outcome.complete([1.0]).exit_code,
        Outcome.pruned(1).exit_code,
        Outcome.from_error(ObjectiveError("x")).exit_code,
        Outcome.from_error(ConfigurationError("x")).exit_code,
        Outcome.from_error(StorageUnavailableError("x")).exit_code,
        Outcome.interrupted(0, None).exit_code,
    ]
    assert codes == [0, 0, 1, 2, 3, 143]
    assert ExitCode.INTERRUPTED == 128 + 15


def test_an_exception_is_described_in_one_line_with_where_it_came_from() -> None:
    def objective() -> None:
        raise KeyError("missing column")

    with pytest.raises(KeyError) as raised:
        objective()
    assert describe_exception(raised.value).startswith("KeyError: 'missing column' (at test_outcome.py:")
    assert describe_exception(raised.value).endswith(" in objective)")


def test_the_termination_message_is_written_alone_and_an_unwritable_path_is_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "termination-log"
    write_termination_message(str(path), Outcome.pruned(2))
    assert path.read_text() == "PRUNED step=2"
    write_termination_message(str(tmp_path / "missing" / "log"), Outcome.pruned(2))
    assert "cannot write the termination message" in caplog.text


@pytest.fixture
def pod_logging() -> Iterator[None]:
    """Lets a test call configure_logging as a pod does; undone afterwards (it reroutes ``hpo_trial`` logs)."""
    logger = logging.getLogger("hpo_trial")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    yield
    configure_logging(secret_urls=[])
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def test_storage_passwords_never_reach_the_log(pod_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(secret_urls=["mysql+pymysql://study:s3cr%7Bet@db:3306/x"])
    assert redact("connect mysql+pymysql://study:s3cr%7Bet@db:3306/x failed") == "connect *** failed"
    assert redact("password s3cr{et leaked") == "password *** leaked"
    assert redact("another url mysql://u:hunter22@h/db") == "another url mysql://u:***@h/db"
    logging.getLogger("hpo_trial.attach").warning("cannot connect with s3cr{et")
    assert capsys.readouterr().out == "warning: cannot connect with ***\n"
