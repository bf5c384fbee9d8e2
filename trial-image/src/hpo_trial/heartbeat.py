"""The trial's heartbeat: proof, in the study's database, that the pod running the trial is alive.

Optuna records heartbeats only inside ``study.optimize``; a trial attached by id must record its own.
While the objective runs, a daemon thread writes the heartbeat every ``heartbeat_seconds``, so the
operator (``optuna.storages.fail_stale_trials`` or its own check) can tell a trial whose pod
vanished from one that is still training.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from optuna.storages import RDBStorage

from hpo_trial.logs import redact

__all__ = ["Heartbeat"]

_logger = logging.getLogger(__name__)


class Heartbeat:
    """Records a trial's heartbeat from a daemon thread for as long as the context is open.

    A failed write is logged once per run of failures (the database may be briefly away) and
    retried at the next beat; the objective is not disturbed.

    Args:
        storage: The study's storage.
        trial_id: The storage's trial id.
        interval: Seconds between heartbeats.
    """

    def __init__(self, storage: RDBStorage, trial_id: int, interval: float) -> None:
        self._storage = storage
        self._trial_id = trial_id
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-trial-{trial_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval)

    def _run(self) -> None:
        failing = False
        while True:
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception as error:  # a thread must not die on a database hiccup
                if not failing:
                    _logger.warning("cannot record the trial's heartbeat (will retry): %s", redact(str(error)))
                failing = True
            else:
                if failing:
                    _logger.info("heartbeat recorded again")
                failing = False
            finally:
                self._storage.remove_session()
            if self._stop.wait(self._interval):
                return
