"""Node agent: the Events it posts about pods, as `kubectl describe pod` shows them."""

from __future__ import annotations

import pytest

from tests.testbed.node_agent.events import WARNING, event_manifest

pytestmark = pytest.mark.unit

POD = {"metadata": {"name": "trial-1", "namespace": "team", "uid": "u-1"},
       "spec": {"initContainers": [{"name": "fetch"}], "containers": [{"name": "trial"}]}}


def test_a_container_event_points_at_the_container_and_names_the_node() -> None:
    event = event_manifest(POD, "testbed-node", WARNING, "BackOff", "Back-off restarting", "trial")
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "name": "trial-1", "namespace": "team",
                                       "uid": "u-1", "fieldPath": "spec.containers{trial}"}
    assert event["source"] == {"component": "kubelet", "host": "testbed-node"}
    assert event["metadata"]["namespace"] == "team" and event["metadata"]["name"].startswith("trial-1.")
    assert (event["type"], event["reason"], event["count"]) == ("Warning", "BackOff", 1)


def test_init_container_and_pod_events() -> None:
    init = event_manifest(POD, "n", WARNING, "Failed", "Error", "fetch")
    assert init["involvedObject"]["fieldPath"] == "spec.initContainers{fetch}"
    assert "fieldPath" not in event_manifest(POD, "n", WARNING, "FailedMount", "waiting", None)["involvedObject"]
    first, second = (event_manifest(POD, "n", WARNING, "X", "m", None) for _ in range(2))
    assert first["metadata"]["name"] != second["metadata"]["name"]
