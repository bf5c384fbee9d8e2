"""The testbed's node agent runs pods the way a kubelet would: what a user of the testbed can see.

Each test creates Kubernetes objects in a fresh namespace on the running testbed and checks what the
API, `kubectl logs` and the per-pod log files show. The node agent runs every container as a local
process, so commands stand in for images.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from tests.conftest import ROOT, KubectlRunner
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e

Json = dict[str, Any]
POD_LOGS = ROOT / ".testbed" / "logs" / "pods"
ADMIN_VARIABLES = ("KUBECONFIG", "HPO_MYSQL_PASSWORD", "HPO_MYSQL_USER", "HPO_MYSQL_HOST", "HPO_MYSQL_URL")


def pod_manifest(name: str, command: list[str], restart: str = "Never", **spec: Any) -> Json:
    container = {"name": "main", "image": "busybox", "command": command, **spec.pop("container", {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 5, "containers": [container], **spec}}


def await_pod(core: client.CoreV1Api, namespace: str, name: str, predicate: Callable[[client.V1Pod], bool],
              timeout: int, what: str) -> client.V1Pod:
    """Watch one pod until ``predicate(pod)`` holds."""
    current = core.read_namespaced_pod(name, namespace)
    if predicate(current):
        return current
    stream = watch.Watch()
    for event in stream.stream(core.list_namespaced_pod, namespace, field_selector=f"metadata.name={name}",
                               resource_version=current.metadata.resource_version, timeout_seconds=timeout):
        if event["type"] != "DELETED" and predicate(event["object"]):
            stream.stop()
            return event["object"]
    pod = core.read_namespaced_pod(name, namespace)
    raise AssertionError(f"timed out after {timeout}s waiting for pod {name} to {what}; status: {pod.status}")


def await_phase(core: client.CoreV1Api, namespace: str, name: str, phase: str, timeout: int = 45) -> client.V1Pod:
    return await_pod(core, namespace, name, lambda pod: pod.status.phase == phase, timeout, f"reach {phase}")


def await_gone(core: client.CoreV1Api, namespace: str, pod: client.V1Pod, timeout: int) -> None:
    """Watch until this pod (this UID) is deleted from the API."""
    stream = watch.Watch()
    for event in stream.stream(core.list_namespaced_pod, namespace, field_selector=f"metadata.name={pod.metadata.name}",
                               resource_version=pod.metadata.resource_version, timeout_seconds=timeout):
        if event["type"] == "DELETED" and event["object"].metadata.uid == pod.metadata.uid:
            stream.stop()
            return
    raise AssertionError(f"timed out after {timeout}s waiting for pod {pod.metadata.name} to be deleted")


def pod_log(namespace: str, name: str) -> str:
    """The node agent's log file for a pod (kept after the pod is gone)."""
    path = POD_LOGS / f"{namespace}_{name}.log"
    return path.read_text() if path.exists() else ""


