"""One container of a pod over its whole life: runs, restarts with backoff, probes, and its status.

A `ContainerRunner` thread launches a run, starts its probers, waits for it to end, records how it
ended (exit code, reason, termination message), and restarts it as the pod's restartPolicy says.
The pod worker reads consistent snapshots of its state and asks it to stop; nothing else touches it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tests.testbed.node_agent.containers import (
    ContainerProcess,
    LaunchSpec,
    RunFiles,
    container_command,
    exec_in,
    launch,
    termination_mount,
    volume_mounts,
)
from tests.testbed.node_agent.env import (
    ContainerConfigError,
    ObjectLookup,
    declared_env,
    expand,
    image_env,
    service_env,
)
from tests.testbed.node_agent.events import NORMAL, WARNING, EventRecorder
from tests.testbed.node_agent.logs import LogTarget, PodLog, container_runs, termination_fallback
from tests.testbed.node_agent.probes import LIVENESS, READINESS, STARTUP, Prober, run_action
from tests.testbed.node_agent.settings import AgentSettings
from tests.testbed.node_agent.status import ContainerSnapshot, Terminated, now_rfc3339

log = logging.getLogger(__name__)

Json = dict[str, Any]

START_ERROR_EXIT = 128
CONFIG_RETRY_S = 2.0
MAX_BACKOFF_S = 10.0
BACKOFF_RESET_S = 60.0
DEFAULT_GRACE_S = 30.0
PRE_STOP_EXTRA_S = 2.0


def should_restart(restart_policy: str, exit_code: int, init: bool) -> bool:
    """The restartPolicy rule; init containers are only ever re-run after a failure."""
    if init or restart_policy == "OnFailure":
        return restart_policy != "Never" and exit_code != 0
    return restart_policy == "Always"


def backoff_delay(quick_failures: int) -> float:
    """1, 2, 4, 8, then 10 seconds between restarts of a container that keeps failing quickly."""
    return min(MAX_BACKOFF_S, 2.0 ** max(quick_failures - 1, 0))


@dataclass
class PodContext:
    """What every container of one pod shares: its manifest, volumes, log file and status trigger."""

    pod: Json
    settings: AgentSettings
    objects: ObjectLookup
    pod_dir: Path
    pod_log: PodLog
    notify: Callable[[], None]
    events: EventRecorder
    volumes: dict[str, Path] = field(default_factory=dict)
    read_only: set[str] = field(default_factory=set)

    def record(self, kind: str, reason: str, message: str, container: str | None = None) -> None:
        self.events.record(self.pod, kind, reason, message, container)

    @property
    def key(self) -> str:
        return f"{self.pod['metadata']['namespace']}/{self.pod['metadata']['name']}"

    @property
    def restart_policy(self) -> str:
        return str(self.pod["spec"].get("restartPolicy") or "Always")

    @property
    def grace_s(self) -> float:
        grace = self.pod["spec"].get("terminationGracePeriodSeconds")
        return float(DEFAULT_GRACE_S if grace is None else grace)


class ContainerRunner(threading.Thread):
    """Runs one container of a pod, restarting it per the pod's policy, until told to stop."""

    def __init__(self, ctx: PodContext, container: Json, init: bool, waiting_reason: str) -> None:
        super().__init__(name=f"container-{ctx.key}/{container['name']}", daemon=True)
        self.container = container
        self.init = init
        self._ctx = ctx
        self._directory = ctx.pod_dir / "containers" / container["name"]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._finished = threading.Event()
        self._process: ContainerProcess | None = None
        self._spec: LaunchSpec | None = None
        self._runs = len(container_runs(self._directory))
        self._snapshot = ContainerSnapshot(container["name"], container.get("image", ""),
                                           waiting=(waiting_reason, ""))
        self._probe_ready = False

    # Read by the pod worker.

    @property
    def container_name(self) -> str:
        return str(self.container["name"])

    @property
    def finished(self) -> bool:
        """It will not run again (ended for good, or stopped)."""
        return self._finished.is_set()

    @property
    def succeeded(self) -> bool:
        return self.finished and self.snapshot().succeeded

    def snapshot(self) -> ContainerSnapshot:
        with self._lock:
            return self._snapshot

    def log_target(self, previous: bool) -> LogTarget | None:
        """The log of the current (or previous) run, and whether it is still being written."""
        runs = container_runs(self._directory)
        if previous:
            return (runs[-2], lambda: False) if len(runs) > 1 else None
        if not runs:
            return None
        latest = runs[-1]
        return latest, lambda: self._process is not None and self._process.files.log == latest

    # Commands from the pod worker.

    def mark_unrunnable(self, reason: str, message: str) -> None:
        """This container cannot run at all here: it ends before starting."""
        now = now_rfc3339()
        self._stopping.set()
        self._update(waiting=None, terminated=Terminated(START_ERROR_EXIT, reason, now, now, message=message))
        self._finished.set()

    def terminate(self, grace_s: float) -> None:
        """Stop for good: preStop hook, SIGTERM, SIGKILL after the grace period. Does not wait."""
        with self._lock:
            self._stopping.set()
            process, spec = self._process, self._spec
            if self.ident is None:
                self._finished.set()
        if process is not None and spec is not None:
            self._ctx.record(NORMAL, "Killing", f"Stopping container {self.container_name}", self.container_name)
            threading.Thread(target=self._stop_run, args=(process, spec, grace_s), name=f"stop-{self.container_name}",
                             daemon=True).start()

    # The thread.

    def run(self) -> None:
        quick_failures = 0
        try:
            while not self._stopping.is_set():
                result = self._run_once()
                if result is None:
                    self._stopping.wait(CONFIG_RETRY_S)
                    continue
                ended, ran_s = result
                if self._stopping.is_set() or not should_restart(self._ctx.restart_policy, ended.exit_code, self.init):
                    break
                quick_failures = 0 if ran_s >= BACKOFF_RESET_S else quick_failures + 1
                self._back_off(ended, backoff_delay(quick_failures))
        except Exception:
            log.exception("pod %s: container %s: runner failed", self._ctx.key, self.container_name)
            now = now_rfc3339()
            self._update(waiting=None, running_since=None,
                         terminated=Terminated(START_ERROR_EXIT, "StartError", now, now, message="node agent error"))
        finally:
            self._finished.set()
            self._ctx.notify()

    def _update(self, **changes: Any) -> None:
        with self._lock:
            self._snapshot = replace(self._snapshot, **changes)
        self._ctx.notify()

    def _back_off(self, ended: Terminated, delay_s: float) -> None:
        pod = self._ctx.pod["metadata"]
        message = (f"back-off {delay_s:g}s restarting failed container={self.container_name} "
                   f"pod={pod['name']}_{pod['namespace']}({pod['uid']})")
        self._update(terminated=None, last_terminated=ended, waiting=("CrashLoopBackOff", message),
                     restart_count=self.snapshot().restart_count + 1)
        self._ctx.record(WARNING, "BackOff", f"Back-off restarting failed container {self.container_name} in pod "
                         f"{pod['name']}_{pod['namespace']}({pod['uid']})", self.container_name)
        self._stopping.wait(delay_s)

    def _launch_spec(self, files: RunFiles) -> LaunchSpec:
        ctx, settings = self._ctx, self._ctx.settings
        env = declared_env(ctx.pod, self.container, ctx.objects, service_env(settings.api_host, settings.api_port),
                           settings.allocatable, settings.host_ip)
        mounts = volume_mounts(self.container, ctx.volumes, ctx.read_only, env)
        return LaunchSpec(argv=container_command(self.container, env),
                          env={**image_env(settings, ctx.pod), **env},
                          working_dir=self.container.get("workingDir") or "/",
                          mounts=[*mounts, termination_mount(self.container, files)])

    def _run_once(self) -> tuple[Terminated, float] | None:
        """One run, from launch to exit; None if the container's config cannot be resolved yet."""
        files = RunFiles(self._directory, self._runs)
        try:
            spec = self._launch_spec(files)
        except ContainerConfigError as error:
            if self.snapshot().waiting != ("CreateContainerConfigError", str(error)):
                self._ctx.record(WARNING, "Failed", f"Error: {error}", self.container_name)
            self._update(waiting=("CreateContainerConfigError", str(error)))
            return None
        with self._lock:
            if self._stopping.is_set():
                return None
            process = self._process = launch(spec, files, self._ctx.pod_log, self.container_name)
            self._spec = spec
            self._runs += 1
        started_at, began = now_rfc3339(), time.monotonic()
        self._probe_ready = False
        started = "startupProbe" not in self.container
        self._update(waiting=None, terminated=None, running_since=started_at, container_id=process.container_id,
                     started=started, ready=self._is_ready(True, started))
        log.info("pod %s: container %s started (pid %d)", self._ctx.key, self.container_name, process.pid)
        self._ctx.record(NORMAL, "Started", f"Started container {self.container_name}", self.container_name)
        probes_done = threading.Event()
        self._start_probes(process, spec, probes_done)
        code = process.wait()
        probes_done.set()
        ended = self._ended(process, code, started_at)
        if ended.reason == "StartError":
            self._ctx.record(WARNING, "Failed", f"Error: {ended.message}", self.container_name)
        with self._lock:
            self._process = self._spec = None
        self._update(running_since=None, terminated=ended, ready=False, started=False)
        log.info("pod %s: container %s exited with %d (%s)", self._ctx.key, self.container_name, code, ended.reason)
        return ended, time.monotonic() - began

    def _ended(self, process: ContainerProcess, code: int, started_at: str) -> Terminated:
        start_error = process.start_error() if code == START_ERROR_EXIT else None
        if start_error:
            return Terminated(code, "StartError", started_at, now_rfc3339(), process.container_id, start_error)
        message = process.termination_message()
        if not message and code != 0 and self.container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = termination_fallback(process.files.log)
        return Terminated(code, "Completed" if code == 0 else "Error", started_at, now_rfc3339(),
                          process.container_id, message)

    def _is_ready(self, running: bool, started: bool) -> bool:
        """Ready: running, started, and passing its readiness probe if it has one."""
        return running and started and ("readinessProbe" not in self.container or self._probe_ready)

    def _start_probes(self, process: ContainerProcess, spec: LaunchSpec, done: threading.Event) -> None:
        started = threading.Event()
        if "startupProbe" not in self.container:
            started.set()

        def exec_fn(argv: list[str], timeout_s: float) -> tuple[int | None, str]:
            return _exec(process, spec, argv, timeout_s)

        def on_change(kind: str, ok: bool, message: str) -> None:
            self._on_probe(process, started, kind, ok, message)

        began = time.monotonic()
        for kind, key in ((STARTUP, "startupProbe"), (LIVENESS, "livenessProbe"), (READINESS, "readinessProbe")):
            probe = self.container.get(key)
            if probe:
                timeout_s = float(probe.get("timeoutSeconds") or 1)

                def check(probe: Json = probe, timeout_s: float = timeout_s) -> tuple[bool, str]:
                    return run_action(probe, self.container, self._ctx.settings.host_ip, timeout_s, exec_fn)

                Prober(kind, probe, began, check, on_change, done, None if kind == STARTUP else started).start()

    def _on_probe(self, process: ContainerProcess, started: threading.Event, kind: str, ok: bool, message: str) -> None:
        if not ok:
            self._ctx.record(WARNING, "Unhealthy", f"{kind.capitalize()} probe failed: {message}", self.container_name)
        if kind == READINESS:
            self._probe_ready = ok
            self._update(ready=self._is_ready(self.snapshot().running_since is not None, self.snapshot().started))
            return
        if kind == STARTUP and ok:
            started.set()
            self._update(started=True, ready=self._is_ready(True, started=True))
            return
        log.warning("pod %s: container %s failed its %s probe, killing it: %s", self._ctx.key, self.container_name,
                    kind, message)
        self._ctx.record(NORMAL, "Killing", f"Container {self.container_name} failed {kind} probe, will be restarted",
                         self.container_name)
        probe = self.container.get(f"{kind}Probe") or {}
        grace = probe.get("terminationGracePeriodSeconds")
        process.terminate(self._ctx.grace_s if grace is None else float(grace))

    def _stop_run(self, process: ContainerProcess, spec: LaunchSpec, grace_s: float) -> None:
        """The kubelet's container kill: the preStop hook within the grace period, then SIGTERM, SIGKILL."""
        deadline = time.monotonic() + grace_s
        hook = (self.container.get("lifecycle") or {}).get("preStop")
        if hook:
            self._pre_stop(process, spec, hook, grace_s)
        process.terminate(max(deadline - time.monotonic(), PRE_STOP_EXTRA_S if hook else 0.0))

    def _pre_stop(self, process: ContainerProcess, spec: LaunchSpec, hook: Json, grace_s: float) -> None:
        if "sleep" in hook:
            time.sleep(min(float(hook["sleep"].get("seconds", 0)), grace_s))
            return
        ok, message = run_action(hook, self.container, self._ctx.settings.host_ip, grace_s,
                                 lambda argv, timeout_s: _exec(process, spec, argv, timeout_s))
        if not ok:
            log.warning("pod %s: container %s: preStop hook failed: %s", self._ctx.key, self.container_name, message)


def _exec(process: ContainerProcess, spec: LaunchSpec, argv: list[str], timeout_s: float) -> tuple[int | None, str]:
    """Run a probe's or hook's command in the container, with the container's environment."""
    return exec_in(process, [expand(arg, spec.env.get) for arg in argv], spec.env, spec.working_dir, timeout_s)
