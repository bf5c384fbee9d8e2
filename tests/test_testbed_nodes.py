"""The testbed's nodes are real: images from the local registry, cgroups, a network namespace and a
filesystem per pod, Services with cluster DNS across nodes, exec, port-forward, persistent volumes.

Pods run the trial image ($HPO_TRIAL_IMAGE): Debian's shell and Python, user 10001.
"""

from __future__ import annotations

import socket
import subprocess
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import ROOT, KubectlRunner
from tests.helpers import wait_for
from tests.testbed.nodes import NODES

pytestmark = pytest.mark.e2e

Pod = Callable[..., str]


@pytest.fixture
def run_pod(kube: client.ApiClient, namespace: str, testbed_env: dict[str, str]) -> Pod:
    """Create a pod of the trial image running ``script`` with sh; returns its name."""
    core = client.CoreV1Api(kube)

    def create(name: str, script: str, node: str | None = None, **spec: Any) -> str:
        container = {
            "name": "c",
            "image": testbed_env["HPO_TRIAL_IMAGE"],
            "command": ["sh", "-c", script],
            **spec.pop("container", {}),
        }
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "containers": [container],
                **({"nodeName": node} if node else {}),
                **spec,
            },
        }
        core.create_namespaced_pod(namespace, body)
        return name

    return create


def phase(kube: client.ApiClient, namespace: str, name: str) -> str:
    return str(client.CoreV1Api(kube).read_namespaced_pod(name, namespace).status.phase)


def wait_phase(kube: client.ApiClient, namespace: str, name: str, *phases: str) -> client.V1Pod:
    wait_for(lambda: phase(kube, namespace, name) in phases, 180, f"pod {name} to be {' or '.join(phases)}")
    return client.CoreV1Api(kube).read_namespaced_pod(name, namespace)


def test_a_pod_runs_the_trial_image_from_the_registry_as_its_non_root_user(
    run_pod: Pod, kube: client.ApiClient, namespace: str, testbed_env: dict[str, str]
) -> None:
    run_pod("whoami", "id -u; hpo-trial --help | head -1")
    pod = wait_phase(kube, namespace, "whoami", "Succeeded")
    log = client.CoreV1Api(kube).read_namespaced_pod_log("whoami", namespace)
    assert log.splitlines()[0] == "10001" and "usage: hpo-trial" in log
    assert pod.status.container_statuses[0].image_id.startswith(testbed_env["HPO_TRIAL_IMAGE"].split(":")[0])


def test_each_node_keeps_its_pods_logs_where_the_other_nodes_garbage_collector_never_looks(
    run_pod: Pod, kube: client.ApiClient, namespace: str
) -> None:
    for node in NODES:
        run_pod(f"log-{node.index}", "echo hello", node=node.name)
    for node in NODES:
        pod = wait_phase(kube, namespace, f"log-{node.index}", "Succeeded")
        holders = [other.name for other in NODES if any(other.pod_logs.glob(f"*_{pod.metadata.uid}"))]
        assert holders == [node.name], f"{pod.metadata.name}'s log directory is kept by {holders}"


def test_a_pod_sees_neither_the_testbed_nor_any_host_path_it_did_not_mount(
    run_pod: Pod, kube: client.ApiClient, namespace: str
) -> None:
    secrets = ROOT / ".testbed" / "env"
    assert secrets.exists()
    run_pod(
        "nosy",
        f"test -e {secrets} && echo SEES-ENV; test -e {ROOT} && echo SEES-CLONE; "
        "grep -c hpo_admin /proc/1/environ; cat /proc/1/cmdline | tr '\\0' ' '; echo",
    )
    wait_phase(kube, namespace, "nosy", "Succeeded", "Failed")
    log = client.CoreV1Api(kube).read_namespaced_pod_log("nosy", namespace)
    lines = log.splitlines()
    assert not [line for line in lines if line.startswith("SEES-")], log
    assert lines[0] == "0", "the host's environment is not the container's"
    assert lines[-1].startswith("sh -c"), "PID 1 is the container's own process"


