"""Checkpoints that let a trial survive the loss of its pod: save state per step, resume from the latest.

An objective calls :func:`checkpoint` once per run. When the operator runs the same trial again (its
pod was deleted, preempted or its node lost) the objective finds its latest good checkpoint on the
checkpoint volume and carries on from that step instead of starting over.

Each checkpoint is one file, ``step-<k>.ckpt``, written to a temporary name, flushed, fsynced and
renamed into place, so a crash mid-write leaves at most a stray temporary file, never a partial
checkpoint under a final name. The file starts with a magic string, a format byte (``T``: written by
``torch.save``, used when the objective has imported torch; ``P``: pickle) and the SHA-256 of the
format byte and payload; a file that fails the check (a torn write on a storage that broke its promises, a bad disk, a
hand-edited file) is skipped with a warning and the previous checkpoint is loaded instead, which is
why the newest two are kept.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from hpo_trial.contract import CHECKPOINT_ATTR, CHECKPOINT_ROOT_ENV

__all__ = ["CHECKPOINT_ROOT_ENV", "Checkpoint", "checkpoint", "checkpoint_directory", "latest_step"]

_logger = logging.getLogger(__name__)


_MAGIC = b"HPOCKPT1"
_TORCH, _PICKLE = b"T", b"P"
_HEADER_SIZE = len(_MAGIC) + 1 + hashlib.sha256().digest_size
_FILE = re.compile(r"^step-(\d+)\.ckpt$")
_TEMP_MARKER = ".ckpt.tmp"


class _TrialLike(Protocol):
    """What :func:`checkpoint` needs of an ``optuna.Trial``."""

    @property
    def number(self) -> int: ...

    @property
    def study(self) -> Any: ...

    def set_user_attr(self, key: str, value: Any) -> None: ...


class Checkpoint:
    """The checkpoints of one trial, kept in one directory.

    Get one with :func:`checkpoint`. Example:

    .. code-block:: python

        def objective(trial):
            lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
            model, optimizer = build(lr)
            ckpt = hpo_trial.checkpoint(trial)
            start = 0
            if (restored := ckpt.load()) is not None:
                start, state = restored
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
            for epoch in range(start, 20):
                loss = train_one_epoch(model, optimizer)
                trial.report(loss, epoch + 1)
                if trial.should_prune():
                    raise optuna.TrialPruned()
                ckpt.save(epoch + 1, {"model": model.state_dict(), "optimizer": optimizer.state_dict()})
            return loss

    Args:
        directory: Where this trial's checkpoint files live; created if missing.
        trial: The trial to record the latest checkpoint on (user attribute ``checkpoint``), or None.
        keep: How many of the newest checkpoints to keep (at least 1; 2 lets a corrupt newest one
            fall back to the one before).
    """

    def __init__(self, directory: str | os.PathLike[str], trial: _TrialLike | None = None, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self._directory = Path(directory)
        self._trial = trial
        self._keep = keep

    @property
    def directory(self) -> Path:
        """The trial's checkpoint directory (also a good place for other per-trial files)."""
        return self._directory

    def save(self, step: int, state: Any) -> Path:
        """Save ``state`` as the checkpoint of ``step``, atomically.

        ``state`` is anything picklable; when the objective uses torch (it has imported it) the state
        is written with ``torch.save``, so tensors and state dicts are stored the torch way. Logs
        ``checkpoint saved at step <step>`` once the file is in place and records it on the trial.

        Args:
            step: The step the state belongs to (for example, the number of epochs done); the run
                that loads it continues after this step.
            state: What to save.

        Returns:
            The checkpoint file's path.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        kind, payload = _serialize(state)
        self._directory.mkdir(parents=True, exist_ok=True)
        path = self._directory / f"step-{step:010d}.ckpt"
        fd, temp = tempfile.mkstemp(dir=self._directory, prefix=f".{path.name}", suffix=_TEMP_MARKER)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(_MAGIC + kind + hashlib.sha256(kind + payload).digest() + payload)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        _fsync_directory(self._directory)
        for old in _checkpoint_files(self._directory)[self._keep :]:
            old.unlink(missing_ok=True)
        if self._trial is not None:
            self._trial.set_user_attr(CHECKPOINT_ATTR, {"path": str(path), "step": step})
        _logger.info("checkpoint saved at step %d", step)
        return path

    def load(self) -> tuple[int, Any] | None:
        """Load the newest checkpoint that is intact.

        Files that fail the integrity check or cannot be unpickled are skipped with a warning.
        Tensors come back on the CPU (``model.load_state_dict`` and ``optimizer.load_state_dict``
        move them to the parameters' device). Logs ``resumed from step <k>`` when it finds one.
        Checkpoints are unpickled: keep the checkpoint volume to the study's own pods.

        Returns:
            ``(step, state)`` of the newest good checkpoint, or None when there is none.
        """
        self._remove_stale_temporaries()
        for path in _checkpoint_files(self._directory):
            try:
                state = _deserialize(path.read_bytes())
            except Exception as error:  # any unreadable file is skipped, whatever broke
                _logger.warning("checkpoint %s is not loaded, it is damaged: %s", path, error)
                continue
            step = _step_of(path)
            if self._trial is not None:
                self._trial.set_user_attr(CHECKPOINT_ATTR, {"path": str(path), "step": step})
            _logger.info("resumed from step %d", step)
            return step, state
        return None

    def _remove_stale_temporaries(self) -> None:
        if self._directory.is_dir():
            for temp in self._directory.glob(f"*{_TEMP_MARKER}"):
                temp.unlink(missing_ok=True)


def checkpoint(trial: _TrialLike, *, root: str | os.PathLike[str] | None = None, keep: int = 2) -> Checkpoint:
    """The checkpoints of ``trial``, in ``<root>/<study name>/<trial number>``.

    Args:
        trial: The ``optuna.Trial`` the objective was given.
        root: The checkpoint volume; by default ``HPO_CHECKPOINT_ROOT``, which the runtime sets from
            the assignment's ``checkpoint_root``. Without either, checkpoints go to a new temporary
            directory (with a warning): saving works, resuming does not.
        keep: How many of the newest checkpoints to keep.

    Returns:
        The trial's :class:`Checkpoint`.
    """
    if root is None:
        root = os.environ.get(CHECKPOINT_ROOT_ENV) or None
    if root is None:
        root = tempfile.mkdtemp(prefix="hpo-checkpoints-")
        _logger.warning(
            "no checkpoint root is configured (the study's checkpoint volume, or %s); checkpoints go to %s "
            "and this trial cannot resume from them",
            CHECKPOINT_ROOT_ENV,
            root,
        )
    return Checkpoint(checkpoint_directory(root, trial.study.study_name, trial.number), trial, keep=keep)


def checkpoint_directory(root: str | os.PathLike[str], study_name: str, trial_number: int) -> Path:
    """Where a trial's checkpoints live: ``<root>/<study name, URL-quoted>/<trial number>``.

    Args:
        root: The checkpoint volume's mount point.
        study_name: The Optuna study name; quoted so that any name is a single safe path component.
        trial_number: The trial's number in the study.

    Returns:
        The directory (it may not exist yet).
    """
    component = quote(study_name, safe="")
    if component in {".", ".."}:
        component = component.replace(".", "%2E")
    return Path(root) / component / str(trial_number)


def latest_step(directory: str | os.PathLike[str]) -> int | None:
    """The step of the newest checkpoint file in ``directory``, by name, or None if there is none."""
    files = _checkpoint_files(Path(directory))
    return _step_of(files[0]) if files else None


def _checkpoint_files(directory: Path) -> list[Path]:
    """Checkpoint files under their final names, newest step first."""
    if not directory.is_dir():
        return []
    files = [path for path in directory.iterdir() if _FILE.match(path.name)]
    return sorted(files, key=_step_of, reverse=True)


def _step_of(path: Path) -> int:
    match = _FILE.match(path.name)
    assert match is not None, path
    return int(match.group(1))


def _serialize(state: Any) -> tuple[bytes, bytes]:
    """The format byte and payload: torch's format if the objective uses torch, else plain pickle."""
    if "torch" in sys.modules:
        import torch  # already imported by the objective: free

        buffer = io.BytesIO()
        torch.save(state, buffer)
        return _TORCH, buffer.getvalue()
    return _PICKLE, pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def _deserialize(data: bytes) -> Any:
    """Check a checkpoint file's header and checksum, then unpickle it; raises ValueError if damaged."""
    if len(data) < _HEADER_SIZE or not data.startswith(_MAGIC):
        raise ValueError("not a checkpoint file (bad header or truncated)")
    kind = data[len(_MAGIC) : len(_MAGIC) + 1]
    digest, payload = data[len(_MAGIC) + 1 : _HEADER_SIZE], data[_HEADER_SIZE:]
    if hashlib.sha256(kind + payload).digest() != digest:
        raise ValueError("checksum mismatch (partial or corrupted write)")
    if kind == _TORCH:
        import torch  # imported on use: objectives without torch start faster

        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    if kind == _PICKLE:
        return pickle.loads(payload)
    raise ValueError(f"unknown checkpoint format {kind!r}")


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable: fsync the directory entry (a no-op where the OS does not allow it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
