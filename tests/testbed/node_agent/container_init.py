"""The first program of every testbed container: a container runtime's init, in a few syscalls.

The node agent runs this file with the venv's Python, an empty environment and one argument, the
path of a JSON launch spec. In a private mount namespace it bind-mounts the pod's volumes (and the
termination-message file) at the container's literal paths, changes to the working directory and
replaces itself with the container's command, so the command's process is the container. The host's
file system is every container's image; the paths in `keepVisible` (the project, with its venv) stay
visible even under a volume mounted above them (an emptyDir at /tmp while the project lives in /tmp). With
`enterPid` in the spec it instead joins that running container's mount namespace, which is how exec
probes and hooks run "inside" the container. Standard library only: it must start fast and clean.

If the command cannot be started it writes the reason to `startErrorFile` and exits 128, as a
runtime reports a StartError.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
PR_SET_PDEATHSIG = 1
START_ERROR_EXIT = 128

_libc = ctypes.CDLL(None, use_errno=True)


class StartError(Exception):
    """The container cannot be started; the message is what its status will say."""


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise StartError(f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, flags: int) -> None:
    encoded = source.encode() if source is not None else None
    _check(_libc.mount(encoded, target.encode(), None, flags, None), f"mount {source} on {target}")


def _prepare_target(source: str, target: str) -> None:
    """Create the mount point like a runtime does: a directory for a directory, an empty file for a file."""
    if os.path.exists(target):
        return
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
        return
    os.makedirs(os.path.dirname(target) or "/", exist_ok=True)
    with open(target, "a"):
        pass


def _hold(path: str) -> str:
    """A name for `path` that stays valid when a later mount hides the path itself."""
    return f"/proc/self/fd/{os.open(path, os.O_PATH | os.O_CLOEXEC)}"


def _bind(source: str, target: str, read_only: bool) -> None:
    _prepare_target(source, target)
    _mount(source, target, MS_BIND | MS_REC)
    if read_only:
        kept = os.statvfs(target).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)
        _mount(None, target, MS_BIND | MS_REMOUNT | MS_RDONLY | kept)


def _shadows(target: str, path: str) -> bool:
    return os.path.commonpath([target, path]) == os.path.normpath(target)


def _isolate(mounts: list[dict[str, Any]], keep_visible: list[str]) -> None:
    _check(_libc.unshare(CLONE_NEWNS), "unshare mount namespace")
    _mount("none", "/", MS_REC | MS_PRIVATE)
    sources = [_hold(mount["source"]) for mount in mounts]
    kept = {path: _hold(path) for path in keep_visible}
    for mount, source in zip(mounts, sources, strict=True):
        _bind(source, mount["target"], bool(mount.get("readOnly")))
    for path, held in kept.items():
        if any(_shadows(mount["target"], path) for mount in mounts):
            _bind(held, path, read_only=False)


def _enter(pid: int) -> None:
    fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, CLONE_NEWNS), f"enter mount namespace of {pid}")
    finally:
        os.close(fd)


def _resolve(command: str, path: str) -> str:
    """The executable as execvp would find it, through the container's own PATH."""
    if "/" in command:
        if os.access(command, os.X_OK) and not os.path.isdir(command):
            return command
        raise StartError(f'exec: "{command}": stat {command}: no such file or directory or not executable')
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", command)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    raise StartError(f'exec: "{command}": executable file not found in $PATH')


def _start(spec: dict[str, Any]) -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
    if os.getppid() != spec["parentPid"]:
        raise StartError("the node agent went away before the container started")
    if spec.get("enterPid"):
        _enter(int(spec["enterPid"]))
    else:
        _isolate(spec.get("mounts", []), spec.get("keepVisible", []))
    workdir = spec.get("workingDir") or "/"
    os.makedirs(workdir, exist_ok=True)
    os.chdir(workdir)
    argv: list[str] = spec["argv"]
    env: dict[str, str] = spec["env"]
    executable = _resolve(argv[0], env.get("PATH", ""))
    try:
        os.execve(executable, argv, env)
    except OSError as error:
        raise StartError(f'exec: "{argv[0]}": {error.strerror}') from error


def main(argv: list[str]) -> int:
    with open(argv[1]) as spec_file:
        spec = json.load(spec_file)
    report_dir, report_name = os.path.split(spec["startErrorFile"])
    report_fd = os.open(report_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)  # before mounts can hide it
    try:
        _start(spec)
    except (StartError, OSError) as error:
        message = str(error)
        print(message, file=sys.stderr, flush=True)
        with open(report_name, "w", opener=lambda name, flags: os.open(name, flags, dir_fd=report_fd)) as report:
            report.write(message)
    return START_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main(sys.argv))
