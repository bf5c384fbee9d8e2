"""One pod bound to this node, from first sight to deletion: the kubelet's pod worker.

A `PodWorker` thread per pod UID sets up the pod's volumes, runs its init containers in order and
then its containers, publishes status through the pods/status subresource whenever a container's
state changes, enforces activeDeadlineSeconds, and on deletion stops the containers within the grace
period and deletes the pod for good (grace 0, UID precondition), as a kubelet does. The watch thread
only hands it pod updates; everything about the pod happens on this thread.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.testbed.node_agent.events import WARNING, EventRecorder
from tests.testbed.node_agent.kube import TIMEOUT_S, Kube, NamespaceObjects, is_status
from tests.testbed.node_agent.logs import LogTarget, PodLog
from tests.testbed.node_agent.runner import ContainerRunner, PodContext
from tests.testbed.node_agent.settings import AgentSettings
from tests.testbed.node_agent.status import (
    FAILED,
    TERMINAL_PHASES,
    PodView,
    now_rfc3339,
    orphaned_statuses,
    pod_conditions,
    pod_phase,
)
from tests.testbed.node_agent.volumes import PodVolumes, VolumeNotReady

log = logging.getLogger(__name__)

Json = dict[str, Any]

TICK_S = 1.0
RETRY_S = 2.0
KILL_MARGIN_S = 10.0
SHUTDOWN_GRACE_S = 5.0
SHUTDOWN_PATCH_TIMEOUT_S = 5.0
GONE_GRACE_S = 2.0

GONE, STOP, DELETED, DEADLINE = "gone", "stop", "deleted", "deadline"

NO_COMMAND = "NoCommand"
SIDECAR_UNSUPPORTED = "SidecarUnsupported"
DEADLINE_EXCEEDED = ("DeadlineExceeded", "Pod was active on the node longer than the specified deadline")
AGENT_RESTARTED = ("NodeAgentRestarted", "The node agent restarted and no longer has this pod's processes")
AGENT_SHUTDOWN = ("Terminated", "Pod was terminated in response to the node agent shutting down.")


class Interrupted(Exception):
    """Something ended the pod's normal course: deletion, the pod gone, agent shutdown, or its deadline."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True)
class AgentServices:
    """What a pod worker needs from the agent."""

    kube: Kube
    settings: AgentSettings
    events: EventRecorder
    forget: Callable[[PodWorker], None]


def unrunnable(container: Json, init: bool) -> tuple[str, str] | None:
    """Why a container cannot run on this node at all, as (reason, message); None if it can."""
    name = container["name"]
    if not container.get("command"):
        return NO_COMMAND, (f'container "{name}" has no command: the testbed runs commands as local processes, '
                            "not images; set `command` in the container spec")
    if init and container.get("restartPolicy") == "Always":
        return SIDECAR_UNSUPPORTED, f'init container "{name}" is a sidecar (restartPolicy Always): not supported here'
    return None


def is_terminal(pod: Json) -> bool:
    return (pod.get("status") or {}).get("phase") in TERMINAL_PHASES


def is_orphaned(pod: Json) -> bool:
    """A pod this node started before the agent restarted: its processes are gone with the old agent."""
    return not is_terminal(pod) and bool((pod.get("status") or {}).get("startTime"))


