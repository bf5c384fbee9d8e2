"""The contract between the operator and a trial pod: what the pod is told to run, and how it answers.

This module sits at the very start of a trial pod's life: the operator has already sampled the trial
(``study.ask(fixed_distributions)``) and created the pod; the runtime parses the assignment here
before it touches the database. The operator relies on everything below; change it only together
with the protocol version.

Protocol 1
==========

Command
    ``hpo-trial [--objective module:function] [--quick-scan] [--termination-log PATH]``.

Environment
    ``HPO_STORAGE_URL``
        The study's own Optuna RDB URL as SQLAlchemy reads it, e.g.
        ``mysql+pymysql://user:pass@host:3306/db?charset=utf8mb4``, taken from a Secret through
        ``secretKeyRef``. It is used literally: the runtime escapes ``{`` and ``}`` before Optuna's
        ``RDBStorage`` formats the URL, and never logs it (it holds a password).
    ``HPO_ASSIGNMENT``
        One JSON object::

            {"protocol": 1,
             "study": "<optuna study name>",
             "trial": {"number": 7, "id": 123},
             "attempt": 0,
             "deadline_seconds": 3600,
             "sampler": {"class": "TPESampler", "kwargs": {"seed": 1}},
             "pruner": {"class": "MedianPruner", "kwargs": {"n_warmup_steps": 2}},
             "checkpoint_root": "/checkpoints",
             "objective": "my_package.train:objective",
             "heartbeat_seconds": 10}

        ``trial.id`` is the storage's trial id (``optuna.trial.Trial`` needs it); ``trial.number``
        must be that trial's number in ``study`` (the runtime checks). ``attempt`` (optional) is the
        fence: the operator keeps the attempt that may report in the trial's system attribute
        ``hpo:attempt`` and moves it on when it gives the trial to a new pod (the old one was lost);
        the runtime runs and tells only while that attribute names its own attempt (or is absent),
        and its final tell checks it under a row lock, so a superseded pod can never report.
        ``deadline_seconds`` (optional) is the attempt's time limit (the Job's
        ``activeDeadlineSeconds``): the runtime retries its final tell through a database outage,
        with backoff, until shortly before it; without one it retries until stopped. ``sampler`` and ``pruner``
        name classes in ``optuna.samplers`` and ``optuna.pruners`` with JSON keyword arguments; the
        runtime builds them so that define-by-run ``trial.suggest_*`` and ``trial.should_prune()``
        behave as the study's; a keyword argument written as ``{"class": ..., "kwargs": ...}`` is built
        the same way (``PatientPruner``'s ``wrapped_pruner``). ``sampler`` null means Optuna's default
        sampler; ``pruner`` null means no pruning (``NopPruner``). ``checkpoint_root`` (null:
        checkpoints are not kept across pods) is exported to the objective as
        ``HPO_CHECKPOINT_ROOT``. ``heartbeat_seconds`` (default 10) is how often the pod records
        the trial's heartbeat. ``pruner``, ``checkpoint_root``, ``objective``,
        ``heartbeat_seconds``, ``attempt`` and ``deadline_seconds`` may be left out. Unknown keys are
        ignored: a field that an older runtime may safely ignore can be added within protocol 1
        (``attempt`` and ``deadline_seconds`` were, later: a runtime without them neither fences
        nor retries its tell); any other change needs a new protocol number.
    ``HPO_OBJECTIVE``, ``HPO_QUICK_SCAN``, ``HPO_TERMINATION_LOG``
        Optional; the same as the flags.

Objective precedence
    ``--objective`` > ``HPO_OBJECTIVE`` > the assignment's ``objective`` > the default workload
    ``hpo_trial.workloads.digits:objective``. ``--quick-scan`` or ``HPO_QUICK_SCAN=1`` makes the
    default workload train on a small subset (it sets ``HPO_QUICK_SCAN=1`` for the objective).

What the runtime does
    Loads the study with the assignment's sampler and pruner, attaches to the existing RUNNING trial
    by id (it never asks for a new one), checks that ``hpo:attempt`` still names its ``attempt``,
    records a heartbeat every ``heartbeat_seconds`` from a daemon thread, runs the objective and
    tells the study the outcome with ``skip_if_finished=True``, under the fence and retrying through
    a database outage until the deadline. It leaves the trial RUNNING only when stopped by SIGTERM,
    when the database stays unreachable, or when superseded (for the operator to reconcile). The
    sampler's ``seed``, when there is one, is already this trial's own (the operator derives it
    from the study's seed and the trial number), so the objective's own suggestions vary from
    trial to trial yet a seeded study runs the same again.

Outcome: exit code and termination message
    One line in ``/dev/termination-log`` (``--termination-log`` / ``HPO_TERMINATION_LOG`` override
    the path), also printed to the log; its first word is the outcome:

    ====  ===========================================================  =========================
    code  termination message                                          trial state
    ====  ===========================================================  =========================
    0     ``COMPLETE value=<v>`` (``values=<v1>,<v2>`` multi-objective)  COMPLETE
    0     ``PRUNED step=<k>`` (``step=`` only if a value was reported)  PRUNED
    1     ``FAIL <reason>``: the objective raised, returned NaN/inf/    FAIL
          None or called ``sys.exit``
    2     ``FAIL <reason>``: configuration (assignment, protocol,       FAIL when the trial can
          objective path, sampler/pruner, trial mismatch)              be identified and reached
    3     ``FAIL <reason>``: the database is unreachable or was lost    RUNNING (the operator
          (after retrying the final tell until the deadline)           runs it again, free)
    4     ``SUPERSEDED <reason>``: another attempt owns the trial       unchanged (this pod
          (``hpo:attempt`` moved on); nothing was run or told          reported nothing)
    143   ``INTERRUPTED step=<k> ...``: SIGTERM; ``step`` is the latest  RUNNING
          checkpoint's, absent without one; the trial will be resumed
    ====  ===========================================================  =========================

    A FAIL's reason is also stored as the trial's system attribute ``fail_reason`` (as Optuna does). A
    trial that is already finished when the pod starts or tells (operator and pod raced) ends with
    its stored outcome: code 0 for COMPLETE or PRUNED, 1 for FAIL.

Checkpoints
    ``hpo_trial.checkpoint(trial)`` keeps them in ``<checkpoint_root>/<study>/<trial number>`` (the
    study name URL-quoted into one path component) and
    records the latest on the trial as the user attribute ``checkpoint``:
    ``{"path": "<file>", "step": <k>}``. The log lines ``checkpoint saved at step <k>`` and
    ``resumed from step <k>`` are fixed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from hpo_trial.contract import PROTOCOL_VERSION
from hpo_trial.errors import ConfigurationError

__all__ = [
    "PROTOCOL_VERSION",
    "Assignment",
    "ComponentSpec",
    "TrialRef",
    "identify_trial",
    "parse_assignment",
]


DEFAULT_HEARTBEAT_SECONDS = 10


@dataclass(frozen=True)
class ComponentSpec:
    """An Optuna sampler or pruner as the operator names it.

    Attributes:
        class_name: A class name in ``optuna.samplers`` or ``optuna.pruners``.
        kwargs: Keyword arguments for its constructor, as decoded from JSON.
    """

    class_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrialRef:
    """Which trial of which study a pod is about: enough to fail it.

    Attributes:
        study: The Optuna study name.
        number: The trial's number in the study.
        id: The storage's trial id.
    """

    study: str
    number: int
    id: int


@dataclass(frozen=True)
class Assignment:
    """A parsed, validated ``HPO_ASSIGNMENT`` (see the module docstring for the fields' meaning)."""

    trial: TrialRef
    sampler: ComponentSpec | None
    pruner: ComponentSpec | None
    checkpoint_root: str | None = None
    objective: str | None = None
    heartbeat_seconds: int = DEFAULT_HEARTBEAT_SECONDS
    protocol: int = PROTOCOL_VERSION
    attempt: int | None = None
    deadline_seconds: int | None = None


def parse_assignment(text: str) -> Assignment:
    """Parse and validate the JSON the operator put in ``HPO_ASSIGNMENT``.

    The protocol version is checked before any other field, so that an assignment of another
    protocol is reported as such rather than as a confusing field error.

    Args:
        text: The JSON text.

    Returns:
        The assignment.

    Raises:
        ConfigurationError: The text is not a protocol-1 assignment; the message says what is wrong.
    """
    raw = _load_object(text)
    protocol = raw.get("protocol")
    if not _is_int(protocol):
        raise ConfigurationError(
            f"the assignment has no valid protocol version (got {protocol!r}); this trial runtime speaks "
            f"protocol {PROTOCOL_VERSION}"
        )
    if protocol != PROTOCOL_VERSION:
        raise ConfigurationError(
            f"the assignment uses protocol {protocol} but this trial runtime speaks protocol {PROTOCOL_VERSION}; "
            f"build the trial image FROM a trial image whose runtime speaks protocol {protocol}"
        )
    heartbeat = raw.get("heartbeat_seconds", DEFAULT_HEARTBEAT_SECONDS)
    if not _is_int(heartbeat) or heartbeat < 1:
        raise ConfigurationError(f"assignment field 'heartbeat_seconds' must be a positive integer, got {heartbeat!r}")
    attempt = raw.get("attempt")
    if attempt is not None and (not _is_int(attempt) or attempt < 0):
        raise ConfigurationError(f"assignment field 'attempt' must be null or a non-negative integer, got {attempt!r}")
    deadline = raw.get("deadline_seconds")
    if deadline is not None and (not _is_int(deadline) or deadline < 1):
        raise ConfigurationError(
            f"assignment field 'deadline_seconds' must be null or a positive integer, got {deadline!r}"
        )
    return Assignment(
        trial=_trial_ref(raw),
        sampler=_component(raw, "sampler"),
        pruner=_component(raw, "pruner"),
        checkpoint_root=_optional_str(raw, "checkpoint_root"),
        objective=_optional_str(raw, "objective"),
        heartbeat_seconds=heartbeat,
        protocol=protocol,
        attempt=attempt,
        deadline_seconds=deadline,
    )


def identify_trial(text: str) -> TrialRef | None:
    """Find the study and trial in an assignment that :func:`parse_assignment` rejected.

    Lets the runtime fail the right trial even when the rest of the assignment (for example its
    protocol) is not understood.

    Args:
        text: The JSON text of ``HPO_ASSIGNMENT``.

    Returns:
        The trial, or None when the text does not name one in the protocol-1 shape.
    """
    try:
        return _trial_ref(_load_object(text))
    except ConfigurationError:
        return None


def _load_object(text: str) -> dict[str, Any]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigurationError(f"HPO_ASSIGNMENT is not valid JSON: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigurationError(f"HPO_ASSIGNMENT must be a JSON object, got {type(raw).__name__}")
    return raw


def _trial_ref(raw: dict[str, Any]) -> TrialRef:
    study = raw.get("study")
    if not isinstance(study, str) or not study:
        raise ConfigurationError(f"assignment field 'study' must be a non-empty string, got {study!r}")
    trial = raw.get("trial")
    if not isinstance(trial, dict):
        raise ConfigurationError(f"assignment field 'trial' must be an object with 'number' and 'id', got {trial!r}")
    return TrialRef(study=study, number=_non_negative_int(trial, "number"), id=_non_negative_int(trial, "id"))


def _non_negative_int(trial: dict[str, Any], key: str) -> int:
    value = trial.get(key)
    if not _is_int(value) or value < 0:
        raise ConfigurationError(f"assignment field 'trial.{key}' must be a non-negative integer, got {value!r}")
    return value


def _component(raw: dict[str, Any], key: str) -> ComponentSpec | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("class"), str) or not value["class"]:
        raise ConfigurationError(
            f'assignment field {key!r} must be null or {{"class": "<name in optuna.{key}s>", "kwargs": {{...}}}}, '
            f"got {value!r}"
        )
    kwargs = value.get("kwargs", {})
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise ConfigurationError(f"assignment field '{key}.kwargs' must be an object, got {kwargs!r}")
    return ComponentSpec(class_name=value["class"], kwargs=kwargs)


def _optional_str(raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"assignment field {key!r} must be null or a non-empty string, got {value!r}")
    return value


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
