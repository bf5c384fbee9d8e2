"""Bringing a Slurm-era study into a study's database, and snapshotting a study to a portable file.

Before a study's first trial, an import Job runs ``hpo-transfer import``: it opens the study to import
(:mod:`hpo_trial.sources`), checks that it fits the new study's directions and declared search space,
and copies its trials in, so the sampler continues from the whole history. While a study runs, a
snapshot Job runs ``hpo-transfer snapshot`` every so many trials: the study, exported to an SQLite
file that ``optuna``, optuna-dashboard or a later import read as they are. Both directions write
trials in bulk (:mod:`hpo_trial.bulk`).

Exit codes and the one-line termination message (``/dev/termination-log``, or ``HPO_TERMINATION_LOG``):

======  =========================================================================================
code    termination message
======  =========================================================================================
0       ``IMPORTED copied=<n> skipped=<n> failed_unfinished=<n> enqueued=<n> total=<n> best=<v>``
        or ``SNAPSHOT path=<file> trials=<n> finished=<n> at=<ISO time>``
2       ``FAIL <spec field>: <what is wrong>``: fix the spec (a retry cannot help)
3       ``FAIL cannot reach ...``: a database is unavailable; run the Job again (it resumes)
1       ``FAIL internal error: ...``: a bug
======  =========================================================================================
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState, create_trial

from hpo_trial.attach import is_connection_error, storage_error_reason
from hpo_trial.bulk import (
    CHUNK_TRIALS,
    TrialCopy,
    chunks,
    database_errors,
    marked_numbers,
    open_study_storage,
    write_trials,
)
from hpo_trial.compatibility import (
    DIRECTIONS_FIELD,
    SEARCH_SPACE_FIELD,
    check_compatible,
    declared_distributions,
    direction,
)
from hpo_trial.contract import (
    FAIL_REASON_ATTR,
    IMPORT_URL_ENV,
    IMPORTED_ATTR,
    RERUN_OF_ATTR,
    STORAGE_URL_ENV,
    TERMINATION_LOG_ENV,
)
from hpo_trial.errors import ConfigurationError, HpoTrialError, SpecError
from hpo_trial.logs import configure_logging
from hpo_trial.outcome import DEFAULT_TERMINATION_LOG, ExitCode, Outcome, describe_exception, write_termination_message
from hpo_trial.snapshots import Snapshot, snapshot
from hpo_trial.sources import SourceStudy, open_source

__all__ = [
    "ImportResult",
    "Snapshot",
    "SourceStudy",
    "check_compatible",
    "copy_trials",
    "declared_distributions",
    "main",
    "open_source",
    "open_study_storage",
    "snapshot",
    "source_fingerprint",
]

_logger = logging.getLogger("hpo_trial.transfer")  # not __name__: `python -m` runs it as __main__
_UNFINISHED = (TrialState.RUNNING, TrialState.WAITING)


@dataclass(frozen=True)
class ImportResult:
    """What one run of an import did (a re-run counts only its own work).

    Attributes:
        total: Trials in the source study.
        copied: Trials this run copied.
        skipped: Source trials a previous run had copied already.
        failed_unfinished: Copied trials that were RUNNING or WAITING in the source, now FAIL.
        enqueued: Trials this run queued to re-run unfinished ones (``rerun_unfinished``).
        best_value: The source's best value (one objective, at least one COMPLETE trial), else None.
    """

    total: int
    copied: int
    skipped: int
    failed_unfinished: int
    enqueued: int
    best_value: float | None

    @property
    def summary(self) -> str:
        """The termination message's detail: ``copied=... skipped=... ... best=...``."""
        return (
            f"copied={self.copied} skipped={self.skipped} failed_unfinished={self.failed_unfinished} "
            f"enqueued={self.enqueued} total={self.total} best={self.best_value!r}"
        )


