"""Opening a study to import: the Optuna storage a Slurm-era study lives in, a file or a database.

First step of an import (``hpo-transfer import``, :mod:`hpo_trial.transfer`), before the new study
runs any trial: find out what the user pointed at (an SQLite file, an Optuna journal file, a database
URL), open it for reading only, and choose the study to import. Every error names the spec's field
to fix; none ever quotes the URL or its password.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import optuna
import sqlalchemy
import sqlalchemy.engine
import sqlalchemy.exc
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from hpo_trial.attach import is_connection_error, mysql_connect_args, mysql_error_code, storage_error_reason
from hpo_trial.errors import SpecError, StorageUnavailableError

__all__ = [
    "PATH_FIELD",
    "STUDY_NAME_FIELD",
    "URL_FIELD",
    "SourceStudy",
    "open_source",
]

_logger = logging.getLogger(__name__)

PATH_FIELD = "spec.importFrom.path"
URL_FIELD = "spec.importFrom.urlSecret"
STUDY_NAME_FIELD = "spec.importFrom.studyName"

SQLITE_HEADER = b"SQLite format 3\0"
_OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})
_MAX_NAMES_SHOWN = 20
# MySQL errors that a retry cannot fix: the user's URL or Secret is wrong (denied, unknown database,
# a server that wants the password in clear text).
_SOURCE_USER_ERROR_CODES = frozenset({1044, 1045, 1049, 1698, 2059})


@dataclass(frozen=True)
class SourceStudy:
    """A study to import, open for reading.

    Attributes:
        storage: Its Optuna storage (RDB or journal).
        study_id: The study's id in that storage.
        name: The study's name there.
        directions: Its optimisation directions.
        where: Where it lives, for messages: a file path, or ``<backend> database <db> on <host>`` (never
            the URL: it may hold a password).
        field: The spec's field that names it (``spec.importFrom.path`` or ``spec.importFrom.urlSecret``).
    """

    storage: BaseStorage
    study_id: int
    name: str
    directions: tuple[StudyDirection, ...]
    where: str
    field: str

    @functools.cached_property
    def trials(self) -> list[FrozenTrial]:
        """The study's trials in number order, read once (one query for an RDB storage, no copies).

        Raises:
            StorageUnavailableError: The source database was lost.
            SpecError: The source cannot be read as an Optuna storage.
        """
        try:
            trials = self.storage.get_all_trials(self.study_id, deepcopy=False)
        except Exception as error:
            _raise_source_error(error, self.field, self.where)
            raise
        return sorted(trials, key=lambda trial: trial.number)

    def close(self) -> None:
        """Release the storage's connections (an RDB storage's pool; a journal file holds none)."""
        if isinstance(self.storage, RDBStorage):
            self.storage.engine.dispose()


def open_source(*, path: str | None = None, url: str | None = None, study_name: str | None = None) -> SourceStudy:
    """Open the storage of a study to import and choose the study.

    Exactly one of ``path`` and ``url`` is given. A file is an SQLite database when it starts with
    SQLite's header (opened read-only) and otherwise must be an Optuna journal file
    (``JournalFileBackend``). A URL is opened as SQLAlchemy reads it; ``mysql://`` uses PyMySQL, which
    refuses to send the password in clear text.

    Args:
        path: A file in the import Job (``spec.importFrom.path``).
        url: A database URL (from the Secret ``spec.importFrom.urlSecret``).
        study_name: The study to import; without it, the storage must hold exactly one study.

    Returns:
        The chosen study, open for reading.

    Raises:
        SpecError: Nothing to open, not an Optuna storage, or no such study (the message names the field).
        StorageUnavailableError: The source database cannot be reached now (a retry may succeed).
    """
    if (path is None) == (url is None):
        raise SpecError("spec.importFrom", "name either a file (path) or a database (urlSecret) to import, not both")
    if path is not None:
        storage, where, field = _open_file(path), path, PATH_FIELD
    else:
        assert url is not None
        storage, where = _open_url(url)
        field = URL_FIELD
    try:
        studies = storage.get_all_studies()
    except Exception as error:
        _close(storage)
        _raise_source_error(error, field, where)
        raise
    names = sorted(study.study_name for study in studies)
    if study_name is not None:
        chosen = [study for study in studies if study.study_name == study_name]
        if not chosen:
            _close(storage)
            held = f"it holds {_names(names)}" if names else "it holds no study"
            raise SpecError(STUDY_NAME_FIELD, f"no study {study_name!r} in {where}; {held}")
    elif len(studies) == 1:
        chosen = studies
    elif not studies:
        _close(storage)
        raise SpecError(field, f"{where} holds no Optuna study")
    else:
        _close(storage)
        raise SpecError(
            STUDY_NAME_FIELD, f"{where} holds {len(names)} studies ({_names(names)}); name the one to import"
        )
    study = chosen[0]
    return SourceStudy(storage, study._study_id, study.study_name, tuple(study.directions), where, field)


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:_MAX_NAMES_SHOWN])
    more = len(names) - _MAX_NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def _open_file(path: str) -> BaseStorage:
    """An SQLite database (read-only) or an Optuna journal file; anything else is refused."""
    file = Path(path)
    if not file.is_file():
        problem = "is a directory" if file.is_dir() else "does not exist"
        raise SpecError(PATH_FIELD, f"{path} {problem} in the import Job (is its volume mounted at that path?)")
    try:
        with file.open("rb") as handle:
            head = handle.read(len(SQLITE_HEADER))
            handle.seek(0)
            first_line = handle.readline(1 << 20)
    except OSError as error:
        raise SpecError(PATH_FIELD, f"cannot read {path}: {error.strerror}") from None
    if head == SQLITE_HEADER:
        return _open_sqlite(file)
    if _is_journal_line(first_line):
        try:
            return JournalStorage(JournalFileBackend(str(file)))
        except Exception as error:
            raise SpecError(
                PATH_FIELD, f"{path} looks like an Optuna journal file but cannot be read: {error}"
            ) from None
    raise SpecError(
        PATH_FIELD, f"{path} is not an Optuna storage (neither an SQLite database nor an Optuna journal file)"
    )


def _is_journal_line(line: bytes) -> bool:
    """Whether ``line`` is the first record of an Optuna journal (a JSON object with an ``op_code``)."""
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "op_code" in record


def _open_sqlite(file: Path) -> RDBStorage:
    """Open an SQLite file through a read-only URI: the user's file is never written, even by mistake."""
    uri = f"file:{quote(str(file.resolve()))}?mode=ro"
    try:
        with sqlite3.connect(uri, uri=True) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as error:
        raise SpecError(PATH_FIELD, f"{file} is not an Optuna storage (SQLite cannot read it: {error})") from None
    if not tables >= _OPTUNA_TABLES:
        raise SpecError(PATH_FIELD, f"{file} is an SQLite database but not an Optuna storage (no Optuna tables)")
    url = f"sqlite:///{uri}&uri=true"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url.replace("{", "{{").replace("}", "}}"), skip_table_creation=True)
    except RuntimeError as error:  # Optuna's schema-version check
        raise SpecError(
            PATH_FIELD,
            f"{file} was written by an Optuna whose schema this one cannot read ({error}); upgrade a copy with "
            "`optuna storage upgrade --storage sqlite:///<copy>` and import the copy",
        ) from None


