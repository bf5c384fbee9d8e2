"""Container logs: written as a pod runs, read back for `kubectl logs` and termination messages.

Each container run's merged stdout/stderr is stored in the CRI log format the kubelet uses
(`<RFC3339Nano> stdout F|P <text>`: F ends a line, P is a piece of one still being written), which
keeps a timestamp per line for `--timestamps` and `--since`. The same bytes are appended, as they
arrive, to the testbed's per-pod log file that outlives the pod, so a test can read a trial's output
after the fact.
"""

from __future__ import annotations

import os
import re
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

STREAM = b"stdout"  # stdout and stderr share one pipe, as with a tty-less container and `2>&1`
FALLBACK_LINES = 80
FALLBACK_BYTES = 2048
POLL_S = 0.2

LogTarget = tuple[Path, Callable[[], bool]]  # a run's log file, and whether the run still writes to it


def timestamp(ns: int | None = None) -> str:
    """RFC3339 with nanoseconds, fixed width, so that timestamps compare as strings."""
    ns = time.time_ns() if ns is None else ns
    seconds, fraction = divmod(ns, 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def parse_timestamp(text: str) -> int:
    """Nanoseconds since the epoch of an RFC3339 time (fractions beyond microseconds are dropped)."""
    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", text.strip()).replace("Z", "+00:00")
    return int(datetime.fromisoformat(trimmed).timestamp() * 10**9)


def encode_cri(data: bytes, stamp: str) -> bytes:
    """One chunk of output as CRI log lines: complete lines are F, a trailing unfinished piece is P."""
    *lines, rest = data.split(b"\n")
    prefix = stamp.encode() + b" " + STREAM
    out = [prefix + b" F " + line + b"\n" for line in lines]
    if rest:
        out.append(prefix + b" P " + rest + b"\n")
    return b"".join(out)


@dataclass(frozen=True)
class Piece:
    """One CRI log record: `full` pieces end a line."""

    stamp: str
    text: bytes
    full: bool


def decode_cri(data: bytes) -> tuple[list[Piece], int]:
    """The records in `data` and how many bytes they used (an unfinished last record is left)."""
    pieces: list[Piece] = []
    consumed = 0
    while (end := data.find(b"\n", consumed)) >= 0:
        record = data[consumed:end]
        consumed = end + 1
        parts = record.split(b" ", 3)
        if len(parts) == 4 and parts[2] in (b"F", b"P"):
            pieces.append(Piece(parts[0].decode(), parts[3], parts[2] == b"F"))
        else:
            pieces.append(Piece("", record, True))
    return pieces, consumed


def join_lines(pieces: list[Piece]) -> list[Piece]:
    """Pieces merged into logical lines, each stamped with its first piece's time; the last may be unfinished."""
    lines: list[Piece] = []
    open_line: Piece | None = None
    for piece in pieces:
        stamp = open_line.stamp if open_line else piece.stamp
        text = (open_line.text if open_line else b"") + piece.text
        open_line = None if piece.full else Piece(stamp, text, False)
        if piece.full:
            lines.append(Piece(stamp, text, True))
    if open_line:
        lines.append(open_line)
    return lines


def container_runs(directory: Path) -> list[Path]:
    """A container's run logs (`<restart>.log`), oldest first."""
    runs = [path for path in directory.glob("*.log") if path.stem.isdigit()]
    return sorted(runs, key=lambda path: int(path.stem))


def termination_fallback(path: Path) -> str:
    """The kubelet's FallbackToLogsOnError message: the log's last 80 lines, at most 2 KiB."""
    try:
        pieces, _ = decode_cri(path.read_bytes())
    except FileNotFoundError:
        return ""
    lines = join_lines(pieces)[-FALLBACK_LINES:]
    text = b"".join(line.text + (b"\n" if line.full else b"") for line in lines)
    return text[-FALLBACK_BYTES:].decode(errors="replace")


class PodLog:
    """The testbed's `<namespace>_<pod>.log`: every container's output, appended as it arrives.

    Lines are prefixed with `[container] ` only when the pod has several containers; then whole lines
    are written at once so that containers do not interleave mid-line.
    """

    def __init__(self, path: Path, prefixed: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._prefixed = prefixed
        self._partial: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def write(self, container: str, data: bytes) -> None:
        with self._lock:
            if not self._prefixed:
                self._write_all(data)
                return
            *lines, rest = (self._partial.pop(container, b"") + data).split(b"\n")
            self._write_all(b"".join(b"[%s] %s\n" % (container.encode(), line) for line in lines))
            if rest:
                self._partial[container] = rest

    def end_of_stream(self, container: str) -> None:
        """A run ended: finish its unfinished line, so the next output starts on a line of its own."""
        with self._lock:
            rest = self._partial.pop(container, b"")
            if rest:
                self._write_all(b"[%s] %s\n" % (container.encode(), rest))

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]


class LogPump(threading.Thread):
    """Copies one container run's output pipe into its CRI log and the pod log, until the pipe closes."""

    def __init__(self, read_fd: int, path: Path, pod_log: PodLog, container: str) -> None:
        super().__init__(name=f"log-{container}", daemon=True)
        self._fd = read_fd
        self._path = path
        self._pod_log = pod_log
        self._container = container
        self._closing = threading.Event()

    def run(self) -> None:
        with open(self._path, "ab", buffering=0) as out:
            while True:
                readable, _, _ = select.select([self._fd], [], [], POLL_S)
                if not readable:
                    if self._closing.is_set():
                        break
                    continue
                data = os.read(self._fd, 65536)
                if not data:
                    break
                out.write(encode_cri(data, timestamp()))
                self._pod_log.write(self._container, data)
        self._pod_log.end_of_stream(self._container)
        os.close(self._fd)

    def finish(self) -> None:
        """The run is over: stop once the pipe is drained, even if a stray process still holds it open."""
        self._closing.set()
        self.join()


@dataclass(frozen=True)
class LogQuery:
    """The kubelet container-log endpoint's options."""

    follow: bool = False
    tail_lines: int | None = None
    timestamps: bool = False
    since_ns: int | None = None
    limit_bytes: int | None = None
    previous: bool = False


class _LimitReached(Exception):
    pass


class _Output:
    """Writes log text to the client, stamping line starts and stopping at the byte limit."""

    def __init__(self, query: LogQuery, write: Callable[[bytes], None]) -> None:
        self._query = query
        self._write = write
        self._left = query.limit_bytes
        self.at_line_start = True

    def emit(self, piece: Piece) -> None:
        data = piece.text + (b"\n" if piece.full else b"")
        if self._query.timestamps and self.at_line_start:
            data = piece.stamp.encode() + b" " + data
        self.at_line_start = piece.full
        if self._left is not None:
            data, self._left = data[: self._left], self._left - len(data)
        self._write(data)
        if self._left is not None and self._left <= 0:
            raise _LimitReached


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as source:
            source.seek(offset)
            return source.read()
    except FileNotFoundError:
        return b""


def stream_log(path: Path, query: LogQuery, live: Callable[[], bool], write: Callable[[bytes], None]) -> None:
    """Write a run's log as `kubectl logs` expects it; with `follow`, until the run is over."""
    output = _Output(query, write)
    pieces, offset = decode_cri(_read_from(path, 0))
    lines = join_lines(pieces)
    if query.since_ns is not None:
        since = timestamp(query.since_ns)
        lines = [line for line in lines if line.stamp >= since]
    if query.tail_lines is not None:
        lines = lines[-query.tail_lines:] if query.tail_lines > 0 else []
    try:
        for line in lines:
            output.emit(line)
        while query.follow:
            was_live = live()
            pieces, consumed = decode_cri(_read_from(path, offset))
            offset += consumed
            for piece in pieces:
                output.emit(piece)
            if not pieces and not was_live:
                return
            if not pieces:
                time.sleep(POLL_S)
    except _LimitReached:
        return