class PodWorker(threading.Thread):
    """Runs one pod and reports it, until the pod is gone from the API (or the agent stops)."""

    def __init__(self, services: AgentServices, pod: Json, orphaned: bool) -> None:
        metadata = pod["metadata"]
        self.uid: str = metadata["uid"]
        self.pod_namespace: str = metadata["namespace"]
        self.pod_name: str = metadata["name"]
        super().__init__(name=f"pod-{self.key}", daemon=True)
        settings = services.settings
        self._services = services
        self._pod = pod
        self._orphaned = orphaned
        self._events: queue.Queue[tuple[str, Json | None]] = queue.Queue()
        self._dir = settings.pods_dir / self.uid
        spec = pod["spec"]
        inits, mains = spec.get("initContainers") or [], spec.get("containers") or []
        log_file = settings.pod_log_dir / f"{self.pod_namespace}_{self.pod_name}.log"
        self._pod_log = PodLog(log_file, prefixed=len(inits) + len(mains) > 1)
        self._ctx = PodContext(pod, settings, NamespaceObjects(services.kube, self.pod_namespace), self._dir,
                               self._pod_log, self.notify, services.events)
        self._inits = [ContainerRunner(self._ctx, c, True, "PodInitializing") for c in inits]
        waiting = "PodInitializing" if inits else "ContainerCreating"
        self._mains = [ContainerRunner(self._ctx, c, False, waiting) for c in mains]
        self._volumes = PodVolumes(services.kube, settings, pod, self._dir)
        self._gone = self._stopping = False
        self._ran = self._active = self._terminal = self._sandbox_ready = self._disrupted = False
        self._verdict: tuple[str, str] | None = None
        self._published: Json | None = None
        self._start_time: str | None = (pod.get("status") or {}).get("startTime")
        self._started_mono = time.monotonic()

    @property
    def key(self) -> str:
        return f"{self.pod_namespace}/{self.pod_name}"

    # Called from other threads.

    def observe(self, pod: Json) -> None:
        self._events.put(("pod", pod))

    def gone(self) -> None:
        self._events.put((GONE, None))

    def shutdown(self) -> None:
        self._events.put((STOP, None))

    def notify(self) -> None:
        self._events.put(("changed", None))

    def log_target(self, container: str, previous: bool) -> LogTarget | None:
        for runner in [*self._inits, *self._mains]:
            if runner.container_name == container:
                return runner.log_target(previous)
        return None

    # The pod's life.

    def run(self) -> None:
        try:
            self._live()
        except Exception:
            log.exception("pod %s: worker failed; stopping its containers", self.key)
            self._end_run(0.0, None, publish=False)
        finally:
            self._pod_log.close()
            self._services.forget(self)

    def _live(self) -> None:
        kind = self._until_interrupted(self._start)
        if kind == DEADLINE:
            log.info("pod %s: active deadline exceeded, killing it", self.key)
            self._ctx.record(WARNING, *DEADLINE_EXCEEDED)
            self._end_run(self._ctx.grace_s, DEADLINE_EXCEEDED)
            kind = self._until_interrupted(lambda: None)
        if kind == DELETED:
            self._finish_deletion()
        elif kind == GONE:
            if self._active:
                log.info("pod %s: deleted from the API while running, stopping it", self.key)
                self._end_run(min(self._ctx.grace_s, GONE_GRACE_S), None, publish=False)
            self._remove_files()
        elif kind == STOP and self._active:
            self._disrupted = True
            self._end_run(min(self._ctx.grace_s, SHUTDOWN_GRACE_S), AGENT_SHUTDOWN, timeout_s=SHUTDOWN_PATCH_TIMEOUT_S)

    def _until_interrupted(self, step: Callable[[], None]) -> str:
        """Run a step, then wait for whatever comes next; return the interruption that ended it."""
        try:
            step()
            self._wait(lambda: False)
        except Interrupted as interruption:
            return interruption.kind
        raise AssertionError("unreachable: waiting for nothing ends only by interruption")

    def _start(self) -> None:
        self._raise_if_interrupted()
        if is_terminal(self._pod):
            return
        if self._orphaned:
            self._fail_orphan()
        else:
            self._run_pod()

    def _run_pod(self) -> None:
        self._ran = self._active = True
        self._started_mono = time.monotonic()
        self._start_time = self._start_time or now_rfc3339()
        log.info("pod %s: starting", self.key)
        self._publish()
        refusals = [(runner, why) for runner in [*self._inits, *self._mains]
                    if (why := unrunnable(runner.container, runner.init))]
        if refusals:
            self._refuse(refusals)
            return
        self._prepare_sandbox()
        if all(self._run_to_end([init]) for init in self._inits):
            self._run_to_end(self._mains)
        self._active, self._terminal = False, True
        self._publish()
        log.info("pod %s: finished (%s)", self.key, self._status()["phase"])

    def _run_to_end(self, runners: list[ContainerRunner]) -> bool:
        """Start these containers and wait until none will run again; whether they all succeeded."""
        for runner in runners:
            runner.start()
        self._wait(lambda: all(runner.finished for runner in runners))
        return all(runner.succeeded for runner in runners)

    def _refuse(self, refusals: list[tuple[ContainerRunner, tuple[str, str]]]) -> None:
        """Fail the pod before anything runs: some container cannot run on this node at all."""
        for runner, (reason, message) in refusals:
            runner.mark_unrunnable(reason, message)
        self._verdict = refusals[0][1]
        self._active, self._terminal = False, True
        self._publish()
        log.warning("pod %s: failed before starting: %s", self.key, self._verdict[1])
        self._ctx.record(WARNING, *self._verdict)

    def _prepare_sandbox(self) -> None:
        """Set up the volumes, retrying while something they need is missing (the pod stays Pending)."""
        reported = ""
        while True:
            try:
                self._ctx.volumes = self._volumes.prepare()
                self._ctx.read_only = self._volumes.read_only
                break
            except VolumeNotReady as error:
                if str(error) != reported:
                    log.info("pod %s: waiting for volumes: %s", self.key, error)
                    self._ctx.record(WARNING, "FailedMount", f"Unable to set up volumes: {error}")
                    reported = str(error)
            except Exception:
                log.exception("pod %s: setting up volumes failed; retrying", self.key)
            self._wait_for(RETRY_S)
        self._sandbox_ready = True
        self._publish()

    def _fail_orphan(self) -> None:
        log.warning("pod %s: was running under a previous agent; marking it Failed", self.key)
        self._ctx.record(WARNING, *AGENT_RESTARTED)
        status = self._pod.get("status") or {}
        now = now_rfc3339()
        reason, message = AGENT_RESTARTED
        not_ready = {"status": "False", "reason": reason, "lastTransitionTime": now}
        body = {
            "phase": FAILED, "reason": reason, "message": message,
            "conditions": [{"type": "Ready", **not_ready}, {"type": "ContainersReady", **not_ready}],
            "containerStatuses": orphaned_statuses(status.get("containerStatuses") or [], now),
            "initContainerStatuses": orphaned_statuses(status.get("initContainerStatuses") or [], now),
        }
        while not self._patch(body):
            self._wait_for(RETRY_S)

    def _finish_deletion(self) -> None:
        """Graceful deletion: stop the containers within the grace period, report, delete the pod for good."""
        grace = self._pod["metadata"].get("deletionGracePeriodSeconds")
        log.info("pod %s: deletion requested (grace %ss)", self.key, grace)
        if self._active:
            self._end_run(self._ctx.grace_s if grace is None else float(grace), None)
        self._remove_files()
        while not (self._gone or self._stopping):
            try:
                self._services.kube.delete_pod(self.pod_namespace, self.pod_name, self.uid)
                break
            except Exception as error:
                log.warning("pod %s: final delete failed, retrying: %s", self.key, error)
                self._wait_quietly(lambda: False, RETRY_S)
        self._wait_quietly(lambda: self._gone or self._stopping)
        log.info("pod %s: deleted", self.key)

    def _end_run(self, grace_s: float, verdict: tuple[str, str] | None, publish: bool = True,
                 timeout_s: float | None = None) -> None:
        """Stop every container (SIGTERM, SIGKILL after the grace period) and report the final status."""
        self._active = False
        runners = [*self._inits, *self._mains]
        for runner in runners:
            runner.terminate(grace_s)
        if not self._wait_quietly(lambda: all(runner.finished for runner in runners), grace_s + KILL_MARGIN_S):
            log.error("pod %s: containers still running after SIGKILL", self.key)
        self._terminal = True
        self._verdict = verdict or self._verdict
        if publish and self._ran:
            self._publish(timeout_s)

    def _remove_files(self) -> None:
        self._volumes.remove()
        shutil.rmtree(self._dir, ignore_errors=True)

    # Waiting, events and interruptions.

    def _wait(self, done: Callable[[], bool]) -> None:
        """Process events until `done`; raises Interrupted when the pod's course is cut short."""
        while True:
            self._raise_if_interrupted()
            if done():
                return
            self._tick()

    def _wait_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        self._wait(lambda: time.monotonic() >= deadline)

    def _wait_quietly(self, done: Callable[[], bool], timeout_s: float | None = None) -> bool:
        """Process events until `done` (or the timeout) without being interrupted; whether it got done."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not done():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self._tick()
        return True

    def _raise_if_interrupted(self) -> None:
        if self._gone:
            raise Interrupted(GONE)
        if self._stopping:
            raise Interrupted(STOP)
        if self._pod["metadata"].get("deletionTimestamp"):
            raise Interrupted(DELETED)
        deadline = self._pod["spec"].get("activeDeadlineSeconds")
        if self._active and deadline is not None and time.monotonic() - self._started_mono >= deadline:
            raise Interrupted(DEADLINE)

    def _tick(self) -> None:
        """Take the next event (or wait a tick), drain the rest, then publish and refresh tokens as due."""
        try:
            self._apply(*self._events.get(timeout=TICK_S))
            while True:
                self._apply(*self._events.get_nowait())
        except queue.Empty:
            pass
        if self._active:
            self._publish()
            if self._sandbox_ready:
                self._refresh_tokens()

    def _apply(self, kind: str, pod: Json | None) -> None:
        if kind == "pod" and pod is not None:
            self._pod = self._ctx.pod = pod
        elif kind == GONE:
            self._gone = True
        elif kind == STOP:
            self._stopping = True

    def _refresh_tokens(self) -> None:
        try:
            self._volumes.refresh_tokens()
        except Exception as error:
            log.warning("pod %s: refreshing its token failed, will retry: %s", self.key, error)

    # Status.

    def _status(self) -> Json:
        inits = [runner.snapshot() for runner in self._inits]
        mains = [runner.snapshot() for runner in self._mains]
        restart_policy = self._ctx.restart_policy
        phase = FAILED if self._verdict else pod_phase(inits, mains, restart_policy, self._terminal)
        current = self._pod.get("status") or {}
        view = PodView(phase, self._sandbox_ready,
                       [gate["conditionType"] for gate in self._pod["spec"].get("readinessGates") or []],
                       {c["type"]: c.get("status", "") for c in current.get("conditions") or []},
                       self._pod["metadata"].get("generation"))
        previous = (self._published or current).get("conditions") or []
        conditions = pod_conditions(view, inits, mains, previous, now_rfc3339())
        if self._disrupted:
            conditions.append({"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
                               "message": AGENT_SHUTDOWN[1], "lastTransitionTime": now_rfc3339()})
        host_ip = self._services.settings.host_ip
        status: Json = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "startTime": self._start_time,
            "initContainerStatuses": [snap.as_api(init=True) for snap in inits],
            "containerStatuses": [snap.as_api(init=False) for snap in mains],
        }
        if view.generation is not None:
            status["observedGeneration"] = view.generation
        if self._sandbox_ready:
            status.update(podIP=host_ip, podIPs=[{"ip": host_ip}])
        if self._verdict:
            status.update(reason=self._verdict[0], message=self._verdict[1])
        return status

    def _publish(self, timeout_s: float | None = None) -> None:
        """Patch the status if it changed since the last successful patch (a failed one is retried next tick)."""
        status = self._status()
        if status != self._published and self._patch(status, timeout_s):
            self._published = status

    def _patch(self, status: Json, timeout_s: float | None = None) -> bool:
        try:
            kube, timeout = self._services.kube, timeout_s or TIMEOUT_S
            kube.patch_pod_status(self.pod_namespace, self.pod_name, self.uid, status, timeout)
            return True
        except Exception as error:
            if is_status(error, 404, 409):
                return True  # the pod (this incarnation of it) is gone: nothing left to report to
            log.warning("pod %s: status update failed, will retry: %s", self.key, error)
            return False
