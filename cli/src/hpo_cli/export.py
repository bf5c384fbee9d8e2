"""``kubectl hpo export``: a study as a portable SQLite file, by the trial image's own snapshot code.

:func:`hpo_trial.snapshots.export` is what snapshot Jobs run; the file is what ``optuna.load_study``,
optuna-dashboard and ``spec.importFrom`` read as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

from optuna.storages import BaseStorage

from hpo_cli.errors import CliError
from hpo_trial.errors import HpoTrialError
from hpo_trial.snapshots import Snapshot, export

__all__ = ["export_study"]


def export_study(storage: BaseStorage, study_name: str, path: Path) -> Snapshot:
    """Write ``study_name`` to the SQLite file ``path`` (replaced if it exists); what was written."""
    if path.suffix.lower() not in (".db", ".sqlite", ".sqlite3"):
        raise CliError(f"{path}: export writes an SQLite file; name it *.db")
    try:
        written = export(storage, study_name, path)
    except HpoTrialError as error:
        raise CliError(str(error)) from None
    umask = os.umask(0)  # the file is made private while it is written; yours now, as any file you create
    os.umask(umask)
    written.path.chmod(0o666 & ~umask)
    return written
