"""Writing many finished trials into an Optuna RDB study at once: the rows, one transaction per chunk.

Shared by both directions of a transfer (:mod:`hpo_trial.transfer`): an imported study's trials go
into the study's MariaDB database, and a snapshot's into a fresh SQLite file. Optuna's own
``add_trial`` spends a transaction and a dozen statements on each trial (a 10,000-trial study took
minutes); here a chunk of trials is a handful of multi-row INSERTs on Optuna's own tables
(``optuna.storages._rdb.models``), written exactly as ``RDBStorage`` writes them, so Optuna reads
them back as it reads its own.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.distributions import distribution_to_json
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState

from hpo_trial.attach import is_connection_error, mysql_connect_args, storage_error_reason
from hpo_trial.contract import STORAGE_URL_ENV
from hpo_trial.errors import ConfigurationError, HpoTrialError, StorageUnavailableError

__all__ = [
    "CHUNK_TRIALS",
    "TrialCopy",
    "chunks",
    "database_errors",
    "marked_numbers",
    "open_study_storage",
    "utc",
    "write_trials",
]

CHUNK_TRIALS = 500
"""Trials written per transaction: a killed transfer leaves whole chunks, and a chunk is a few round trips."""

_T = TypeVar("_T")


@dataclass(frozen=True)
class TrialCopy:
    """One trial to write, and what changes on the way.

    Attributes:
        trial: The trial as read from its storage (params, values, intermediate values, user attributes).
        state: The state to write (an import turns RUNNING and WAITING into FAIL).
        datetime_complete: The completion time to write (naive local or aware, as Optuna's ``FrozenTrial`` has it).
        system_attrs: Every system attribute to write (the trial's own, plus what the transfer adds).
    """

    trial: FrozenTrial
    state: TrialState
    datetime_complete: datetime.datetime | None
    system_attrs: Mapping[str, Any]

    @classmethod
    def verbatim(cls, trial: FrozenTrial) -> TrialCopy:
        """The trial exactly as it is."""
        return cls(trial, trial.state, trial.datetime_complete, trial.system_attrs)


def utc(moment: datetime.datetime | None) -> datetime.datetime | None:
    """A ``FrozenTrial`` time as ``RDBStorage`` stores it: naive UTC (a naive time is local, as Optuna returns it)."""
    return None if moment is None else moment.astimezone(datetime.UTC).replace(tzinfo=None)


def write_trials(connection: sqlalchemy.Connection, study_id: int, copies: Sequence[TrialCopy]) -> int:
    """Append trials to a study, numbered after its existing ones, within the caller's transaction.

    The study's row is locked first (``SELECT ... FOR UPDATE``), as Optuna's ``create_new_trial`` does:
    a trial created meanwhile by another process waits, then counts these among the trials before it,
    so numbers stay what Optuna expects (a trial's number is how many of the study's trials precede it).
    A study that has no trial yet therefore keeps a source's numbers when the copies come in number order.

    Args:
        connection: A connection inside a transaction (one chunk: it commits or rolls back whole).
        study_id: The destination study.
        copies: The trials, in the order they get numbers.

    Returns:
        The number of the first copy.
    """
    trials = models.TrialModel.__table__
    studies = models.StudyModel.__table__
    connection.execute(sqlalchemy.select(studies.c.study_id).where(studies.c.study_id == study_id).with_for_update())
    first = connection.execute(
        sqlalchemy.select(sqlalchemy.func.count()).select_from(trials).where(trials.c.study_id == study_id)
    ).scalar_one()
    if not copies:
        return int(first)
    connection.execute(
        trials.insert(),
        [
            {
                "number": first + offset,
                "study_id": study_id,
                "state": copy.state,
                "datetime_start": utc(copy.trial.datetime_start),
                "datetime_complete": utc(copy.datetime_complete),
            }
            for offset, copy in enumerate(copies)
        ],
    )
    ids: dict[int, int] = {
        number: trial_id
        for number, trial_id in connection.execute(
            sqlalchemy.select(trials.c.number, trials.c.trial_id).where(
                trials.c.study_id == study_id, trials.c.number >= first, trials.c.number < first + len(copies)
            )
        )
    }
    rows: dict[sqlalchemy.Table, list[dict[str, Any]]] = {
        table: []
        for table in (
            models.TrialParamModel.__table__,
            models.TrialValueModel.__table__,
            models.TrialIntermediateValueModel.__table__,
            models.TrialUserAttributeModel.__table__,
            models.TrialSystemAttributeModel.__table__,
        )
    }
    for offset, copy in enumerate(copies):
        trial_id = ids[first + offset]
        _add_rows(rows, trial_id, copy)
    for table, table_rows in rows.items():
        if table_rows:
            connection.execute(table.insert(), table_rows)
    return int(first)


def _add_rows(rows: dict[sqlalchemy.Table, list[dict[str, Any]]], trial_id: int, copy: TrialCopy) -> None:
    """The rows of one trial's params, values, intermediate values and attributes, as ``RDBStorage`` writes them."""
    trial = copy.trial
    for name, value in trial.params.items():
        distribution = trial.distributions[name]
        rows[models.TrialParamModel.__table__].append(
            {
                "trial_id": trial_id,
                "param_name": name,
                "param_value": distribution.to_internal_repr(value),
                "distribution_json": distribution_to_json(distribution),
            }
        )
    for objective, value in enumerate(trial.values or []):
        stored, kind = models.TrialValueModel.value_to_stored_repr(value)
        rows[models.TrialValueModel.__table__].append(
            {"trial_id": trial_id, "objective": objective, "value": stored, "value_type": kind}
        )
    for step, value in trial.intermediate_values.items():
        stored, step_kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
        rows[models.TrialIntermediateValueModel.__table__].append(
            {"trial_id": trial_id, "step": step, "intermediate_value": stored, "intermediate_value_type": step_kind}
        )
    for model, attrs in (
        (models.TrialUserAttributeModel, trial.user_attrs),
        (models.TrialSystemAttributeModel, copy.system_attrs),
    ):
        rows[model.__table__].extend(
            {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()
        )


def marked_numbers(connection: sqlalchemy.Connection, study_id: int, key: str, source: str) -> set[int]:
    """The source numbers of the study's trials whose system attribute ``key`` is ``{"source": source, ...}``.

    How a transfer that ran before is recognised: each trial it wrote carries such a mark.
    """
    trials = models.TrialModel.__table__
    attrs = models.TrialSystemAttributeModel.__table__
    query = (
        sqlalchemy.select(attrs.c.value_json)
        .join(trials, trials.c.trial_id == attrs.c.trial_id)
        .where(trials.c.study_id == study_id, attrs.c.key == key)
    )
    numbers: set[int] = set()
    for (value_json,) in connection.execute(query):
        mark = json.loads(value_json)
        if isinstance(mark, dict) and mark.get("source") == source and isinstance(mark.get("number"), int):
            numbers.add(mark["number"])
    return numbers


def chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    """``items`` in slices of ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def open_study_storage(url: str) -> RDBStorage:
    """Open the study's own storage (``HPO_STORAGE_URL``), creating Optuna's tables if they are missing.

    Raises:
        ConfigurationError: The URL is malformed or its driver missing.
        StorageUnavailableError: The database cannot be reached.
    """
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("mysql+pymysql:"):
        engine_kwargs["connect_args"] = mysql_connect_args()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url.replace("{", "{{").replace("}", "}}"), engine_kwargs=engine_kwargs)
    except sqlalchemy.exc.ArgumentError:
        raise ConfigurationError(f"{STORAGE_URL_ENV} is not a valid SQLAlchemy database URL") from None
    except ImportError:
        raise ConfigurationError(f"{STORAGE_URL_ENV} needs a database driver that is not installed") from None
    except Exception as error:
        if is_connection_error(error):
            raise StorageUnavailableError(f"cannot reach the study's database: {storage_error_reason(error)}") from None
        raise ConfigurationError(f"cannot use the study's database: {storage_error_reason(error)}") from None


@contextlib.contextmanager
def database_errors(what: str) -> Iterator[None]:
    """Turn the loss of a database inside the block into :class:`StorageUnavailableError`."""
    try:
        yield
    except HpoTrialError:
        raise
    except Exception as error:
        if is_connection_error(error):
            raise StorageUnavailableError(
                f"lost {what}: {storage_error_reason(error)}; run again: the transfer resumes where it stopped"
            ) from error
        raise
