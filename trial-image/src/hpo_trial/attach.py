"""Attaching a trial pod to its study and trial in Optuna's storage, and telling the study the outcome.

Second step of a trial pod's life, after the assignment is parsed: connect to the study's database,
build the study's sampler and pruner (they are not stored in the database, so every process must
build identical ones), load the study and attach to the RUNNING trial the operator asked for, by id.
The last step, telling the outcome, is here too because it shares the storage handling.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import optuna
import optuna.storages._cached_storage
import optuna.storages._rdb.models
import optuna.storages._rdb.storage
import pymysql
import sqlalchemy
import sqlalchemy.exc
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from hpo_trial.assignment import ComponentSpec, TrialRef
from hpo_trial.contract import ATTEMPT_ATTR, FAIL_REASON_ATTR, PLACEMENT_ATTR
from hpo_trial.errors import ConfigurationError, StorageUnavailableError, SupersededError

__all__ = [
    "FAIL_REASON_ATTR",
    "attach_trial",
    "build_pruner",
    "build_sampler",
    "check_attempt",
    "fail_trial",
    "fence",
    "is_connection_error",
    "load_study",
    "mysql_connect_args",
    "mysql_error_code",
    "open_storage",
    "raise_if_connection_error",
    "record_placement",
    "storage_error_reason",
    "tell",
]

_logger = logging.getLogger(__name__)

POOL_RECYCLE_SECONDS = 280
"""Below any sane server ``wait_timeout``, so pooled connections are renewed before the server drops them."""
CONNECT_TIMEOUT_SECONDS = 10
READ_WRITE_TIMEOUT_SECONDS = 120

# MySQL/MariaDB errors that mean the server cannot be used at all, as opposed to one failed statement.
_CONNECTION_ERROR_CODES = frozenset(
    {1040, 1044, 1045, 1049, 1053, 1698, 1927, 2002, 2003, 2005, 2006, 2012, 2013, 2026, 2055, 4031}
)


def open_storage(url: str, heartbeat_seconds: int) -> RDBStorage:
    """Connect to the study's database.

    Args:
        url: The study's storage URL, used literally (braces are escaped for Optuna's formatting).
        heartbeat_seconds: The heartbeat interval the storage is configured with.

    Returns:
        The storage.

    Raises:
        StorageUnavailableError: The database cannot be reached or refuses the credentials.
        ConfigurationError: The URL is malformed, its driver is missing or the schema is incompatible.
    """
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_recycle": POOL_RECYCLE_SECONDS}
    if url.startswith("mysql+pymysql:"):
        engine_kwargs["connect_args"] = mysql_connect_args()
    try:
        with warnings.catch_warnings(), _without_version_manager():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = RDBStorage(
                url.replace("{", "{{").replace("}", "}}"),
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_seconds,
                # The operator made the tables and checked their version: every pod's start skips
                # that round of schema queries.
                skip_compatibility_check=True,
                skip_table_creation=True,
            )
        with storage.engine.connect():  # a database that cannot be used is found here, not mid-objective
            return storage
    except sqlalchemy.exc.ArgumentError:
        raise ConfigurationError("HPO_STORAGE_URL is not a valid SQLAlchemy database URL") from None
    except ModuleNotFoundError as error:
        raise ConfigurationError(f"HPO_STORAGE_URL needs a database driver that is not installed: {error}") from None
    except Exception as error:
        if is_connection_error(error):
            raise StorageUnavailableError(
                f"cannot reach the study's database: {storage_error_reason(error)}; the trial stays RUNNING "
                "for the operator to retry"
            ) from error
        raise ConfigurationError(f"cannot use the study's database: {storage_error_reason(error)}") from error


def mysql_connect_args() -> dict[str, Any]:
    """PyMySQL's connection arguments for any database the runtime opens: bounded waits, no clear-text password.

    Used for the study's own storage and for a study imported from another MySQL server
    (:mod:`hpo_trial.sources`).
    """
    return {
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "read_timeout": READ_WRITE_TIMEOUT_SECONDS,
        "write_timeout": READ_WRITE_TIMEOUT_SECONDS,
        "auth_plugin_map": {"mysql_clear_password": _RefuseCleartext, "dialog": _RefuseCleartext},
    }


class _RefuseCleartext:
    """A PyMySQL auth-plugin handler: the study's password is never sent in clear text.

    PyMySQL answers a server's ``mysql_clear_password`` (or ``dialog``) request with the bare password.
    """

    def __init__(self, connection: object) -> None:
        pass

    def authenticate(self, _packet: object) -> None:
        raise pymysql.err.OperationalError(2059, "the server asked for the password in clear text; refused")


class _SchemaCheckedByOperator:
    """Stands in for Optuna's ``_VersionManager`` while a trial pod opens its storage (see below)."""

    def __init__(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _without_version_manager() -> Iterator[None]:
    """Let ``RDBStorage`` be built without Optuna's schema-version manager.

    Even with ``skip_compatibility_check``, ``RDBStorage.__init__`` builds a ``_VersionManager``,
    which imports alembic and queries the version tables: about 0.4 s of CPU in every trial pod, a
    fifth of its whole cost, when a study's pods start by the hundred. The operator created the schema
    and checked its version before asking this trial; the runtime never calls the storage's version
    methods (``upgrade``, ``get_*_version``), the only users of the manager. Pods open their storage
    before any other thread runs, so swapping the module's name for the construction is safe. Should a
    later Optuna rename the class, the storage is built the stock way, and the runtime's test that
    opening the storage imports no alembic says so.
    """
    module = optuna.storages._rdb.storage
    original = getattr(module, "_VersionManager", None)
    if original is None:
        yield
        return
    module._VersionManager = _SchemaCheckedByOperator  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        module._VersionManager = original  # type: ignore[misc]


def build_sampler(spec: ComponentSpec | None) -> optuna.samplers.BaseSampler | None:
    """Build the study's sampler, or None for Optuna's default, from the assignment.

    Raises:
        ConfigurationError: The class is not an Optuna sampler, or rejects the keyword arguments.
    """
    if spec is None:
        return None
    sampler = _build(spec.class_name, spec.kwargs, optuna.samplers, optuna.samplers.BaseSampler)
    assert isinstance(sampler, optuna.samplers.BaseSampler)
    return sampler


def build_pruner(spec: ComponentSpec | None) -> optuna.pruners.BasePruner:
    """Build the study's pruner from the assignment; None means no pruning.

    Raises:
        ConfigurationError: The class is not an Optuna pruner, or rejects the keyword arguments.
    """
    if spec is None:
        return optuna.pruners.NopPruner()
    pruner = _build(spec.class_name, spec.kwargs, optuna.pruners, optuna.pruners.BasePruner)
    assert isinstance(pruner, optuna.pruners.BasePruner)
    return pruner


def _build(class_name: str, kwargs: dict[str, Any], module: Any, base: type) -> object:
    """Instantiate ``module.<class_name>(**kwargs)``.

    A keyword argument written as ``{"class": ..., "kwargs": ...}`` is built the same way from the same
    module, so wrappers such as ``PatientPruner(wrapped_pruner=...)`` can be expressed in JSON.
    """
    kind = module.__name__
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigurationError(f"{class_name!r} is not a class in {kind}; use a name from {kind}.__all__")
    built = {
        key: _build(value["class"], value.get("kwargs") or {}, module, base)
        if isinstance(value, dict) and set(value) <= {"class", "kwargs"} and isinstance(value.get("class"), str)
        else value
        for key, value in kwargs.items()
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return cls(**built)
    except Exception as error:
        raise ConfigurationError(f"cannot build {kind}.{class_name}(**{kwargs!r}): {error}") from None


def load_study(
    storage: RDBStorage,
    study_name: str,
    sampler: optuna.samplers.BaseSampler | None,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """Load the study the trial belongs to.

    Raises:
        ConfigurationError: The study does not exist in this database.
        StorageUnavailableError: The database was lost.
    """
    try:
        return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise ConfigurationError(f"study {study_name!r} does not exist in the study's database") from None
    except Exception as error:
        raise_if_connection_error(error)
        raise


def _prime_trial_cache(study: optuna.Study, trial: FrozenTrial) -> None:
    """Put the pod's trial into Optuna's in-process trial cache, as asking for it would have.

    Optuna 5's ``_CachedStorage`` learns a trial when the process asks for it or reads the study's
    trials. A pod does neither (it attaches to its trial by id), so with a sampler that reads no
    history (random, QMC, CMA-ES's independent sampler) the objective's first suggestion of a
    parameter the operator did not declare raised ``KeyError`` in ``set_trial_param``. This adds the
    one trial the way ``create_new_trial`` does (an unfinished trial is still read from the database
    each time), without reading the study's other trials (``tests/trial_runtime/test_seeds.py``).
    """
    storage = study._storage
    studies = getattr(storage, "_studies", None)
    add = getattr(storage, "_add_trials_to_cache", None)
    if not isinstance(studies, dict) or add is None:
        return  # another storage, or an Optuna that no longer needs it
    with storage._lock:  # type: ignore[attr-defined]
        studies.setdefault(study._study_id, optuna.storages._cached_storage._StudyInfo())
        if trial.number not in studies[study._study_id].trials:
            add(study._study_id, [trial])


def attach_trial(storage: RDBStorage, study: optuna.Study, ref: TrialRef) -> FrozenTrial:
    """Check that the assigned trial is the study's trial of that number, and read it.

    Raises:
        ConfigurationError: The study has no such trial, or the number and id disagree.
        StorageUnavailableError: The database was lost.
    """
    try:
        study_id = storage.get_study_id_from_name(study.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, ref.number)
        if trial_id != ref.id:
            raise ConfigurationError(
                f"the assignment names trial number {ref.number} with id {ref.id}, but in study {ref.study!r} "
                f"trial {ref.number} has id {trial_id}"
            )
        stored = storage.get_trial(trial_id)
        _prime_trial_cache(study, stored)
        return stored
    except KeyError:
        raise ConfigurationError(f"study {ref.study!r} has no trial number {ref.number}") from None
    except ConfigurationError:
        raise
    except Exception as error:
        raise_if_connection_error(error)
        raise


FENCE_WAIT_TIMEOUT_SECONDS = 2 * READ_WRITE_TIMEOUT_SECONDS
"""How long MySQL keeps the fence's connection (and its row lock) if this pod vanishes mid-tell."""


def _attempt_query(trial_id: int) -> sqlalchemy.Select[Any]:
    model = optuna.storages._rdb.models.TrialSystemAttributeModel
    return sqlalchemy.select(model.value_json).where(model.trial_id == trial_id, model.key == ATTEMPT_ATTR)


def _superseded(ref: TrialRef, attempt: int, current: object) -> SupersededError:
    return SupersededError(
        f"trial {ref.number} belongs to attempt {current} now, not to this pod's attempt {attempt} (the operator "
        "thought this pod lost and ran the trial again); this pod reports nothing"
    )


def check_attempt(storage: RDBStorage, ref: TrialRef, attempt: int | None) -> None:
    """Refuse to run when the operator has given the trial to another attempt (no fence: always fine).

    Raises:
        SupersededError: The trial's ``hpo:attempt`` names another attempt.
        StorageUnavailableError: The database was lost.
    """
    if attempt is None:
        return
    try:
        with storage.engine.connect() as connection:
            stored = connection.execute(_attempt_query(ref.id)).scalar()
    except Exception as error:
        raise_if_connection_error(error)
        raise
    current = json.loads(stored) if stored is not None else None
    if current is not None and current != attempt:
        raise _superseded(ref, attempt, current)


def record_placement(storage: RDBStorage, ref: TrialRef, attempt: int | None, pod: str, node: str) -> None:
    """Record where this attempt runs (``hpo:placement``): its pod and node, kept after both are gone.

    Best effort: where it ran is for people (``kubectl hpo trials``), never a reason to fail the
    trial; a lost database is still raised, as everywhere else.
    """
    placement: dict[str, int | str] = {"attempt": attempt or 0, "pod": pod, "node": node}
    try:
        storage.set_trial_system_attr(ref.id, PLACEMENT_ATTR, placement)
    except Exception as error:
        raise_if_connection_error(error)
        _logger.warning("could not record trial %d's placement: %s", ref.number, storage_error_reason(error))


@contextlib.contextmanager
def fence(storage: RDBStorage, ref: TrialRef, attempt: int | None) -> Iterator[None]:
    """Hold the trial's ``hpo:attempt`` row locked (``SELECT ... FOR UPDATE``) while the body tells the outcome.

    The operator moves the attribute on before it gives the trial to a new pod, with a plain UPDATE of
    that row, which waits for this lock: either this pod's tell lands first (and the operator sees the
    trial finished), or the attribute names another attempt and this pod tells nothing. (The
    operator must not write it through Optuna's upsert: its foreign-key check would share-lock the
    trial's row, which the tell needs, and the two would wait for each other.) The lock is held on a connection
    of its own, for as long as the tell takes; should this pod vanish meanwhile, MySQL drops the
    connection, and the lock, after `FENCE_WAIT_TIMEOUT_SECONDS`.

    Raises:
        SupersededError: The trial's ``hpo:attempt`` names another attempt.
        StorageUnavailableError: The database was lost.
    """
    if attempt is None:
        yield
        return
    try:
        connection = storage.engine.connect()
    except Exception as error:
        raise_if_connection_error(error)
        raise
    with connection:
        try:
            query = _attempt_query(ref.id)
            if connection.dialect.name != "sqlite":
                # Lock the one row and no gap of the index around it: under REPEATABLE READ the lock would
                # cover the gap where the tell inserts this trial's `fail_reason`, and the tell, on another
                # connection of this very pod, would wait for it until MySQL's lock wait timeout.
                connection = connection.execution_options(isolation_level="READ COMMITTED")
            transaction = connection.begin()
            if connection.dialect.name == "mysql":
                connection.exec_driver_sql(f"SET SESSION wait_timeout = {FENCE_WAIT_TIMEOUT_SECONDS}")
            stored = connection.execute(query).scalar()
            if stored is not None and connection.dialect.name != "sqlite":
                # Lock the row only where it exists: locking a missing one would lock a gap of the index,
                # and the operator's first write of the attribute (an insert) would then wait for the tell.
                stored = connection.execute(query.with_for_update()).scalar()
        except Exception as error:
            raise_if_connection_error(error)
            raise
        with transaction:
            current = json.loads(stored) if stored is not None else None
            if current is not None and current != attempt:
                raise _superseded(ref, attempt, current)
            yield


def fail_trial(storage: RDBStorage, ref: TrialRef, reason: str, attempt: int | None = None) -> None:
    """Mark the trial FAIL with a reason, when it cannot be run at all (best effort).

    Used for configuration errors found after the storage is open: the trial is identified but its
    sampler, pruner or objective cannot be built. Failures to do so are logged, not raised: the exit
    code still tells the operator.
    """
    try:
        study = optuna.load_study(study_name=ref.study, storage=storage, sampler=optuna.samplers.RandomSampler())
        attach_trial(storage, study, ref)
        with fence(storage, ref, attempt):
            tell(study, storage, ref.id, TrialState.FAIL, None, reason)
    except Exception as error:  # the error being reported matters more than this one
        _logger.warning("could not mark trial %d FAIL: %s", ref.number, storage_error_reason(error))


def tell(
    study: optuna.Study,
    storage: RDBStorage,
    trial_id: int,
    state: TrialState,
    values: Sequence[float] | None,
    reason: str | None = None,
) -> FrozenTrial:
    """Tell the study how the trial ended and return the trial as stored afterwards.

    Uses ``skip_if_finished=True``: if the operator finished the trial first, the stored state wins
    and the caller sees it in the returned trial. A sampler that raises after the state is stored
    (GridSampler on the last grid point) is logged, not fatal.

    Args:
        study: The study.
        storage: The study's storage (read directly, past the study's cache).
        trial_id: The storage's trial id.
        state: COMPLETE, PRUNED or FAIL.
        values: The values for COMPLETE, else None.
        reason: For FAIL, the one-line reason, stored as the system attribute ``fail_reason``.

    Returns:
        The trial as stored after telling.

    Raises:
        StorageUnavailableError: The database was lost.
    """
    try:
        stored = storage.get_trial(trial_id)
        if reason is not None and not stored.state.is_finished():
            storage.set_trial_system_attr(trial_id, FAIL_REASON_ATTR, reason)
        study.tell(stored.number, values, state=state, skip_if_finished=True)
    except Exception as error:
        raise_if_connection_error(error)
        _logger.warning("telling the study raised %s: %s", type(error).__name__, storage_error_reason(error))
    try:
        return storage.get_trial(trial_id)
    except Exception as error:
        raise_if_connection_error(error)
        raise


def is_connection_error(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) means the database cannot be used at all.

    Optuna wraps database errors in ``StorageInternalError``; the cause chain is searched.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (sqlalchemy.exc.InterfaceError, sqlalchemy.exc.DisconnectionError, ConnectionError)):
            return True
        if isinstance(current, sqlalchemy.exc.TimeoutError):  # the connection pool's
            return True
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        code = mysql_error_code(current)
        if code is not None and code in _CONNECTION_ERROR_CODES:
            return True
        current = current.__cause__ or current.__context__
    return False


def storage_error_reason(error: BaseException) -> str:
    """A one-line description of a database error: the driver's own message, without SQL or URL."""
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.orig is not None:
            return " ".join(str(arg) for arg in current.orig.args) or type(current.orig).__name__
        current = current.__cause__ or current.__context__
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def raise_if_connection_error(error: Exception) -> None:
    """Raise :class:`StorageUnavailableError` from ``error`` if it means the database was lost."""
    if is_connection_error(error):
        raise StorageUnavailableError(
            f"lost the connection to the study's database: {storage_error_reason(error)}; the trial stays "
            "RUNNING for the operator to retry or fail"
        ) from error


def mysql_error_code(error: BaseException) -> int | None:
    """The MySQL error number of a driver error (pymysql puts it first in ``args``)."""
    orig = error.orig if isinstance(error, sqlalchemy.exc.DBAPIError) else error
    if type(orig).__module__.startswith("pymysql") and orig is not None and orig.args and isinstance(orig.args[0], int):
        return orig.args[0]
    return None
