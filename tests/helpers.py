"""Small waiting helpers shared by every test tier: tests wait on conditions, never on the clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T | None], timeout: float, message: str, interval: float = 0.2) -> T:
    """Poll ``predicate`` until it returns something truthy and return that.

    Polling is the fallback for state the API cannot watch (a process, a file, a database row);
    prefer a watch where one exists. Raises AssertionError naming ``message`` on timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")
        time.sleep(interval)