def env_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_job_runs_to_complete_with_the_declared_environment_and_nothing_else(
        kube: client.ApiClient, namespace: str, kubectl: KubectlRunner) -> None:
    core, batch = client.CoreV1Api(kube), client.BatchV1Api(kube)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "settings"},
                                                  "data": {"greeting": "hello", "level": "3"}})
    env = [
        {"name": "PLAIN", "value": "plain value"},
        {"name": "FROM_MAP", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
        {"name": "EXPANDED", "value": "$(FROM_MAP)-world $$(FROM_MAP)"},
        {"name": "MISSING_OPTIONAL", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": True}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
    ]
    template = {"metadata": {"labels": {"app": "env-check"}},
                "spec": {"restartPolicy": "Never", "containers": [{
                    "name": "main", "image": "busybox", "command": ["env"], "env": env,
                    "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}]}]}}
    batch.create_namespaced_job(namespace, {"metadata": {"name": "env-check"},
                                            "spec": {"backoffLimit": 0, "template": template}})

    def complete() -> bool:
        conditions = batch.read_namespaced_job_status("env-check", namespace).status.conditions or []
        return any(c.type == "Complete" and c.status == "True" for c in conditions)

    wait_for(complete, 45, "the Job to be Complete")
    [pod] = core.list_namespaced_pod(namespace, label_selector="job-name=env-check").items
    assert pod.status.phase == "Succeeded"
    seen = env_lines(kubectl("logs", "-n", namespace, pod.metadata.name).stdout)
    assert seen["PLAIN"] == "plain value"
    assert seen["FROM_MAP"] == "hello" and seen["EXPANDED"] == "hello-world $(FROM_MAP)"
    assert seen["POD_NAME"] == pod.metadata.name and seen["POD_NAMESPACE"] == namespace and seen["APP"] == "env-check"
    assert seen["CFG_greeting"] == "hello" and seen["CFG_level"] == "3"
    assert seen["KUBERNETES_SERVICE_HOST"] == "127.0.0.1" and seen["HOSTNAME"] == pod.metadata.name
    assert not [name for name in ADMIN_VARIABLES if name in seen]
    kubelet_added = {"PATH", "HOME", "HOSTNAME", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT",
                     "KUBERNETES_SERVICE_PORT_HTTPS", "KUBERNETES_PORT"}
    declared = {item["name"] for item in env} - {"MISSING_OPTIONAL"} | {"CFG_greeting", "CFG_level"}
    unexpected = {name for name in seen if not name.startswith("KUBERNETES_PORT_")} - kubelet_added - declared
    assert not unexpected, f"variables a kubelet would not set: {sorted(unexpected)}"


def test_a_failing_command_fails_the_pod_with_its_exit_code_and_termination_message(
        kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    command = ["sh", "-c", "echo 'disk quota exceeded' > /dev/termination-log; exit 3"]
    core.create_namespaced_pod(namespace, pod_manifest("exits-3", command))
    pod = await_phase(core, namespace, "exits-3", "Failed")
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    assert terminated.message == "disk quota exceeded\n"
    assert terminated.started_at is not None and terminated.finished_at is not None


def test_a_pod_reads_a_secret_from_its_environment_and_a_read_only_volume(
        kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_secret(namespace, {"metadata": {"name": "creds"},
                                              "stringData": {"password": "s3cret", "token": "t0ken"}})
    script = ('echo "env=$PASSWORD"; echo "file=$(cat /etc/creds/auth/token)"; '
              'touch /etc/creds/new 2>/dev/null && echo writable || echo read-only')
    manifest = pod_manifest("secret-reader", ["sh", "-c", script], container={
        "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}],
        "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds"}]},
        volumes=[{"name": "creds", "secret": {"secretName": "creds", "items": [{"key": "token", "path": "auth/token"}]}}])
    core.create_namespaced_pod(namespace, manifest)
    await_phase(core, namespace, "secret-reader", "Succeeded")
    assert pod_log(namespace, "secret-reader").splitlines() == ["env=s3cret", "file=t0ken", "read-only"]


def test_a_file_written_to_a_claim_by_one_pod_is_read_by_the_next(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "checkpoints"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Mi"}}}})
    secret_word = uuid.uuid4().hex
    volume = {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "checkpoints"}}],
              "container": {"volumeMounts": [{"name": "data", "mountPath": "/checkpoints"}]}}
    writer = pod_manifest("writer", ["sh", "-c", f"echo {secret_word} > /checkpoints/epoch-1"], **volume)
    core.create_namespaced_pod(namespace, writer)
    await_phase(core, namespace, "writer", "Succeeded")
    assert core.read_namespaced_persistent_volume_claim("checkpoints", namespace).status.phase == "Bound"
    reader = pod_manifest("reader", ["cat", "/checkpoints/epoch-1"], **volume)
    core.create_namespaced_pod(namespace, reader)
    await_phase(core, namespace, "reader", "Succeeded")
    assert pod_log(namespace, "reader").strip() == secret_word


def test_a_deployment_with_a_readiness_probe_becomes_available_and_shows_its_logs(
        kube: client.ApiClient, namespace: str, kubectl: KubectlRunner) -> None:
    apps = client.AppsV1Api(kube)
    port = free_port()
    container = {
        "name": "web", "image": "python", "ports": [{"name": "http", "containerPort": port}],
        "env": [{"name": "PORT", "value": str(port)}],
        "command": ["sh", "-c", "echo serving on $(PORT); exec python -m http.server $(PORT) --bind 127.0.0.1"],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    }
    apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"terminationGracePeriodSeconds": 5, "containers": [container]}}}})

    def available() -> bool:
        status = apps.read_namespaced_deployment_status("web", namespace).status
        conditions = {c.type: c.status for c in status.conditions or []}
        return conditions.get("Available") == "True" and status.ready_replicas == 1

    wait_for(available, 45, "the Deployment to become Available")
    logs = kubectl("logs", "-n", namespace, "deployment/web").stdout
    assert f"serving on {port}" in logs
    assert '"GET / HTTP/1.1" 200' in logs  # the readiness probe's requests, logged by the server


