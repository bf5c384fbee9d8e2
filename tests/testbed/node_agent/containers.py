"""One run of one container: its launch spec, its process tree, its output, and its end.

A run starts `container_init.py` in a new session (so signals reach the whole process group), with
an empty environment and the run's launch spec; its merged output goes through a pipe to a
`LogPump`. A run ends when its main process exits: then whatever else is left in its mount
namespace is killed too, as a runtime tears down a container's cgroup.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.testbed.node_agent import processes
from tests.testbed.node_agent.env import expand
from tests.testbed.node_agent.logs import LogPump, PodLog

log = logging.getLogger(__name__)

Json = dict[str, Any]

LAUNCHER = Path(__file__).with_name("container_init.py")
PROJECT = Path(__file__).resolve().parents[3]  # with .venv: the part of every container's "image" it runs from
PYTHON = [sys.executable, "-I", "-S"]
START_ERROR_EXIT = 128
NAMESPACE_WAIT_S = 5.0
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT = 4096


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False

    def as_spec(self) -> Json:
        return {"source": self.source, "target": self.target, "readOnly": self.read_only}


@dataclass(frozen=True)
class LaunchSpec:
    """What container_init needs to become the container."""

    argv: list[str]
    env: dict[str, str]
    working_dir: str
    mounts: list[Mount]


@dataclass(frozen=True)
class RunFiles:
    """The files of one run of a container, in the container's state directory."""

    directory: Path
    index: int

    @property
    def log(self) -> Path:
        return self.directory / f"{self.index}.log"

    @property
    def termination(self) -> Path:
        return self.directory / f"{self.index}.termination-log"

    @property
    def spec(self) -> Path:
        return self.directory / f"{self.index}.launch.json"

    @property
    def start_error(self) -> Path:
        return self.directory / f"{self.index}.start-error"

    @property
    def namespace_record(self) -> Path:
        return self.directory / "mount-namespace"


def volume_mounts(container: Json, volumes: dict[str, Path], read_only: set[str], env: dict[str, str]) -> list[Mount]:
    """The container's volumeMounts as bind mounts, parents before children (as runtimes order them).

    Volumes in `read_only` (secrets, configMaps, read-only claims) are mounted read-only wherever used.
    """
    mounts = []
    for item in container.get("volumeMounts") or []:
        source = volumes[item["name"]]
        sub_path = item.get("subPath") or expand(item.get("subPathExpr", ""), env.get)
        if sub_path:
            source = source / sub_path
            if not source.exists():
                source.mkdir(parents=True)
        locked = bool(item.get("readOnly")) or item["name"] in read_only
        mounts.append(Mount(str(source), posixpath.normpath(item["mountPath"]), locked))
    return sorted(mounts, key=lambda mount: mount.target.count("/"))


def container_command(container: Json, env: dict[str, str]) -> list[str]:
    """`command` + `args` with `$(VAR)` expanded against the declared environment."""
    return [expand(part, env.get) for part in [*container.get("command", []), *container.get("args", [])]]


def termination_mount(container: Json, files: RunFiles) -> Mount:
    return Mount(str(files.termination), container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH)


