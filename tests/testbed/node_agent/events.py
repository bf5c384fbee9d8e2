"""Events about pods, as a kubelet posts them, so that `kubectl describe pod` tells what happened.

Container starts, probe failures, kills, back-offs and mount waits are posted as core/v1 Events
from a background thread: an event is worth a line in `describe`, never a delay to a pod, so when
the API is slow or down they are dropped (and logged) rather than queued without bound.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from typing import Any

from tests.testbed.node_agent.kube import Kube
from tests.testbed.node_agent.status import now_rfc3339

log = logging.getLogger(__name__)

Json = dict[str, Any]

NORMAL, WARNING = "Normal", "Warning"
BACKLOG = 1000


def event_manifest(pod: Json, node: str, kind: str, reason: str, message: str, container: str | None) -> Json:
    """A core/v1 Event about a pod (or one of its containers), reported by this node's kubelet."""
    metadata = pod["metadata"]
    involved: Json = {"apiVersion": "v1", "kind": "Pod", "name": metadata["name"],
                      "namespace": metadata["namespace"], "uid": metadata["uid"]}
    if container:
        init = any(c["name"] == container for c in pod["spec"].get("initContainers") or [])
        involved["fieldPath"] = f"spec.{'initContainers' if init else 'containers'}{{{container}}}"
    now = now_rfc3339()
    return {
        "metadata": {"name": f"{metadata['name']}.{uuid.uuid4().hex[:16]}", "namespace": metadata["namespace"]},
        "involvedObject": involved, "reason": reason, "message": message, "type": kind,
        "source": {"component": "kubelet", "host": node}, "reportingComponent": "kubelet",
        "reportingInstance": node, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }


class EventRecorder(threading.Thread):
    """Posts events in the background, in order; drops them when the backlog is full."""

    def __init__(self, kube: Kube, node: str) -> None:
        super().__init__(name="events", daemon=True)
        self._kube = kube
        self._node = node
        self._backlog: queue.Queue[Json] = queue.Queue(BACKLOG)

    def record(self, pod: Json, kind: str, reason: str, message: str, container: str | None = None) -> None:
        try:
            self._backlog.put_nowait(event_manifest(pod, self._node, kind, reason, message, container))
        except queue.Full:
            log.warning("event backlog full, dropping %s event for pod %s", reason, pod["metadata"]["name"])

    def run(self) -> None:
        while True:
            event = self._backlog.get()
            try:
                self._kube.create_event(event)
            except Exception as error:
                quiet = "being terminated" in str(error)  # the namespace is going, and its events with it
                (log.debug if quiet else log.warning)("posting a %s event failed: %s", event["reason"], error)
