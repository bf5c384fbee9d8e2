"""Small helpers shared by every test tier: waiting on conditions (never on the clock), reading PNG files."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from pathlib import Path
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


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (raises if the file is not a PNG)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def png_title(path: Path) -> str:
    """The ``Title`` of a PNG's tEXt chunks (matplotlib writes the figure's metadata there)."""
    data, offset = path.read_bytes(), 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        if kind == b"tEXt" and body.startswith(b"Title\0"):
            return body.split(b"\0", 1)[1].decode("latin-1")
        offset += 12 + length
    raise AssertionError(f"{path} has no Title")