def source_fingerprint(source: SourceStudy) -> str:
    """What identifies the source study across runs of the import, whatever path or URL reaches it.

    Its name, its directions and when its first trial started: stable while the source gains trials
    (an import re-run after the Slurm study went on copies only the new ones), different for another
    study of the same name. Sixteen hex digits of a SHA-256.
    """
    trials = source.trials
    first = trials[0].datetime_start if trials else None
    identity = {
        "study": source.name,
        "directions": [direction.name for direction in source.directions],
        "first_start": None if first is None else first.astimezone(datetime.UTC).isoformat(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def copy_trials(
    source: SourceStudy,
    destination_storage: RDBStorage,
    destination_study_id: int,
    *,
    rerun_unfinished: bool = False,
    chunk_trials: int = CHUNK_TRIALS,
) -> ImportResult:
    """Copy every trial of the source study into the destination study, once, however often it runs.

    Trials are copied in number order, ``chunk_trials`` per transaction, with their params and
    distributions, values, intermediate values, user and system attributes, state and times. Each
    copy carries the system attribute ``hpo:imported`` = ``{"source": <fingerprint>, "number": <n>}``;
    a run skips the source trials the destination already has, so a Job killed mid-import and run
    again completes the copy without a duplicate (a killed run leaves whole chunks). A copy is numbered
    after the destination's existing trials: an empty destination keeps the source's numbers.

    RUNNING and WAITING trials (a Slurm job killed mid-trial) are copied as FAIL, with ``fail_reason``
    saying so. With ``rerun_unfinished``, the params of each are then queued as a WAITING trial
    (Optuna's ``enqueue_trial``), marked ``hpo:rerun_of`` so that no run queues one twice.

    Args:
        source: The study to import (:func:`hpo_trial.sources.open_source`).
        destination_storage: The study's storage.
        destination_study_id: The study's id there.
        rerun_unfinished: Queue the unfinished trials' params to run again.
        chunk_trials: Trials per transaction.

    Returns:
        What this run did.

    Raises:
        StorageUnavailableError: A database was lost; everything copied so far is kept, a re-run resumes.
    """
    trials = source.trials
    key = source_fingerprint(source)
    engine = destination_storage.engine
    now = datetime.datetime.now(datetime.UTC)
    with database_errors("the study's database"), engine.connect() as connection:
        present = marked_numbers(connection, destination_study_id, IMPORTED_ATTR, key)
    todo = [trial for trial in trials if trial.number not in present]
    skipped = len(trials) - len(todo)
    if skipped:
        _logger.info("%d of the %d trials were imported before; copying the other %d", skipped, len(trials), len(todo))
    done, failed = skipped, 0
    for chunk in chunks(todo, chunk_trials):
        copies = [_imported_copy(trial, source, key, now) for trial in chunk]
        with database_errors("the study's database"), engine.begin() as connection:
            write_trials(connection, destination_study_id, copies)
        done += len(chunk)
        failed += sum(trial.state in _UNFINISHED for trial in chunk)
        _logger.info("imported %d/%d trials", done, len(trials))
    if not todo:
        _logger.info("imported %d/%d trials", done, len(trials))
    enqueued = _enqueue_reruns(destination_storage, destination_study_id, trials, key) if rerun_unfinished else 0
    return ImportResult(len(trials), len(todo), skipped, failed, enqueued, _best_value(source, trials))


def _imported_copy(trial: FrozenTrial, source: SourceStudy, key: str, now: datetime.datetime) -> TrialCopy:
    attrs: dict[str, Any] = {**trial.system_attrs, IMPORTED_ATTR: {"source": key, "number": trial.number}}
    if trial.state not in _UNFINISHED:
        return TrialCopy(trial, trial.state, trial.datetime_complete, attrs)
    attrs[FAIL_REASON_ATTR] = (
        f"imported from study {source.name!r} ({source.where}) where it was {trial.state.name}: its job ended "
        "without telling a result (a Slurm job killed mid-trial?)"
    )
    return TrialCopy(trial, TrialState.FAIL, now, attrs)


def _enqueue_reruns(storage: RDBStorage, study_id: int, trials: Sequence[FrozenTrial], key: str) -> int:
    """Queue the params of each unfinished source trial once (each queued trial is one transaction with its mark)."""
    with database_errors("the study's database"), storage.engine.connect() as connection:
        queued = marked_numbers(connection, study_id, RERUN_OF_ATTR, key)
    enqueued = 0
    for trial in trials:
        if trial.state not in _UNFINISHED or trial.number in queued:
            continue
        params = dict(trial.params) or dict(trial.system_attrs.get("fixed_params") or {})
        if not params:
            _logger.info("trial %d had no params yet when it stopped: nothing to run again", trial.number)
            continue
        # What `Study.enqueue_trial` writes, plus the mark, in Optuna's one transaction for a new trial.
        # (`enqueue_trial(skip_if_exists=True)` would skip every one: the FAIL copy has the same params.)
        waiting = create_trial(
            state=TrialState.WAITING,
            system_attrs={"fixed_params": params, RERUN_OF_ATTR: {"source": key, "number": trial.number}},
        )
        with database_errors("the study's database"):
            storage.create_new_trial(study_id, template_trial=waiting)
        enqueued += 1
    if enqueued:
        _logger.info("queued %d unfinished trials to run again", enqueued)
    return enqueued


def _best_value(source: SourceStudy, trials: Sequence[FrozenTrial]) -> float | None:
    if len(source.directions) != 1:
        return None
    values: list[float] = [t.values[0] for t in trials if t.state is TrialState.COMPLETE and t.values]
    if not values:
        return None
    return max(values) if source.directions[0] is StudyDirection.MAXIMIZE else min(values)


def _destination_study(storage: RDBStorage, name: str, directions: Sequence[str] | None) -> tuple[int, list[str]]:
    """The destination study's id and directions, creating the study when the operator has not yet."""
    with database_errors("the study's database"):
        try:
            study_id = storage.get_study_id_from_name(name)
        except KeyError:
            if not directions:
                raise SpecError(
                    DIRECTIONS_FIELD, f"study {name!r} does not exist yet: give its directions to create it"
                ) from None
            try:
                study_id = storage.create_new_study([direction(d) for d in directions], name)
            except optuna.exceptions.DuplicatedStudyError:  # the operator created it meanwhile
                study_id = storage.get_study_id_from_name(name)
        stored = [direction.name.lower() for direction in storage.get_study_directions(study_id)]
    if directions and [d.lower() for d in directions] != stored:
        raise SpecError(DIRECTIONS_FIELD, f"study {name!r} exists with directions {stored}, not {list(directions)}")
    return study_id, stored


def main(argv: list[str] | None = None) -> None:
    """``hpo-transfer import|snapshot``: run one transfer, write the termination message, exit with its code."""
    args = _parser().parse_args(argv)
    storage_url = os.environ.get(STORAGE_URL_ENV) or None
    import_url = os.environ.get(IMPORT_URL_ENV) or None
    configure_logging(secret_urls=[url for url in (storage_url, import_url) if url])
    # Reading 10,000 trials makes millions of objects, all kept to the end: the cyclic collector's passes over
    # them were a third of an import's time. The process is short-lived and frees everything when it exits.
    gc.disable()
    try:
        outcome = _import(args, storage_url, import_url) if args.command == "import" else _snapshot(args, storage_url)
    except HpoTrialError as error:
        outcome = Outcome.from_error(error)
    except Exception as error:  # a bug: said in one line, the traceback (redacted) in the log
        if is_connection_error(error):
            outcome = Outcome.failed(
                f"cannot reach a database: {storage_error_reason(error)}", ExitCode.STORAGE_UNAVAILABLE
            )
        else:
            _logger.exception("the transfer failed")
            outcome = Outcome.failed(f"internal error: {describe_exception(error)}", ExitCode.OBJECTIVE_FAILED)
    write_termination_message(args.termination_log, outcome)
    sys.exit(int(outcome.exit_code))


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--termination-log",
        metavar="PATH",
        default=os.environ.get(TERMINATION_LOG_ENV, DEFAULT_TERMINATION_LOG),
        help=f"where to write the one-line outcome (default: ${TERMINATION_LOG_ENV} or {DEFAULT_TERMINATION_LOG})",
    )
    parser = argparse.ArgumentParser(prog="hpo-transfer", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    imports = commands.add_parser(
        "import",
        parents=[common],
        help=f"copy a study's trials into the study at ${STORAGE_URL_ENV}",
        description=f"Copy a study (--file, or the database at ${IMPORT_URL_ENV}) into the study at "
        f"${STORAGE_URL_ENV}. Safe to run again: trials already copied are skipped.",
    )
    imports.add_argument("--file", metavar="PATH", help="an SQLite file or Optuna journal file to import")
    imports.add_argument("--study-name", metavar="NAME", help="the study to import (default: the only one there)")
    imports.add_argument("--destination-study", metavar="NAME", required=True, help="the study to import into")
    imports.add_argument(
        "--directions",
        nargs="+",
        choices=["minimize", "maximize"],
        help="spec.objective.directions (default: the destination study's; needed if it does not exist yet)",
    )
    imports.add_argument(
        "--search-space-json",
        metavar="JSON",
        default="{}",
        help="spec.searchSpace as JSON, to check the source against",
    )
    imports.add_argument("--rerun-unfinished", action="store_true", help="queue unfinished trials' params to run again")
    imports.add_argument("--chunk-trials", type=int, default=CHUNK_TRIALS, help=argparse.SUPPRESS)
    snapshots = commands.add_parser(
        "snapshot",
        parents=[common],
        help=f"export the study at ${STORAGE_URL_ENV} to an SQLite file",
        description=f"Export a study at ${STORAGE_URL_ENV} to <directory>/<study>-<finished>-<UTC time>.db.",
    )
    snapshots.add_argument("--study", metavar="NAME", required=True, help="the study to export")
    snapshots.add_argument("--directory", metavar="DIR", required=True, help="where snapshots are kept")
    snapshots.add_argument("--keep", type=int, default=3, help="how many snapshots of the study to keep (default 3)")
    return parser


def _import(args: argparse.Namespace, storage_url: str | None, import_url: str | None) -> Outcome:
    if storage_url is None:
        raise ConfigurationError(f"{STORAGE_URL_ENV} is not set: the study's database is unknown")
    try:
        space = json.loads(args.search_space_json)
    except ValueError as error:
        raise SpecError(SEARCH_SPACE_FIELD, f"--search-space-json is not JSON: {error}") from None
    if not isinstance(space, dict):
        raise SpecError(SEARCH_SPACE_FIELD, "--search-space-json must be a JSON object of parameters")
    declared = declared_distributions(space)
    source = open_source(path=args.file, url=None if args.file else import_url, study_name=args.study_name)
    if args.file and import_url:
        _logger.warning("both --file and $%s are set; importing the file", IMPORT_URL_ENV)
    destination = open_study_storage(storage_url)
    try:
        study_id, directions = _destination_study(destination, args.destination_study, args.directions)
        check_compatible(source, directions, declared)
        result = copy_trials(
            source, destination, study_id, rerun_unfinished=args.rerun_unfinished, chunk_trials=args.chunk_trials
        )
    finally:
        source.close()
        destination.engine.dispose()
    return Outcome("IMPORTED", result.summary, ExitCode.FINISHED)


def _snapshot(args: argparse.Namespace, storage_url: str | None) -> Outcome:
    if storage_url is None:
        raise ConfigurationError(f"{STORAGE_URL_ENV} is not set: the study's database is unknown")
    storage = open_study_storage(storage_url)
    try:
        taken = snapshot(storage, args.study, args.directory, keep=args.keep)
    finally:
        storage.engine.dispose()
    detail = f"path={taken.path} trials={taken.trials} finished={taken.finished} at={taken.taken_at.isoformat()}"
    return Outcome("SNAPSHOT", detail, ExitCode.FINISHED)


if __name__ == "__main__":
    main()