class ContainerProcess:
    """A started run: its main process, the group it leads, and its mount namespace."""

    def __init__(self, process: subprocess.Popen[bytes], files: RunFiles, pump: LogPump) -> None:
        self.pid = process.pid
        self.container_id = f"testbed://{uuid.uuid4().hex}"
        self.files = files
        self._process = process
        self._pump = pump
        self._timer: threading.Timer | None = None
        self.namespace = self._await_namespace()

    def _await_namespace(self) -> str | None:
        """The run's own mount namespace, once container_init has unshared it (and read its spec)."""
        ours = processes.mount_namespace(os.getpid())
        deadline = time.monotonic() + NAMESPACE_WAIT_S
        namespace = None
        while time.monotonic() < deadline and not processes.has_exited(self.pid):
            namespace = processes.mount_namespace(self.pid)
            if namespace and namespace != ours:
                self.files.namespace_record.write_text(namespace)
                break
            namespace = None
            time.sleep(0.005)
        self.files.spec.unlink(missing_ok=True)  # it holds the container's secrets
        return namespace

    def terminate(self, grace_s: float) -> None:
        """SIGTERM the group now, SIGKILL it after the grace period unless it has ended."""
        processes.signal_group(self.pid, signal.SIGTERM)
        if self._timer is None:
            self._timer = threading.Timer(max(grace_s, 0.0), self.kill)
            self._timer.daemon = True
            self._timer.start()

    def kill(self) -> None:
        processes.signal_group(self.pid, signal.SIGKILL)
        if self.namespace:
            processes.kill_namespace(self.namespace)

    def wait(self) -> int:
        """Wait for the main process, kill what it leaves behind, reap; the exit code as a runtime reports it."""
        processes.wait_exit(self.pid)
        self.kill()
        code = processes.reap(self._process)
        if self._timer is not None:
            self._timer.cancel()
        self._pump.finish()
        self.files.namespace_record.unlink(missing_ok=True)
        return 128 - code if code < 0 else code

    def start_error(self) -> str | None:
        try:
            return self.files.start_error.read_text().strip()
        except FileNotFoundError:
            return None

    def termination_message(self) -> str:
        try:
            with open(self.files.termination, "rb") as message:
                return message.read(TERMINATION_MESSAGE_LIMIT).decode(errors="replace")
        except FileNotFoundError:
            return ""


def _write_spec(path: Path, spec: Json) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(spec, out)


def launch(spec: LaunchSpec, files: RunFiles, pod_log: PodLog, name: str) -> ContainerProcess:
    """Start one run; must be called from the thread that will wait for it (parent-death signal)."""
    files.directory.mkdir(parents=True, exist_ok=True)
    files.termination.write_bytes(b"")
    files.start_error.unlink(missing_ok=True)
    _write_spec(files.spec, {
        "argv": spec.argv, "env": spec.env, "workingDir": spec.working_dir,
        "mounts": [mount.as_spec() for mount in spec.mounts],
        "parentPid": os.getpid(), "startErrorFile": str(files.start_error), "keepVisible": [str(PROJECT)],
    })
    read_fd, write_fd = os.pipe()
    try:
        process = processes.spawn([*PYTHON, str(LAUNCHER), str(files.spec)], stdin=subprocess.DEVNULL,
                                  stdout=write_fd, stderr=write_fd, env={}, cwd="/", start_new_session=True)
    except OSError:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    pump = LogPump(read_fd, files.log, pod_log, name)
    pump.start()
    return ContainerProcess(process, files, pump)


def exec_in(target: ContainerProcess, argv: list[str], env: dict[str, str], working_dir: str,
            timeout_s: float) -> tuple[int | None, str]:
    """Run a command inside a running container (exec probes, hooks): (exit code or None on timeout, output)."""
    spec_path = target.files.directory / f"exec-{uuid.uuid4().hex}.json"
    _write_spec(spec_path, {"argv": argv, "env": env, "workingDir": working_dir, "enterPid": target.pid,
                            "parentPid": os.getpid(), "startErrorFile": str(spec_path) + ".error"})
    process = processes.spawn([*PYTHON, str(LAUNCHER), str(spec_path)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={}, cwd="/",
                              start_new_session=True)
    code: int | None
    try:
        output, _ = process.communicate(timeout=timeout_s)
        code = process.returncode
    except subprocess.TimeoutExpired:
        processes.signal_group(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        code = None
    finally:
        processes.reap(process)
        spec_path.unlink(missing_ok=True)
        Path(str(spec_path) + ".error").unlink(missing_ok=True)
    return code, output.decode(errors="replace")[-TERMINATION_MESSAGE_LIMIT:]