def _open_url(url: str) -> tuple[RDBStorage, str]:
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise SpecError(URL_FIELD, "the URL is not a valid SQLAlchemy database URL") from None
    backend = parsed.get_backend_name()
    engine_kwargs: dict[str, object] = {"pool_pre_ping": True}
    if backend == "mysql":
        parsed = parsed.set(drivername="mysql+pymysql")
        engine_kwargs["connect_args"] = mysql_connect_args()
    if backend == "sqlite":
        where = f"sqlite database {parsed.database or '(in memory)'}"
    else:
        where = f"{backend} database {parsed.database or '(none)'} on {parsed.host or 'localhost'}"
    literal = parsed.render_as_string(hide_password=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = RDBStorage(
                literal.replace("{", "{{").replace("}", "}}"), engine_kwargs=engine_kwargs, skip_table_creation=True
            )
    except ImportError:  # Optuna turns a missing driver into a bare ImportError
        raise SpecError(URL_FIELD, f"the driver of {parsed.drivername} is not installed in the trial image") from None
    except Exception as error:
        _raise_source_error(error, URL_FIELD, where)
        raise
    return storage, where


def _raise_source_error(error: Exception, field: str, where: str) -> None:
    """Translate a failure to read the source into the runtime's errors (never quoting a URL)."""
    code = _mysql_error_code_in_chain(error)
    reason = storage_error_reason(error)
    if code in _SOURCE_USER_ERROR_CODES:
        raise SpecError(field, f"{where} refused the import: {reason}") from None
    if is_connection_error(error):
        raise StorageUnavailableError(f"cannot reach the study to import ({where}): {reason}") from None
    if isinstance(error, RuntimeError) and "optuna storage upgrade" in str(error):
        raise SpecError(
            field, f"{where} was written by an Optuna whose schema this one cannot read: {reason}"
        ) from None
    if isinstance(error, (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)):
        raise SpecError(field, f"{where} is not an Optuna storage this runtime can read: {reason}") from None


def _mysql_error_code_in_chain(error: BaseException) -> int | None:
    """The first MySQL error number in ``error``'s cause chain, if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = mysql_error_code(current)
        if code is not None:
            return code
        current = current.__cause__ or current.__context__
    return None


def _close(storage: BaseStorage) -> None:
    if isinstance(storage, RDBStorage):
        storage.engine.dispose()
