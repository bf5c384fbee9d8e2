"""The one long-lived parent of every testbed process.

PID 1 on these machines does not reap orphans, so nothing we start may outlive its parent. The
supervisor starts each service in order, waits until it is ready, and then waits on its children;
it is a child subreaper, so containerd's shims (which detach from containerd) and anything else
orphaned below it are reaped here too. A service that dies is started again (a few times at most).
On SIGTERM it stops the services in reverse order and exits. Its state file tells `up` and `status`
how far it got and, on failure, which log to read.

Other targets (`operator-up`) add processes the same way: they drop a spec in `.testbed/services/`
and send SIGHUP; the supervisor starts what is missing or dead, restarts what got a new spec, stops
what lost its spec, and writes each one's pid to `.testbed/<name>.pid`.
"""

from __future__ import annotations

import contextlib
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
EXTRAS = layout.TESTBED / "services"
PR_SET_CHILD_SUBREAPER = 36
READY_TIMEOUT = 180.0
MAX_RESTARTS = 5


class Stop(Exception):
    """Raised from the SIGTERM handler to unwind whatever the supervisor is doing."""


class Reload(Exception):
    """Raised from the SIGHUP handler while the supervisor waits: look at .testbed/services/ again."""


def _raise_stop(signum: int, _frame: object) -> None:
    raise Stop(signal.Signals(signum).name)


class Supervisor:
    def __init__(self, bin_dir: Path) -> None:
        self.services = services(bin_dir)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.extras: dict[str, subprocess.Popen[bytes]] = {}
        self.extra_specs: dict[str, object] = {}
        self.restarts: dict[str, int] = {}
        self.state: dict[str, object] = {"pid": os.getpid(), "phase": "starting", "services": {}}
        self.waiting = False
        self.reload_pending = False

    def on_sighup(self, _signum: int, _frame: object) -> None:
        if self.waiting:
            raise Reload
        self.reload_pending = True

    def write_state(self, **changes: object) -> None:
        self.state.update(changes)
        self.state["services"] = {name: process.pid for name, process in {**self.processes, **self.extras}.items()}
        STATE.with_suffix(".tmp").write_text(json.dumps(self.state))
        STATE.with_suffix(".tmp").replace(STATE)

    @staticmethod
    def spawn(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(layout.LOGS / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=layout.ROOT, env=env
            )

    def start(self, service: Service) -> None:
        service.prepare()
        self.processes[service.name] = self.spawn(service.name, service.argv, {**os.environ, **service.env})
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
        """Reap children until told to stop; note any service that dies; add or drop extras on SIGHUP."""
        while True:
            if self.reload_pending:
                self.reload_pending = False
                self.sync_extras()
            self.waiting = True
            try:
                pid, status = os.wait()
            except Reload:
                self.reload_pending = True
                continue
            finally:
                self.waiting = False
            for name, process in {**self.processes, **self.extras}.items():
                if process.pid == pid and process.returncode is None:
                    process.returncode = os.waitstatus_to_exitcode(status)
                    if name in self.processes:
                        self.restart(name, process.returncode)

    def restart(self, name: str, code: int) -> None:
        """Start a service that died again, as an init system would (a killed MariaDB comes back on
        its data); one that keeps dying is left down and the testbed marked degraded."""
        log = f".testbed/logs/{name}.log"
        self.restarts[name] = self.restarts.get(name, 0) + 1
        if self.restarts[name] > MAX_RESTARTS:
            self.write_state(
                phase="degraded", message=f"{name} exited with code {code} {MAX_RESTARTS + 1} times; see {log}"
            )
            return
        self.write_state(phase="degraded", message=f"{name} exited with code {code}; restarting it")
        service = next(service for service in self.services if service.name == name)
        try:
            self.start(service)
        except RuntimeError as error:
            self.write_state(phase="degraded", message=f"{name} did not come back: {error}; see {log}")
            return
        self.write_state(phase="ready", message=f"all services ready ({name} restarted)")

    def sync_extras(self) -> None:
        """Start each extra in .testbed/services/ that is not running; stop those whose spec is gone;
        restart those whose spec changed."""
        specs = {path.stem: json.loads(path.read_text()) for path in EXTRAS.glob("*.json")}
        for name, process in list(self.extras.items()):
            if name not in specs:
                _stop_process(process, 30)
                del self.extras[name]
                (layout.TESTBED / f"{name}.pid").unlink(missing_ok=True)
        for name, spec in specs.items():
            if name in self.extras and self.extra_specs.get(name) != spec:  # new settings: restart with them
                _stop_process(self.extras.pop(name), 30)
            if name not in self.extras or self.extras[name].returncode is not None:
                self.extras[name] = self.spawn(name, spec["argv"], spec["env"])
                self.extra_specs[name] = spec
                (layout.TESTBED / f"{name}.pid").write_text(f"{self.extras[name].pid}\n")
        self.write_state()

    def stop(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        for process in self.extras.values():
            _stop_process(process, 30)
        for service in reversed(self.services):
            if (process := self.processes.get(service.name)) is not None:
                _stop_process(process, service.stop_timeout)
        _kill_adopted_orphans()
        self.write_state(phase="stopped", message="stopped")


def _stop_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.returncode is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _kill_adopted_orphans() -> None:
    """Kill and reap anything reparented to us (descendants of a service that died first)."""
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(stat.parent.name), signal.SIGKILL)
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
    signal.signal(signal.SIGHUP, supervisor.on_sighup)
    try:
        for service in supervisor.services:
            supervisor.start(service)
        supervisor.write_state(phase="ready", message="all services ready")
        supervisor.watch()
    except Stop:
        supervisor.stop()
        return 0
    except Exception as error:
        failed = str(supervisor.state.get("message", "")).removeprefix("waiting for ")
        supervisor.stop()
        supervisor.write_state(phase="failed", message=f"{error}; see .testbed/logs/{failed}.log")
        return 1
    return 0
