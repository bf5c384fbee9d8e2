"""Stopping a trial from outside: SIGTERM (pod deletion, preemption, node drain) ends the objective promptly.

Kubernetes sends SIGTERM, waits the grace period, then SIGKILLs. The runtime turns SIGTERM into an
:class:`Interrupted` exception raised in the main thread, where the objective runs, much as Python
turns Ctrl-C into KeyboardInterrupt: the objective unwinds at once (its ``finally`` blocks run), the
trial stays RUNNING, and the operator runs the same trial again, which resumes from its checkpoint.
Once the outcome is being told the signal is only noted, so a finished trial is never left half told.
"""

from __future__ import annotations

import signal
from types import FrameType, TracebackType

__all__ = ["Interrupted", "SignalGuard"]


class Interrupted(BaseException):  # named like KeyboardInterrupt, which it mirrors
    """A stop signal arrived while the trial ran.

    Derives from BaseException, like KeyboardInterrupt, so that an objective's ``except Exception``
    does not swallow it. It is not an error of the runtime, hence not an ``HpoTrialError``.

    Attributes:
        signum: The signal number (SIGTERM, or SIGINT when run by hand).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class SignalGuard:
    """Turns SIGTERM and SIGINT into :class:`Interrupted` while the context is open.

    Must be entered in the main thread (Python delivers signals there).
    """

    _SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self._raising = True
        self._previous: dict[int, object] = {}
        self.received: int | None = None
        """The last stop signal received, or None."""

    def __enter__(self) -> SignalGuard:
        for signum in self._SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]  # what signal.signal returned

    def defer(self) -> None:
        """From now on only note stop signals (in :attr:`received`): the outcome is being recorded."""
        self._raising = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        if self._raising:
            raise Interrupted(signum)