def test_a_container_without_command_fails_at_once_saying_why(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    manifest = pod_manifest("image-only", [])
    del manifest["spec"]["containers"][0]["command"]
    core.create_namespaced_pod(namespace, manifest)
    began = time.monotonic()
    pod = await_phase(core, namespace, "image-only", "Failed", timeout=20)
    assert time.monotonic() - began < 15
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.reason == "NoCommand"
    assert "set `command`" in terminated.message


def test_the_service_account_token_works_in_cluster_and_rbac_applies(kube: client.ApiClient, namespace: str) -> None:
    core, rbac = client.CoreV1Api(kube), client.RbacAuthorizationV1Api(kube)
    script = "\n".join([
        "import os",
        "from kubernetes import client, config",
        "config.load_incluster_config()",
        "try:",
        "    pods = client.CoreV1Api().list_namespaced_pod(os.environ['NAMESPACE'])",
        "    print('listed', len(pods.items))",
        "except client.exceptions.ApiException as error:",
        "    print('denied', error.status)",
    ])
    namespace_env = [{"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]

    def run(name: str) -> str:
        core.create_namespaced_pod(namespace, pod_manifest(name, ["python", "-c", script],
                                                           container={"env": namespace_env}))
        await_phase(core, namespace, name, "Succeeded", timeout=60)
        return pod_log(namespace, name).strip()

    assert run("before-grant") == "denied 403"
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "pod-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": namespace}]})
    assert run("after-grant").startswith("listed ")


def test_deleting_a_running_pod_sends_sigterm_then_removes_it(
        kube: client.ApiClient, namespace: str, tmp_path: Path) -> None:
    core = client.CoreV1Api(kube)
    marker_dir = tmp_path / "markers"
    script = ('trap "echo got SIGTERM; echo stopped > /markers/term; exit 0" TERM; '
              "echo started; while true; do sleep 0.2; done")
    manifest = pod_manifest("graceful", ["sh", "-c", script],
                            volumes=[{"name": "markers", "hostPath": {"path": str(marker_dir),
                                                                      "type": "DirectoryOrCreate"}}],
                            container={"volumeMounts": [{"name": "markers", "mountPath": "/markers"}]})
    manifest["spec"]["terminationGracePeriodSeconds"] = 30
    core.create_namespaced_pod(namespace, manifest)
    await_phase(core, namespace, "graceful", "Running")
    wait_for(lambda: "started" in pod_log(namespace, "graceful"), 10, "the pod to print that it started")
    began = time.monotonic()
    deleting = core.delete_namespaced_pod("graceful", namespace)
    await_gone(core, namespace, deleting, timeout=25)
    assert time.monotonic() - began < 20, "the pod took its whole grace period: SIGTERM did not end it"
    assert (marker_dir / "term").read_text() == "stopped\n"
    assert "got SIGTERM" in pod_log(namespace, "graceful")


def test_active_deadline_fails_a_long_pod(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_pod(namespace, pod_manifest("too-long", ["sleep", "120"], activeDeadlineSeconds=3))
    pod = await_phase(core, namespace, "too-long", "Failed", timeout=30)
    assert pod.status.reason == "DeadlineExceeded"
    assert "deadline" in pod.status.message
