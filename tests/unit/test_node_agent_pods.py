"""Node agent: which pods and containers it refuses, and which pods a restarted agent has lost."""

from __future__ import annotations

import pytest

from tests.testbed.node_agent.pods import is_orphaned, unrunnable

pytestmark = pytest.mark.unit


def test_a_container_needs_a_command_and_an_init_container_may_not_be_a_sidecar() -> None:
    assert unrunnable({"name": "c", "command": ["true"]}, init=False) is None
    reason, message = unrunnable({"name": "c", "image": "busybox"}, init=False) or ("", "")
    assert reason == "NoCommand" and "set `command`" in message
    sidecar = {"name": "proxy", "command": ["proxy"], "restartPolicy": "Always"}
    assert (unrunnable(sidecar, init=True) or ("",))[0] == "SidecarUnsupported"
    assert unrunnable({"name": "c", "command": ["true"], "restartPolicy": "Always"}, init=False) is None


@pytest.mark.parametrize(("status", "orphaned"), [
    ({}, False),
    ({"phase": "Pending"}, False),
    ({"phase": "Pending", "startTime": "2026-11-22T10:00:00Z"}, True),
    ({"phase": "Running", "startTime": "2026-11-22T10:00:00Z"}, True),
    ({"phase": "Succeeded", "startTime": "2026-11-22T10:00:00Z"}, False),
    ({"phase": "Failed", "startTime": "2026-11-22T10:00:00Z"}, False),
])
def test_a_restarted_agent_has_lost_the_pods_it_had_started(status: dict[str, str], orphaned: bool) -> None:
    assert is_orphaned({"status": status}) is orphaned