def test_a_pod_over_its_memory_limit_is_oom_killed(run_pod: Pod, kube: client.ApiClient, namespace: str) -> None:
    run_pod(
        "hungry",
        "python3 -c 'x = bytearray(512 * 2**20); print(len(x))'",
        container={"resources": {"limits": {"memory": "128Mi"}}},
    )
    pod = wait_phase(kube, namespace, "hungry", "Failed")
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.reason == "OOMKilled" and terminated.exit_code == 137


def test_exec_and_port_forward_reach_a_running_pod(
    run_pod: Pod, kube: client.ApiClient, namespace: str, kubectl: KubectlRunner, testbed_env: dict[str, str]
) -> None:
    run_pod(
        "web",
        "cd /tmp && echo served-by-the-pod > index.html && exec python3 -m http.server 8080",
        container={"readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}},
    )
    wait_for(lambda: _ready(kube, namespace, "web"), 180, "the web pod to be ready")
    assert kubectl("exec", "-n", namespace, "web", "--", "cat", "/tmp/index.html").stdout == "served-by-the-pod\n"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"KUBECONFIG": testbed_env["KUBECONFIG"], "PATH": testbed_env["PATH"]}
    forward = subprocess.Popen(
        ["kubectl", "port-forward", "-n", namespace, "pod/web", f"{port}:8080"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert forward.stdout is not None
        assert "Forwarding from" in forward.stdout.readline()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=10) as response:
            assert response.read() == b"served-by-the-pod\n"
    finally:
        forward.terminate()
        forward.wait()


def _ready(kube: client.ApiClient, namespace: str, name: str) -> bool:
    statuses = client.CoreV1Api(kube).read_namespaced_pod(name, namespace).status.container_statuses or []
    return bool(statuses and statuses[0].ready)


def test_a_service_answers_by_dns_name_from_a_pod_on_the_other_node(
    run_pod: Pod, kube: client.ApiClient, namespace: str
) -> None:
    first, second = NODES[0].name, NODES[-1].name
    run_pod(
        "server",
        "cd /tmp && echo hello-across-nodes > index.html && exec python3 -m http.server 8080",
        node=first,
        container={"readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}},
    )
    client.CoreV1Api(kube).create_namespaced_service(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "hello"},
            "spec": {"selector": {"app": "server"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    wait_for(lambda: _ready(kube, namespace, "server"), 180, "the server pod to be ready")
    url = f"http://hello.{namespace}.svc.cluster.local/index.html"
    run_pod(
        "caller",
        f"python3 -c \"import urllib.request; print(urllib.request.urlopen('{url}').read().decode())\"",
        node=second,
    )
    wait_phase(kube, namespace, "caller", "Succeeded", "Failed")
    assert client.CoreV1Api(kube).read_namespaced_pod_log("caller", namespace).strip() == "hello-across-nodes"


def test_a_volume_keeps_its_data_after_its_pod_and_is_writable_from_either_node_as_non_root(
    run_pod: Pod, kube: client.ApiClient, namespace: str
) -> None:
    client.CoreV1Api(kube).create_namespaced_persistent_volume_claim(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    volume = {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}
    mount = {"volumeMounts": [{"name": "d", "mountPath": "/data"}]}
    run_pod("writer", "echo kept > /data/file", node=NODES[0].name, container=mount, **volume)
    wait_phase(kube, namespace, "writer", "Succeeded")
    run_pod("reader", "cat /data/file", node=NODES[-1].name, container=mount, **volume)
    wait_phase(kube, namespace, "reader", "Succeeded")
    assert client.CoreV1Api(kube).read_namespaced_pod_log("reader", namespace) == "kept\n"
    # fsGroup is honoured: the volume's files belong to the pod's group.
    run_pod(
        "grouped",
        "touch /data/g && stat -c %g /data/g",
        node=NODES[0].name,
        container=mount,
        securityContext={"runAsUser": 3000, "fsGroup": 2000},
        **volume,
    )
    wait_phase(kube, namespace, "grouped", "Succeeded")
    assert client.CoreV1Api(kube).read_namespaced_pod_log("grouped", namespace) == "2000\n"
