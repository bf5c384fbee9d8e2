"""Child processes of the node agent: spawned, reaped, and killed as whole containers.

The testbed machines' PID 1 never reaps orphans, and there are no cgroups to hold a container's
processes. So the agent makes itself a child subreaper (orphaned descendants come back to it and are
reaped here), and "every process of a container" is "every process in the container's private mount
namespace", which is what a container's end sweeps away.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
REAP_INTERVAL_S = 1.0

_lock = threading.Lock()
_owned: set[int] = set()


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def spawn(argv: list[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a child whose exit status belongs to the caller (the orphan reaper leaves it alone)."""
    with _lock:
        process = subprocess.Popen(argv, **popen_kwargs)
        _owned.add(process.pid)
    return process


def reap(process: subprocess.Popen[bytes], timeout: float | None = None) -> int:
    """Wait for a child from `spawn` and release its PID."""
    code = process.wait(timeout)
    with _lock:
        _owned.discard(process.pid)
    return code


def wait_exit(pid: int) -> None:
    """Block until the child exits, leaving it unreaped so its PID and group cannot be reused yet."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def has_exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def mount_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def kill_namespace(namespace: str) -> int:
    """SIGKILL every process in a container's mount namespace; returns how many were signalled."""
    if namespace == mount_namespace(os.getpid()):
        raise ValueError("refusing to kill the agent's own mount namespace")
    killed = 0
    for pid in _pids():
        if mount_namespace(pid) == namespace:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) from /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def reap_orphans() -> None:
    """Reap the zombies that were reparented to the agent and that nobody else waits for."""
    me = os.getpid()
    with _lock:
        for pid in _pids():
            stat = _stat(pid)
            if stat and stat == ("Z", me) and pid not in _owned:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)


def run_reaper(stop: threading.Event) -> None:
    while not stop.wait(REAP_INTERVAL_S):
        reap_orphans()


def sweep_recorded(records: list[Path]) -> None:
    """Kill what is left of containers a previous agent ran (their namespaces were recorded on disk)."""
    for record in records:
        namespace = record.read_text().strip()
        if namespace and namespace != mount_namespace(os.getpid()):
            killed = kill_namespace(namespace)
            if killed:
                log.warning("killed %d leftover process(es) of a previous agent's container (%s)", killed, namespace)
        record.unlink(missing_ok=True)
