"""Node agent: pod phase and conditions from container snapshots, by the kubelet's rules."""

from __future__ import annotations

import pytest

from tests.testbed.node_agent.status import (
    ContainerSnapshot,
    PodView,
    Terminated,
    orphaned_statuses,
    pod_conditions,
    pod_phase,
)

pytestmark = pytest.mark.unit

T0, T1 = "2026-11-22T10:00:00Z", "2026-11-22T10:05:00Z"


def waiting(name: str = "c") -> ContainerSnapshot:
    return ContainerSnapshot(name, "img", waiting=("ContainerCreating", ""))


def running(name: str = "c", ready: bool = True) -> ContainerSnapshot:
    return ContainerSnapshot(name, "img", waiting=None, running_since=T0, ready=ready, started=True,
                             container_id="testbed://1")


def ended(code: int, name: str = "c") -> ContainerSnapshot:
    return ContainerSnapshot(name, "img", waiting=None, terminated=Terminated(code, "Error" if code else "Completed",
                                                                              T0, T1))


def backing_off(code: int, name: str = "c") -> ContainerSnapshot:
    return ContainerSnapshot(name, "img", waiting=("CrashLoopBackOff", ""), restart_count=1,
                             last_terminated=Terminated(code, "Error", T0, T1))


@pytest.mark.parametrize(("inits", "containers", "policy", "phase"), [
    ([], [waiting()], "Never", "Pending"),
    ([running("i")], [waiting()], "Always", "Pending"),
    ([ended(1, "i")], [waiting()], "Never", "Failed"),
    ([backing_off(1, "i")], [waiting()], "OnFailure", "Pending"),
    ([ended(0, "i")], [running()], "Never", "Running"),
    ([], [running(), ended(0, "b")], "Never", "Running"),
    ([], [ended(0), ended(0, "b")], "Never", "Succeeded"),
    ([], [ended(0), ended(2, "b")], "Never", "Failed"),
    ([], [ended(0)], "OnFailure", "Succeeded"),
    ([], [backing_off(1)], "OnFailure", "Running"),
    ([], [ended(0)], "Always", "Running"),
    ([], [running(), waiting("b")], "Always", "Pending"),
])
def test_phase_follows_the_kubelet(inits: list[ContainerSnapshot], containers: list[ContainerSnapshot], policy: str,
                                   phase: str) -> None:
    assert pod_phase(inits, containers, policy) == phase


def test_a_pod_torn_down_is_terminal_whatever_its_restart_policy() -> None:
    assert pod_phase([], [ended(0)], "Always", terminal=True) == "Succeeded"
    assert pod_phase([], [ended(143)], "Always", terminal=True) == "Failed"
    assert pod_phase([], [waiting()], "Never", terminal=True) == "Failed"


def test_conditions_name_unready_containers_and_keep_transition_times() -> None:
    view = PodView("Running", sandbox_ready=True)
    first = pod_conditions(view, [ended(0, "init")], [running("a"), running("b", ready=False)], [], T0)
    by_type = {c["type"]: c for c in first}
    assert by_type["Initialized"]["status"] == "True" and by_type["PodReadyToStartContainers"]["status"] == "True"
    assert by_type["Ready"]["status"] == "False" and by_type["Ready"]["reason"] == "ContainersNotReady"
    assert by_type["ContainersReady"]["message"] == "containers with unready status: [b]"
    later = pod_conditions(view, [ended(0, "init")], [running("a"), running("b")], first, T1)
    by_type = {c["type"]: c for c in later}
    assert by_type["Ready"] == {"type": "Ready", "status": "True", "reason": None, "message": None,
                                "lastTransitionTime": T1, "lastProbeTime": None}
    assert by_type["Initialized"]["lastTransitionTime"] == T0


def test_a_readiness_gate_holds_readiness_back() -> None:
    view = PodView("Running", True, readiness_gates=["example.com/gate"], pod_conditions={"example.com/gate": "False"})
    by_type = {c["type"]: c for c in pod_conditions(view, [], [running()], [], T0)}
    assert by_type["ContainersReady"]["status"] == "True"
    assert by_type["Ready"]["status"] == "False" and by_type["Ready"]["reason"] == "ReadinessGatesNotReady"


def test_a_completed_pod_is_not_ready_because_it_completed() -> None:
    view = PodView("Succeeded", True, generation=3)
    by_type = {c["type"]: c for c in pod_conditions(view, [waiting("i")], [ended(0)], [], T0)}
    assert by_type["Ready"]["reason"] == "PodCompleted" and by_type["Ready"]["observedGeneration"] == 3
    assert by_type["Initialized"]["message"] == "containers with incomplete status: [i]"
    assert by_type["PodReadyToStartContainers"]["status"] == "False"


def test_container_status_shows_one_state_and_the_previous_run() -> None:
    status = backing_off(1).as_api(init=False)
    assert status["state"] == {"waiting": {"reason": "CrashLoopBackOff"}}
    assert status["lastState"]["terminated"]["exitCode"] == 1 and status["restartCount"] == 1
    assert ended(0, "i").as_api(init=True)["ready"] is True


def test_orphaned_running_containers_become_unknown_terminations() -> None:
    statuses = [{"name": "a", "state": {"running": {"startedAt": T0}}, "ready": True, "containerID": "testbed://x"},
                {"name": "b", "state": {"terminated": {"exitCode": 0}}, "ready": False}]
    result = orphaned_statuses(statuses, T1)
    terminated = result[0]["state"]["terminated"]
    assert terminated["reason"] == "ContainerStatusUnknown" and terminated["exitCode"] == 137
    assert (terminated["startedAt"], terminated["finishedAt"]) == (T0, T1) and result[0]["ready"] is False
    assert result[1]["state"] == {"terminated": {"exitCode": 0}}
