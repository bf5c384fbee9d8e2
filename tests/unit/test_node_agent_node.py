"""Node agent: the Node status and Lease it posts, which keep the node lifecycle controller content."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.testbed.node_agent.node import heartbeat_status, lease_manifest, node_status
from tests.testbed.node_agent.settings import parse_args

pytestmark = pytest.mark.unit

NODE = {"metadata": {"name": "testbed-node", "uid": "node-uid"}}


def test_the_node_advertises_its_flags_and_where_its_kubelet_api_is(tmp_path: Path) -> None:
    settings = parse_args(["--state-dir", str(tmp_path), "--cpu", "2", "--memory", "24Gi", "--gpus", "4",
                           "--max-pods", "110", "--port", "10250"])
    status = node_status(settings, "v1.36.3", "2026-11-22T10:00:00Z", "2026-11-22T10:05:00Z")
    assert {key: status["allocatable"][key] for key in ("cpu", "memory", "nvidia.com/gpu", "pods")} == {
        "cpu": "2", "memory": "24Gi", "nvidia.com/gpu": "4", "pods": "110"}
    assert int(status["capacity"]["ephemeral-storage"]) > 0
    assert status["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10250}}
    assert status["addresses"][0] == {"type": "InternalIP", "address": "127.0.0.1"}
    assert status["nodeInfo"]["kubeletVersion"] == "v1.36.3" and status["nodeInfo"]["architecture"] == "amd64"
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["status"] == "True" and ready["lastHeartbeatTime"] == "2026-11-22T10:05:00Z"


def test_heartbeats_keep_transition_times_and_refresh_heartbeat_times() -> None:
    conditions = heartbeat_status("2026-11-22T10:00:00Z", "2026-11-22T11:00:00Z")["conditions"]
    assert {c["type"]: c["status"] for c in conditions} == {
        "Ready": "True", "MemoryPressure": "False", "DiskPressure": "False", "PIDPressure": "False"}
    assert all(c["lastTransitionTime"] == "2026-11-22T10:00:00Z" for c in conditions)
    assert all(c["lastHeartbeatTime"] == "2026-11-22T11:00:00Z" for c in conditions)


def test_the_lease_is_held_and_owned_by_the_node_and_renewed_in_place() -> None:
    first = lease_manifest(NODE, None)
    assert first["metadata"]["namespace"] == "kube-node-lease" and "resourceVersion" not in first["metadata"]
    assert first["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Node", "name": "testbed-node",
                                                     "uid": "node-uid"}]
    assert first["spec"]["holderIdentity"] == "testbed-node" and first["spec"]["leaseDurationSeconds"] == 40
    renewed = lease_manifest(NODE, {"metadata": {"resourceVersion": "42"}})
    assert renewed["metadata"]["resourceVersion"] == "42"
    assert renewed["spec"]["renewTime"] >= first["spec"]["renewTime"]
