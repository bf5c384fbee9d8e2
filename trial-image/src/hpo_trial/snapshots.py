"""Snapshots: a running study exported, every so many trials, to a portable SQLite file.

While a study runs, a snapshot Job runs ``hpo-transfer snapshot`` (:mod:`hpo_trial.transfer`): the
study's database is copied, trial for trial, into a file that ``optuna``, optuna-dashboard and a later
import (``hpo-transfer import --file``) read as they are, and only the newest few are kept.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from hpo_trial.bulk import CHUNK_TRIALS, TrialCopy, chunks, database_errors, write_trials
from hpo_trial.errors import ConfigurationError

__all__ = ["Snapshot", "export", "snapshot"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """A study exported to an SQLite file.

    Attributes:
        path: The file.
        taken_at: When its trials were read (UTC).
        trials: How many trials it holds.
        finished: How many of them were finished (the number in the file's name).
    """

    path: Path
    taken_at: datetime.datetime
    trials: int
    finished: int


def snapshot(storage: BaseStorage, study_name: str, directory: str | os.PathLike[str], keep: int = 3) -> Snapshot:
    """Export a study to a portable SQLite file, atomically, and keep only the ``keep`` newest of its snapshots.

    The file, ``<study>-<finished trials>-<UTC time>.db``, is an Optuna storage made by ``RDBStorage``
    (Optuna's own schema) holding one study of the same name, directions, study attributes and
    trials, every trial as it is (RUNNING ones too): ``optuna.load_study``, optuna-dashboard and
    ``hpo-transfer import --file`` read it as it is. It is written under a temporary name in the same
    directory and renamed when complete, so a reader never sees half a snapshot.

    Args:
        storage: The study's storage.
        study_name: The study.
        directory: Where snapshots go (created if missing).
        keep: How many of this study's snapshots to keep, this one included.

    Returns:
        The snapshot.

    Raises:
        ConfigurationError: No such study, or the directory cannot be written.
        StorageUnavailableError: The study's database was lost.
    """
    if keep < 1:
        raise ConfigurationError(f"keep must be at least 1, not {keep}")
    folder = Path(directory)
    stem = _file_stem(study_name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigurationError(f"cannot write snapshots to {folder}: {error.strerror}") from None
    taken = export(
        storage,
        study_name,
        folder / f".{stem}.db",
        name_file=lambda s: f"{stem}-{s.finished}-{s.taken_at:%Y%m%dT%H%M%S.%fZ}.db",
    )
    for old in _snapshots(folder, stem)[keep:]:
        old.unlink(missing_ok=True)
        _logger.info("removed the older snapshot %s", old)
    return taken


def export(
    storage: BaseStorage,
    study_name: str,
    path: str | os.PathLike[str],
    name_file: Callable[[Snapshot], str] | None = None,
) -> Snapshot:
    """Export a study to the SQLite file ``path``, atomically: the code path of snapshots and of ``kubectl hpo export``.

    The file is an Optuna storage made by ``RDBStorage`` (Optuna's own schema) holding one study of
    the same name, directions, study attributes and trials, every trial as it is (RUNNING ones
    too). It is written under a temporary name in the same directory and renamed when complete, so
    a reader never sees half a file; an existing file at ``path`` is replaced.

    Args:
        storage: The study's storage (a read-only user suffices).
        study_name: The study.
        path: The file to write.
        name_file: Names the file, in ``path``'s directory, from what was read (snapshots put the
            finished trials and the time in the name); ``path``'s own name when None.

    Returns:
        What was written.

    Raises:
        ConfigurationError: No such study, or the file cannot be written.
        StorageUnavailableError: The study's database was lost.
    """
    with database_errors("the study's database"):
        try:
            study_id = storage.get_study_id_from_name(study_name)
        except KeyError:
            raise ConfigurationError(f"study {study_name!r} does not exist in the study's database") from None
        directions = storage.get_study_directions(study_id)
        user_attrs = storage.get_study_user_attrs(study_id)
        system_attrs = storage.get_study_system_attrs(study_id)
        taken_at = datetime.datetime.now(datetime.UTC)
        trials = sorted(storage.get_all_trials(study_id, deepcopy=False), key=lambda trial: trial.number)
    target = Path(path)
    folder = target.parent
    finished = sum(trial.state.is_finished() for trial in trials)
    written = Snapshot(target, taken_at, len(trials), finished)
    if name_file is not None:
        written = Snapshot(folder / name_file(written), taken_at, len(trials), finished)
    try:
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{_file_stem(study_name)}-", suffix=".db.partial")
        os.close(handle)
    except OSError as error:
        raise ConfigurationError(f"cannot write to {folder}: {error.strerror}") from None
    try:
        _write_sqlite(Path(temporary), study_name, directions, user_attrs, system_attrs, trials)
        os.replace(temporary, written.path)
        _fsync_directory(folder)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _logger.info("%d trials of study %s written to %s", len(trials), study_name, written.path)
    return written


def _write_sqlite(
    path: Path,
    study_name: str,
    directions: Sequence[StudyDirection],
    user_attrs: Mapping[str, Any],
    system_attrs: Mapping[str, Any],
    trials: Sequence[FrozenTrial],
) -> None:
    url = f"sqlite:///{path}".replace("{", "{{").replace("}", "}}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        target = RDBStorage(url)
    try:
        study_id = target.create_new_study(list(directions), study_name)
        for key, value in user_attrs.items():
            target.set_study_user_attr(study_id, key, value)
        for key, value in system_attrs.items():
            target.set_study_system_attr(study_id, key, value)
        for chunk in chunks(trials, CHUNK_TRIALS):
            with target.engine.begin() as connection:
                write_trials(connection, study_id, [TrialCopy.verbatim(trial) for trial in chunk])
    finally:
        target.engine.dispose()
    with path.open("rb+") as file:
        os.fsync(file.fileno())


def _file_stem(study_name: str) -> str:
    """The study's name made safe for a file name (Kubernetes names already are)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", study_name) or "_"


def _snapshots(folder: Path, stem: str) -> list[Path]:
    """This study's snapshots in ``folder``, newest first (the time in the name orders them)."""
    pattern = re.compile(rf"{re.escape(stem)}-\d+-(\d{{8}}T\d{{6}}\.\d{{6}}Z)\.db")
    found = [(match[1], path) for path in folder.iterdir() if (match := pattern.fullmatch(path.name))]
    return [path for _, path in sorted(found, reverse=True)]


def _fsync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
