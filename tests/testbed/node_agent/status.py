"""Pod status as a kubelet reports it: container states, phase, and conditions, as pure functions.

The pod worker snapshots each container's state and hands the snapshots here; this module turns them
into the `status` the API shows (the phase rules are the kubelet's `getPhase`), so the rules can be
tested without processes or a cluster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]

PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
TERMINAL_PHASES = (SUCCEEDED, FAILED)
CONTAINER_ID_SCHEME = "testbed"


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class Terminated:
    """One ended run of a container."""

    exit_code: int
    reason: str
    started_at: str
    finished_at: str
    container_id: str = ""
    message: str = ""

    def as_api(self) -> Json:
        state: Json = {"exitCode": self.exit_code, "reason": self.reason, "startedAt": self.started_at,
                       "finishedAt": self.finished_at}
        if self.container_id:
            state["containerID"] = self.container_id
        if self.message:
            state["message"] = self.message
        return state


@dataclass(frozen=True)
class ContainerSnapshot:
    """A container's state at one moment: exactly one of waiting, running_since, terminated is set."""

    name: str
    image: str
    waiting: tuple[str, str] | None = ("ContainerCreating", "")
    running_since: str | None = None
    terminated: Terminated | None = None
    last_terminated: Terminated | None = None
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    container_id: str = ""

    @property
    def ever_ran(self) -> bool:
        return self.terminated is not None or self.last_terminated is not None

    @property
    def succeeded(self) -> bool:
        return self.terminated is not None and self.terminated.exit_code == 0

    def as_api(self, init: bool) -> Json:
        status: Json = {
            "name": self.name,
            "image": self.image,
            "imageID": f"{CONTAINER_ID_SCHEME}://{self.image}" if self.container_id else "",
            "restartCount": self.restart_count,
            "ready": self.succeeded if init else self.ready,
            "started": self.started,
            "state": self._state(),
            "lastState": {"terminated": self.last_terminated.as_api()} if self.last_terminated else {},
        }
        if self.container_id:
            status["containerID"] = self.container_id
        return status

    def _state(self) -> Json:
        if self.terminated is not None:
            return {"terminated": self.terminated.as_api()}
        if self.running_since is not None:
            return {"running": {"startedAt": self.running_since}}
        reason, message = self.waiting or ("ContainerCreating", "")
        return {"waiting": {"reason": reason, **({"message": message} if message else {})}}


def _init_blocked(inits: list[ContainerSnapshot]) -> tuple[int, int]:
    """(pending, failed) init containers, counted as the kubelet's getPhase does."""
    pending = failed = 0
    for snap in inits:
        if snap.terminated is not None:
            failed += snap.terminated.exit_code != 0
        elif snap.running_since is not None:
            pending += 1
        elif snap.last_terminated is not None and snap.last_terminated.exit_code != 0:
            failed += 1
        else:
            pending += 1
    return pending, failed


def pod_phase(inits: list[ContainerSnapshot], containers: list[ContainerSnapshot], restart_policy: str,
              terminal: bool = False) -> str:
    """The kubelet's phase rules; `terminal` means the pod is being torn down and will not restart."""
    pending_init, failed_init = _init_blocked(inits)
    if failed_init and restart_policy == "Never":
        return FAILED
    if pending_init or failed_init:
        return FAILED if terminal else PENDING
    running = sum(snap.running_since is not None for snap in containers)
    stopped = sum(snap.terminated is not None or (snap.waiting is not None and snap.ever_ran) for snap in containers)
    succeeded = sum(snap.succeeded for snap in containers)
    waiting = len(containers) - running - stopped
    if waiting:
        return FAILED if terminal else PENDING
    if running:
        return RUNNING
    if terminal or restart_policy == "Never":
        return SUCCEEDED if stopped == succeeded else FAILED
    if restart_policy == "Always":
        return RUNNING
    return SUCCEEDED if stopped == succeeded else RUNNING


@dataclass
class PodView:
    """Everything the conditions depend on besides the containers."""

    phase: str
    sandbox_ready: bool
    readiness_gates: list[str] = field(default_factory=list)
    pod_conditions: dict[str, str] = field(default_factory=dict)  # type -> status, as the API holds them
    generation: int | None = None


def _condition(kind: str, ok: bool, reason: str = "", message: str = "") -> Json:
    """A condition; absent reason and message are explicit nulls, so a patch clears earlier ones."""
    return {"type": kind, "status": "True" if ok else "False",
            "reason": reason if not ok and reason else None, "message": message if not ok and message else None}


def _names(snaps: list[ContainerSnapshot]) -> str:
    return "[" + " ".join(snap.name for snap in snaps) + "]"


def _readiness(view: PodView, containers: list[ContainerSnapshot]) -> tuple[Json, Json]:
    unready = [snap for snap in containers if not snap.ready]
    if not unready:
        containers_ready = _condition("ContainersReady", True)
    elif view.phase == SUCCEEDED:
        containers_ready = _condition("ContainersReady", False, "PodCompleted")
    else:
        containers_ready = _condition("ContainersReady", False, "ContainersNotReady",
                                      f"containers with unready status: {_names(unready)}")
    gates = [gate for gate in view.readiness_gates if view.pod_conditions.get(gate) != "True"]
    if containers_ready["status"] == "True" and gates:
        ready = _condition("Ready", False, "ReadinessGatesNotReady",
                           f"corresponding condition of pod readiness gate {gates[0]!r} does not exist.")
    else:
        ready = {**containers_ready, "type": "Ready"}
    return containers_ready, ready


def pod_conditions(view: PodView, inits: list[ContainerSnapshot], containers: list[ContainerSnapshot],
                   previous: list[Json], now: str) -> list[Json]:
    """The kubelet-owned conditions, keeping a transition time wherever the status did not change."""
    incomplete = [snap for snap in inits if not snap.succeeded]
    initialized = _condition("Initialized", not incomplete, "ContainersNotInitialized",
                             f"containers with incomplete status: {_names(incomplete)}")
    sandbox = _condition("PodReadyToStartContainers", view.sandbox_ready and view.phase not in TERMINAL_PHASES)
    conditions = [sandbox, initialized, *_readiness(view, containers)]
    earlier = {item.get("type"): item for item in previous}
    for condition in conditions:
        before = earlier.get(condition["type"], {})
        same = before.get("status") == condition["status"] and before.get("lastTransitionTime")
        condition["lastTransitionTime"] = before["lastTransitionTime"] if same else now
        condition["lastProbeTime"] = None
        if view.generation is not None:
            condition["observedGeneration"] = view.generation
    return conditions


def orphaned_statuses(statuses: list[Json], now: str) -> list[Json]:
    """Container statuses of a pod whose processes the agent lost: what ran is now terminated, unknown."""
    result = []
    for status in statuses:
        running = (status.get("state") or {}).get("running")
        if running is not None:
            ended = Terminated(137, "ContainerStatusUnknown", running.get("startedAt") or now, now,
                               status.get("containerID", ""),
                               "The container could not be located when the pod was terminated")
            status = {**status, "state": {"terminated": ended.as_api()}}
        result.append({**status, "ready": False, "started": False})
    return result
