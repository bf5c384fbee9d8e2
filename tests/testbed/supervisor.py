"""The one long-lived parent of every testbed process.

PID 1 on these machines does not reap orphans, so nothing we start may outlive its parent. The
supervisor starts each service in order, waits until it is ready, and then waits on its children;
it is a child subreaper, so a pod process orphaned by a crashed node agent is reaped here too. On
SIGTERM it stops the services in reverse order and exits. Its state file tells `up` and `status`
how far it got and, on failure, which log to read.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.testbed import layout
from tests.testbed.services import Service, services

STATE = layout.TESTBED / "supervisor.json"
PR_SET_CHILD_SUBREAPER = 36
READY_TIMEOUT = 180.0


class Stop(Exception):
    """Raised from the SIGTERM handler to unwind whatever the supervisor is doing."""


def _raise_stop(signum: int, _frame: object) -> None:
    raise Stop(signal.Signals(signum).name)


class Supervisor:
    def __init__(self, bin_dir: Path) -> None:
        self.services = services(bin_dir)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.state: dict[str, object] = {"pid": os.getpid(), "phase": "starting", "services": {}}

    def write_state(self, **changes: object) -> None:
        self.state.update(changes)
        self.state["services"] = {name: process.pid for name, process in self.processes.items()}
        STATE.with_suffix(".tmp").write_text(json.dumps(self.state))
        STATE.with_suffix(".tmp").replace(STATE)

    def start(self, service: Service) -> None:
        service.prepare()
        log = open(layout.LOGS / f"{service.name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.processes[service.name] = subprocess.Popen(
            service.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=layout.ROOT, env={**os.environ, **service.env},
        )
        log.close()
        self.write_state(message=f"waiting for {service.name}")
        deadline = time.monotonic() + READY_TIMEOUT
        while not service.ready():
            if self.processes[service.name].poll() is not None:
                raise RuntimeError(f"{service.name} exited with code {self.processes[service.name].returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{service.name} not ready after {READY_TIMEOUT:.0f}s")
            time.sleep(0.2)
        service.after_ready()

    def watch(self) -> None:
        """Reap children until told to stop; note any service that dies."""
        while True:
            pid, status = os.wait()
            for name, process in self.processes.items():
                if process.pid == pid and process.returncode is None:
                    process.returncode = os.waitstatus_to_exitcode(status)
                    self.write_state(phase="degraded",
                                     message=f"{name} exited with code {process.returncode}; "
                                             f"see .testbed/logs/{name}.log")

    def stop(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for service in reversed(self.services):
            process = self.processes.get(service.name)
            if process is None or process.returncode is not None:
                continue
            process.terminate()
            try:
                process.wait(service.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _kill_adopted_orphans()
        self.write_state(phase="stopped", message="stopped")


def _kill_adopted_orphans() -> None:
    """Kill and reap anything reparented to us (descendants of a service that died first)."""
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            try:
                os.kill(int(stat.parent.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return


def run(bin_dir: Path) -> int:
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    supervisor = Supervisor(bin_dir)
    try:
        for service in supervisor.services:
            supervisor.start(service)
        supervisor.write_state(phase="ready", message="all services ready")
        supervisor.watch()
    except Stop:
        supervisor.stop()
        return 0
    except Exception as error:  # noqa: BLE001 - recorded for `up`, which prints the log to read
        failed = str(supervisor.state.get("message", "")).removeprefix("waiting for ")
        supervisor.stop()
        supervisor.write_state(phase="failed", message=f"{error}; see .testbed/logs/{failed}.log")
        return 1
    return 0
