"""The trial pod's main sequence: parse the assignment, attach to the trial, run the objective, tell.

This is the whole life of a trial pod after the operator has asked the study for a trial and created
the pod. Each step's details live in its own module (:mod:`hpo_trial.assignment`,
:mod:`hpo_trial.attach`, :mod:`hpo_trial.objective`, :mod:`hpo_trial.heartbeat`,
:mod:`hpo_trial.interrupt`, :mod:`hpo_trial.outcome`); this module decides which outcome each
situation ends in. The contract it implements is documented in :mod:`hpo_trial.assignment`.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from hpo_trial import attach
from hpo_trial.assignment import Assignment, identify_trial, parse_assignment
from hpo_trial.checkpoint import checkpoint_directory, latest_step
from hpo_trial.contract import CHECKPOINT_ROOT_ENV, FAIL_REASON_ATTR, NODE_NAME_ENV, POD_NAME_ENV, QUICK_SCAN_ENV
from hpo_trial.errors import ConfigurationError, HpoTrialError, ObjectiveError, StorageUnavailableError
from hpo_trial.heartbeat import Heartbeat
from hpo_trial.interrupt import Interrupted, SignalGuard
from hpo_trial.objective import choose_objective, load_objective
from hpo_trial.outcome import ExitCode, Outcome, describe_exception, values_from_result

__all__ = ["QUICK_SCAN_ENV", "Settings", "run"]

_logger = logging.getLogger(__name__)

TELL_RETRY_FIRST_SECONDS = 1.0
TELL_RETRY_MAX_SECONDS = 30.0
DEADLINE_MARGIN_SECONDS = 15.0
"""The final tell gives up this long before the attempt's deadline, so the pod exits 3 (a free requeue)
rather than being killed by Kubernetes at the deadline (a crash)."""


@dataclass(frozen=True)
class Settings:
    """What the pod was started with: the environment and the command-line flags, merged.

    Attributes:
        storage_url: ``HPO_STORAGE_URL``.
        assignment: ``HPO_ASSIGNMENT`` (JSON text).
        objective_flag: ``--objective``.
        objective_env: ``HPO_OBJECTIVE``.
        quick_scan: ``--quick-scan`` or ``HPO_QUICK_SCAN=1``.
        started: When the pod's process started (``time.monotonic``); the attempt's deadline counts from it.
    """

    storage_url: str | None
    assignment: str | None
    objective_flag: str | None = None
    objective_env: str | None = None
    quick_scan: bool = False
    started: float = field(default_factory=time.monotonic)


def run(settings: Settings, guard: SignalGuard) -> Outcome:
    """Run the assigned trial to an outcome.

    Args:
        settings: The pod's settings.
        guard: The active signal guard (SIGTERM raises :class:`Interrupted` through it).

    Returns:
        How the trial ended; the caller reports it.
    """
    if not settings.storage_url:
        return Outcome.from_error(ConfigurationError("HPO_STORAGE_URL is not set; the operator sets it from a Secret"))
    if not settings.assignment:
        return Outcome.from_error(ConfigurationError("HPO_ASSIGNMENT is not set; the operator passes the trial in it"))
    try:
        assignment = parse_assignment(settings.assignment)
    except ConfigurationError as error:
        ref = identify_trial(settings.assignment)
        if ref is not None:
            try:
                storage = attach.open_storage(settings.storage_url, 10)
            except HpoTrialError as storage_error:
                _logger.warning("cannot mark the trial FAIL: %s", storage_error)
            else:
                attach.fail_trial(storage, ref, str(error))
        return Outcome.from_error(error)
    try:
        storage = attach.open_storage(settings.storage_url, assignment.heartbeat_seconds)
    except HpoTrialError as error:
        return Outcome.from_error(error)
    try:
        return _run_assigned(storage, assignment, settings, guard)
    except HpoTrialError as error:
        return Outcome.from_error(error)
    except Interrupted:
        return _interrupted(assignment)
    finally:
        storage.engine.dispose()


def _run_assigned(storage: RDBStorage, assignment: Assignment, settings: Settings, guard: SignalGuard) -> Outcome:
    ref = assignment.trial
    objective_path = choose_objective(settings.objective_flag, settings.objective_env, assignment.objective)
    try:
        sampler = attach.build_sampler(assignment.sampler)
        pruner = attach.build_pruner(assignment.pruner)
    except ConfigurationError as error:
        attach.fail_trial(storage, ref, str(error), assignment.attempt)
        raise
    study = attach.load_study(storage, ref.study, sampler, pruner)
    stored = attach.attach_trial(storage, study, ref)
    if stored.state.is_finished():
        return _already_finished(stored, "nothing was run")
    attach.check_attempt(storage, ref, assignment.attempt)
    if stored.state != TrialState.RUNNING:
        raise ConfigurationError(f"trial {ref.number} is {stored.state.name}, not RUNNING: the operator did not ask it")
    if node := os.environ.get(NODE_NAME_ENV):  # set by the operator's Job (Downward API); absent when run by hand
        attach.record_placement(storage, ref, assignment.attempt, os.environ.get(POD_NAME_ENV, ""), node)
    _logger.info(
        "study %r trial %d (id %d): objective %s, sampler %s, pruner %s, assigned parameters %s",
        ref.study,
        ref.number,
        ref.id,
        objective_path,
        type(study.sampler).__name__,
        type(pruner).__name__,
        stored.params,
    )
    try:
        objective = load_objective(objective_path)
    except ConfigurationError as error:
        attach.fail_trial(storage, ref, str(error), assignment.attempt)
        raise
    if assignment.checkpoint_root is not None:
        os.environ[CHECKPOINT_ROOT_ENV] = assignment.checkpoint_root
    if settings.quick_scan:
        os.environ[QUICK_SCAN_ENV] = "1"

    # The operator declares parameters with its own ranges; the objective's suggest_* calls name the
    # same parameters with the objective's defaults. Optuna warns about every such pair; here it is by design.
    warnings.filterwarnings("ignore", message="Inconsistent parameter values for distribution", category=RuntimeWarning)

    state, values, reason = TrialState.FAIL, None, None
    with Heartbeat(storage, ref.id, assignment.heartbeat_seconds):
        trial = optuna.trial.Trial(study, ref.id)
        try:
            result = objective(trial)
            values = values_from_result(result, len(study.directions))
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except ObjectiveError as error:
            reason = f"objective {objective_path}: {error}"
        except Exception as error:
            attach.raise_if_connection_error(error)
            reason = f"objective {objective_path} raised {describe_exception(error)}"
            _logger.error("%s\n%s", reason, "".join(traceback.format_exception(error)).rstrip())
        except SystemExit as error:  # exiting here would leave the trial RUNNING
            reason = f"objective {objective_path} called sys.exit({error.code!r}) instead of returning a value"
        guard.defer()
        deadline = (
            None
            if assignment.deadline_seconds is None
            else (settings.started + assignment.deadline_seconds - DEADLINE_MARGIN_SECONDS)
        )
        told = _tell_until(deadline, guard, lambda: _fenced_tell(study, storage, assignment, state, values, reason))
    if told.state != state:
        _logger.warning(
            "trial %d was already %s when this pod told %s; the stored outcome stands",
            ref.number,
            told.state.name,
            state.name,
        )
        return _already_finished(told, "this pod's result was not recorded")
    return _stored_outcome(told, reason)


def _fenced_tell(
    study: optuna.Study,
    storage: RDBStorage,
    assignment: Assignment,
    state: TrialState,
    values: list[float] | None,
    reason: str | None,
) -> FrozenTrial:
    with attach.fence(storage, assignment.trial, assignment.attempt):
        return attach.tell(study, storage, assignment.trial.id, state, values, reason)


def _tell_until(deadline: float | None, guard: SignalGuard, tell: Callable[[], FrozenTrial]) -> FrozenTrial:
    """Tell the outcome, retrying with backoff through a database outage until ``deadline`` (monotonic).

    A result computed while the database is away is not lost: the pod keeps it and tries again,
    1 s, 2 s, 4 s ... at most 30 s apart. Without a deadline it tries until the pod is stopped (a stop
    signal ends the retries; the trial then stays RUNNING, to be run again).

    Raises:
        StorageUnavailableError: The database did not come back in time.
        SupersededError: The operator gave the trial to another attempt meanwhile.
    """
    delay, failures = TELL_RETRY_FIRST_SECONDS, 0
    while True:
        try:
            told = tell()
        except StorageUnavailableError as error:
            now = time.monotonic()
            if guard.received is not None or (deadline is not None and now + delay > deadline):
                raise
            if failures == 0:
                left = "until the pod is stopped" if deadline is None else f"for {max(0, deadline - now):.0f}s"
                _logger.warning("cannot record the outcome yet (%s); retrying %s", error, left)
            failures += 1
            _sleep(delay, guard)
            delay = min(delay * 2, TELL_RETRY_MAX_SECONDS)
            continue
        if failures:
            _logger.info("outcome recorded after %d failed attempt(s)", failures)
        return told


def _sleep(seconds: float, guard: SignalGuard) -> None:
    """Sleep, waking early when a stop signal arrives (the guard only notes it once the outcome is being told)."""
    end = time.monotonic() + seconds
    while guard.received is None and (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.2))


def _already_finished(trial: FrozenTrial, consequence: str) -> Outcome:
    """The outcome of a trial someone else (the operator, an earlier pod) finished first."""
    stored_reason = trial.system_attrs.get(FAIL_REASON_ATTR, "no reason recorded")
    note = f"(trial {trial.number} was already {trial.state.name}; {consequence})"
    if trial.state == TrialState.FAIL:
        return Outcome.failed(f"trial {trial.number} was already FAIL ({consequence}): {stored_reason}")
    return _stored_outcome(trial, None, note)


def _stored_outcome(trial: FrozenTrial, reason: str | None, note: str = "") -> Outcome:
    if trial.state == TrialState.COMPLETE:
        assert trial.values is not None
        return Outcome.complete(trial.values, note)
    if trial.state == TrialState.PRUNED:
        return Outcome.pruned(trial.last_step, note)
    if trial.state == TrialState.FAIL:
        return Outcome.failed(reason or trial.system_attrs.get(FAIL_REASON_ATTR, "the trial failed"))
    return Outcome.failed(
        f"trial {trial.number} is still {trial.state.name} after telling its outcome", ExitCode.STORAGE_UNAVAILABLE
    )


def _interrupted(assignment: Assignment) -> Outcome:
    """SIGTERM: the trial stays RUNNING; report the checkpoint step the next pod will resume from."""
    root = os.environ.get(CHECKPOINT_ROOT_ENV) or None
    ref = assignment.trial
    step = None if root is None else latest_step(checkpoint_directory(root, ref.study, ref.number))
    return Outcome.interrupted(ref.number, step)
