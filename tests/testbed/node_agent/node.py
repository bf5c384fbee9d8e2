"""The Node this agent stands for: registration, status heartbeats and the node Lease.

The node lifecycle controller marks a node NotReady, taints it and evicts its pods when its Lease
(`kube-node-lease/<name>`) stops being renewed or its Ready condition goes stale, so a heartbeat
thread renews the Lease every 10 s and re-posts the node's conditions just as often.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.testbed.node_agent.kube import Kube, is_status
from tests.testbed.node_agent.settings import AgentSettings
from tests.testbed.node_agent.status import now_rfc3339

log = logging.getLogger(__name__)

Json = dict[str, Any]

HEARTBEAT_S = 10.0
LEASE_DURATION_S = 40
RETRY_S = 2.0
RUNTIME_VERSION = "testbed-node-agent://1.0"

CONDITIONS = (
    ("Ready", "True", "KubeletReady", "node agent is posting ready status"),
    ("MemoryPressure", "False", "KubeletHasSufficientMemory", "node agent has sufficient memory available"),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "node agent has no disk pressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID", "node agent has sufficient PID available"),
)


def _read(path: str, default: str = "") -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def _os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.partition("=")[2].strip('"')
    return "Linux"


def node_manifest(settings: AgentSettings) -> Json:
    labels = {"kubernetes.io/hostname": settings.node_name, "kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64"}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": settings.node_name, "labels": labels}}


def node_status(settings: AgentSettings, version: str, since: str, now: str) -> Json:
    """The whole status a kubelet posts: resources, conditions, addresses, endpoint, node info."""
    disk = os.statvfs(settings.state_dir)
    resources = {**settings.allocatable, "ephemeral-storage": str(disk.f_blocks * disk.f_frsize)}
    return {
        "capacity": resources,
        "allocatable": resources,
        **heartbeat_status(since, now),
        "addresses": [{"type": "InternalIP", "address": settings.host_ip},
                      {"type": "Hostname", "address": socket.gethostname()}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": settings.port}},
        "nodeInfo": {
            "machineID": _read("/etc/machine-id"),
            "systemUUID": _read("/sys/class/dmi/id/product_uuid", _read("/etc/machine-id")),
            "bootID": _read("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": platform.release(),
            "osImage": _os_image(),
            "containerRuntimeVersion": RUNTIME_VERSION,
            "kubeletVersion": version,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }


def heartbeat_status(since: str, now: str) -> Json:
    """The conditions alone, with a fresh heartbeat time: what each heartbeat re-posts."""
    return {"conditions": [{"type": kind, "status": value, "reason": reason, "message": message,
                            "lastHeartbeatTime": now, "lastTransitionTime": since}
                           for kind, value, reason, message in CONDITIONS]}


def micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_manifest(node: Json, lease: Json | None) -> Json:
    """The node's Lease, held by the node and owned by it (so it goes when the Node is deleted)."""
    name = node["metadata"]["name"]
    metadata: Json = {"name": name, "namespace": "kube-node-lease",
                      "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name,
                                           "uid": node["metadata"]["uid"]}]}
    if lease is not None:
        metadata["resourceVersion"] = lease["metadata"]["resourceVersion"]
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
            "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_S, "renewTime": micro_time()}}


class NodeHeartbeat(threading.Thread):
    """Registers the Node, then renews its Lease and conditions until the agent stops."""

    def __init__(self, kube: Kube, settings: AgentSettings, stop: threading.Event) -> None:
        super().__init__(name="node-heartbeat", daemon=True)
        self._kube = kube
        self._settings = settings
        self._stop_event = stop
        self._since = now_rfc3339()
        self._node: Json | None = None
        self._lease: Json | None = None

    def register(self, version: str) -> bool:
        """Create or update the Node with its full status; retries until done (False if stopped first)."""
        while not self._stop_event.is_set():
            try:
                self._node = self._kube.get_node() or self._kube.create_node(node_manifest(self._settings))
                self._kube.patch_node_status(node_status(self._settings, version, self._since, now_rfc3339()))
                self._renew_lease()
                log.info("node %s registered (%s)", self._settings.node_name, version)
                return True
            except Exception as error:
                log.warning("node registration failed, retrying: %s", error)
                self._stop_event.wait(RETRY_S)
        return False

    def run(self) -> None:
        while not self._stop_event.wait(HEARTBEAT_S):
            try:
                self._renew_lease()
                self._kube.patch_node_status(heartbeat_status(self._since, now_rfc3339()))
            except Exception as error:
                log.warning("node heartbeat failed: %s", error)

    def _renew_lease(self) -> None:
        assert self._node is not None, "register() first"
        if self._lease is None:
            self._lease = self._kube.get_lease()
        try:
            if self._lease is None:
                self._lease = self._kube.create_lease(lease_manifest(self._node, None))
            else:
                self._lease = self._kube.replace_lease(lease_manifest(self._node, self._lease))
        except Exception as error:
            self._lease = None  # re-read it next time
            if not is_status(error, 404, 409):
                raise
