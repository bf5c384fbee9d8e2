"""How a trial pod reports how its trial ended: exit codes, the termination message, value checks.

This is the last step of a trial pod's life. The operator reads the pod's exit code and its
termination message (Kubernetes copies ``/dev/termination-log`` into the pod's status); the table of
both is in :mod:`hpo_trial.assignment`.
"""

from __future__ import annotations

import enum
import logging
import math
import numbers
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hpo_trial import contract
from hpo_trial.errors import (
    ConfigurationError,
    HpoTrialError,
    ObjectiveError,
    StorageUnavailableError,
    SupersededError,
)
from hpo_trial.logs import redact

__all__ = [
    "DEFAULT_TERMINATION_LOG",
    "ExitCode",
    "Outcome",
    "describe_exception",
    "values_from_result",
    "write_termination_message",
]

_logger = logging.getLogger(__name__)

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
_MAX_MESSAGE_BYTES = 4000  # Kubernetes keeps at most 4096 bytes of the termination message
_MAX_REASON_CHARS = 500


class ExitCode(enum.IntEnum):
    """The trial pod's exit codes: zero means the trial has its final state."""

    FINISHED = contract.EXIT_FINISHED
    OBJECTIVE_FAILED = contract.EXIT_OBJECTIVE_FAILED
    CONFIGURATION = contract.EXIT_CONFIGURATION
    STORAGE_UNAVAILABLE = contract.EXIT_STORAGE_UNAVAILABLE
    SUPERSEDED = contract.EXIT_SUPERSEDED
    INTERRUPTED = contract.EXIT_INTERRUPTED


@dataclass(frozen=True)
class Outcome:
    """How the trial ended, as the operator will read it.

    Attributes:
        word: The first word of the termination message: COMPLETE, PRUNED, FAIL, SUPERSEDED or INTERRUPTED
            (``hpo-transfer``: IMPORTED, SNAPSHOT or FAIL).
        detail: The rest of the one-line message.
        exit_code: The process exit code.
    """

    word: str
    detail: str
    exit_code: ExitCode

    @property
    def message(self) -> str:
        """The one-line termination message, secrets redacted."""
        text = f"{self.word} {self.detail}".strip()
        return redact(" ".join(text.split()))

    @classmethod
    def complete(cls, values: Sequence[float], note: str = "") -> Outcome:
        """A COMPLETE trial with its value (one objective) or values (several)."""
        shown = f"value={values[0]!r}" if len(values) == 1 else "values=" + ",".join(repr(v) for v in values)
        return cls("COMPLETE", f"{shown} {note}", ExitCode.FINISHED)

    @classmethod
    def pruned(cls, step: int | None, note: str = "") -> Outcome:
        """A PRUNED trial; ``step`` is its last reported step, if any."""
        return cls("PRUNED", f"{'' if step is None else f'step={step}'} {note}", ExitCode.FINISHED)

    @classmethod
    def failed(cls, reason: str, exit_code: ExitCode = ExitCode.OBJECTIVE_FAILED) -> Outcome:
        """A failure with a one-line reason."""
        return cls("FAIL", _clip(reason), exit_code)

    @classmethod
    def from_error(cls, error: HpoTrialError) -> Outcome:
        """The failure that one of the runtime's errors stands for."""
        if isinstance(error, SupersededError):
            return cls("SUPERSEDED", _clip(str(error)), ExitCode.SUPERSEDED)
        if isinstance(error, ConfigurationError):
            code = ExitCode.CONFIGURATION
        elif isinstance(error, StorageUnavailableError):
            code = ExitCode.STORAGE_UNAVAILABLE
        else:
            code = ExitCode.OBJECTIVE_FAILED
        return cls.failed(str(error), code)

    @classmethod
    def interrupted(cls, trial_number: int, checkpoint_step: int | None) -> Outcome:
        """SIGTERM stopped the objective; the trial stays RUNNING to be run again."""
        if checkpoint_step is None:
            return cls(
                "INTERRUPTED",
                f"by SIGTERM; trial {trial_number} left RUNNING and will be run again from the start (no checkpoint)",
                ExitCode.INTERRUPTED,
            )
        return cls(
            "INTERRUPTED",
            f"step={checkpoint_step} by SIGTERM; trial {trial_number} left RUNNING and will be resumed "
            f"from checkpoint step {checkpoint_step}",
            ExitCode.INTERRUPTED,
        )


def values_from_result(result: object, n_objectives: int) -> list[float]:
    """Check what the objective returned and turn it into the values to tell.

    Args:
        result: The objective's return value.
        n_objectives: How many objectives the study has.

    Returns:
        One finite float per objective.

    Raises:
        ObjectiveError: The result is None, not numeric, NaN/inf, or has the wrong number of values.
    """
    expected = "a float" if n_objectives == 1 else f"a sequence of {n_objectives} floats"
    if result is None:
        raise ObjectiveError(f"the objective returned None; it must return {expected}")
    is_sequence = isinstance(result, Sequence) and not isinstance(result, (str, bytes))
    items: list[object] = list(result) if is_sequence else [result]  # type: ignore[call-overload]
    if len(items) != n_objectives:
        raise ObjectiveError(
            f"the objective returned {len(items)} value(s) but the study has {n_objectives} objective(s); "
            f"it must return {expected}"
        )
    values: list[float] = []
    for item in items:
        if not isinstance(item, numbers.Real) and not hasattr(item, "__float__"):
            raise ObjectiveError(f"the objective returned {item!r} ({type(item).__name__}); it must return {expected}")
        try:
            value = float(item)  # numpy and torch scalars define __float__
        except (TypeError, ValueError) as error:
            raise ObjectiveError(f"the objective returned {item!r}, which is not a number: {error}") from None
        if not math.isfinite(value):
            raise ObjectiveError(
                f"the objective returned {value} (not a finite number); a diverged run is a failed trial, "
                "return a finite value or raise optuna.TrialPruned"
            )
        values.append(value)
    return values


def describe_exception(error: BaseException) -> str:
    """One line for an exception from user code: its type, first message line and where it came from.

    Args:
        error: The exception.

    Returns:
        For example ``ValueError: boom (at train.py:42 in objective)``.
    """
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    frames = traceback.extract_tb(error.__traceback__)
    if frames:
        last = frames[-1]
        text += f" (at {Path(last.filename).name}:{last.lineno} in {last.name})"
    return text


def write_termination_message(path: str, outcome: Outcome) -> None:
    """Print the outcome's message and write it, alone, to the termination log.

    A path that cannot be written (running outside Kubernetes) is reported, not fatal: the exit code
    still tells the outcome.

    Args:
        path: The termination log, normally ``/dev/termination-log``.
        outcome: The outcome to report.
    """
    message = outcome.message
    _logger.info(message)
    data = message.encode()[:_MAX_MESSAGE_BYTES]
    try:
        with open(path, "wb") as file:
            file.write(data)
    except OSError as error:
        _logger.warning("cannot write the termination message to %s: %s", path, error)


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 3] + "..."
