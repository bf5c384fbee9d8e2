"""The testbed's node agent runs pods the way a kubelet would: what a user of the testbed can see.

Each test creates Kubernetes objects in a fresh namespace on the running testbed and checks what the
API, `kubectl logs` and the per-pod log files show. The node agent runs every container as a local
process, so commands stand in for images.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

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


class Cluster:
    """Creates objects from manifests in the test's namespace and reads them back as JSON."""

    def __init__(self, kube: client.ApiClient, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.core = client.CoreV1Api(kube)
        core, apps, batch, rbac = self.core, client.AppsV1Api(kube), client.BatchV1Api(kube), \
            client.RbacAuthorizationV1Api(kube)
        self._creators: dict[str, tuple[Callable[..., Any], type[Any]]] = {
            "Pod": (core.create_namespaced_pod, client.V1Pod),
            "Secret": (core.create_namespaced_secret, client.V1Secret),
            "ConfigMap": (core.create_namespaced_config_map, client.V1ConfigMap),
            "PersistentVolumeClaim": (core.create_namespaced_persistent_volume_claim, client.V1PersistentVolumeClaim),
            "Deployment": (apps.create_namespaced_deployment, client.V1Deployment),
            "Job": (batch.create_namespaced_job, client.V1Job),
            "Role": (rbac.create_namespaced_role, client.V1Role),
            "RoleBinding": (rbac.create_namespaced_role_binding, client.V1RoleBinding),
        }

    def create(self, kind: str, manifest: Json) -> Json:
        create, model = self._creators[kind]
        return self.json(create(self.namespace, model.model_validate({"kind": kind, **manifest})))

    def json(self, obj: Any) -> Json:
        return cast(Json, self.kube.sanitize_for_serialization(obj))  # type: ignore[no-untyped-call]

    def pod(self, name: str) -> Json:
        return self.json(self.core.read_namespaced_pod(name, self.namespace))

    def watch_pod(self, name: str, resource_version: str, timeout: int) -> Iterator[tuple[str, Json]]:
        """(event type, pod) for one pod name after ``resource_version``, until the consumer stops or time runs out."""
        stream = watch.Watch()  # type: ignore[no-untyped-call]
        events = stream.stream(  # type: ignore[no-untyped-call]
            self.core.list_namespaced_pod, self.namespace, timeout_seconds=timeout,
            field_selector=f"metadata.name={name}", resource_version=resource_version)
        try:
            for event in events:
                yield event["type"], self.json(event["object"])
        finally:
            stream.stop()  # type: ignore[no-untyped-call]

    def await_pod(self, name: str, predicate: Callable[[Json], bool], timeout: int, what: str) -> Json:
        """Watch one pod until ``predicate(pod)`` holds."""
        current = self.pod(name)
        if predicate(current):
            return current
        for kind, pod in self.watch_pod(name, current["metadata"]["resourceVersion"], timeout):
            if kind != "DELETED" and predicate(pod):
                return pod
        raise AssertionError(f"timed out after {timeout}s waiting for pod {name} to {what}; "
                             f"status: {self.pod(name).get('status')}")

    def await_phase(self, name: str, phase: str, timeout: int = 45) -> Json:
        return self.await_pod(name, lambda pod: pod["status"].get("phase") == phase, timeout, f"reach {phase}")

    def await_deleted(self, pod: Json, timeout: int) -> None:
        """Watch until this pod (this UID) is deleted from the API."""
        metadata = pod["metadata"]
        for kind, seen in self.watch_pod(metadata["name"], metadata["resourceVersion"], timeout):
            if kind == "DELETED" and seen["metadata"]["uid"] == metadata["uid"]:
                return
        raise AssertionError(f"timed out after {timeout}s waiting for pod {metadata['name']} to be deleted")


@pytest.fixture
def cluster(kube: client.ApiClient, namespace: str) -> Cluster:
    return Cluster(kube, namespace)


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
        cluster: Cluster, kubectl: KubectlRunner) -> None:
    cluster.create("ConfigMap", {"metadata": {"name": "settings"}, "data": {"greeting": "hello", "level": "3"}})
    env: list[Json] = [
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
    cluster.create("Job", {"metadata": {"name": "env-check"}, "spec": {"backoffLimit": 0, "template": template}})
    batch = client.BatchV1Api(cluster.kube)

    def complete() -> bool:
        job = cluster.json(batch.read_namespaced_job_status("env-check", cluster.namespace))
        return any(c["type"] == "Complete" and c["status"] == "True" for c in job["status"].get("conditions", []))

    wait_for(complete, 45, "the Job to be Complete")
    pods = cluster.core.list_namespaced_pod(cluster.namespace, label_selector="job-name=env-check")
    [pod] = cluster.json(pods)["items"]
    name = pod["metadata"]["name"]
    assert pod["status"]["phase"] == "Succeeded"
    seen = env_lines(kubectl("logs", "-n", cluster.namespace, name).stdout)
    assert seen["PLAIN"] == "plain value"
    assert seen["FROM_MAP"] == "hello" and seen["EXPANDED"] == "hello-world $(FROM_MAP)"
    assert (seen["POD_NAME"], seen["POD_NAMESPACE"], seen["APP"]) == (name, cluster.namespace, "env-check")
    assert seen["CFG_greeting"] == "hello" and seen["CFG_level"] == "3"
    assert seen["KUBERNETES_SERVICE_HOST"] == "127.0.0.1" and seen["HOSTNAME"] == name
    assert not [variable for variable in ADMIN_VARIABLES if variable in seen]
    kubelet_added = {"PATH", "HOME", "HOSTNAME", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT",
                     "KUBERNETES_SERVICE_PORT_HTTPS", "KUBERNETES_PORT"}
    declared = {item["name"] for item in env} - {"MISSING_OPTIONAL"} | {"CFG_greeting", "CFG_level"}
    unexpected = {variable for variable in seen if not variable.startswith("KUBERNETES_PORT_")}
    assert not unexpected - kubelet_added - declared, "variables a kubelet would not set"


def test_a_failing_command_fails_the_pod_with_its_exit_code_and_termination_message(cluster: Cluster) -> None:
    manifest = pod_manifest("exits-3", ["sh", "-c", "echo 'disk quota exceeded' > /dev/termination-log; exit 3"])
    manifest["spec"]["containers"].append({
        "name": "logs-only", "image": "busybox", "command": ["sh", "-c", "echo 'out of patience'; exit 1"],
        "terminationMessagePolicy": "FallbackToLogsOnError"})
    cluster.create("Pod", manifest)
    pod = cluster.await_phase("exits-3", "Failed")
    ended = {status["name"]: status["state"]["terminated"] for status in pod["status"]["containerStatuses"]}
    assert (ended["main"]["exitCode"], ended["main"]["reason"]) == (3, "Error")
    assert ended["main"]["message"] == "disk quota exceeded\n"
    assert ended["main"]["startedAt"] <= ended["main"]["finishedAt"]
    assert (ended["logs-only"]["exitCode"], ended["logs-only"]["message"]) == (1, "out of patience\n")


def test_a_pod_reads_a_secret_from_its_environment_and_a_read_only_volume(cluster: Cluster) -> None:
    cluster.create("Secret", {"metadata": {"name": "creds"}, "stringData": {"password": "s3cret", "token": "t0ken"}})
    script = ('echo "env=$PASSWORD"; echo "file=$(cat /etc/creds/auth/token)"; '
              'touch /etc/creds/new 2>/dev/null && echo writable || echo read-only')
    manifest = pod_manifest("secret-reader", ["sh", "-c", script], container={
        "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}],
        "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds"}]},
        volumes=[{"name": "creds",
                  "secret": {"secretName": "creds", "items": [{"key": "token", "path": "auth/token"}]}}])
    cluster.create("Pod", manifest)
    cluster.await_phase("secret-reader", "Succeeded")
    assert pod_log(cluster.namespace, "secret-reader").splitlines() == ["env=s3cret", "file=t0ken", "read-only"]


def test_a_volume_mounted_above_the_project_hides_the_host_files_but_not_the_project(cluster: Cluster) -> None:
    # The host is every container's image; a scratch emptyDir at the project's parent (as a chart
    # mounts one at /tmp, where a CI clone may live) must not hide the venv the container runs from.
    parent = ROOT.parent
    script = (f"import os; print(sorted(os.listdir({str(parent)!r}))); "
              f"open({str(parent / 'scratch')!r}, 'w').write('ok'); print('wrote')")
    manifest = pod_manifest("under-scratch", [str(ROOT / ".venv" / "bin" / "python"), "-c", script],
                            container={"volumeMounts": [{"name": "scratch", "mountPath": str(parent)}]},
                            volumes=[{"name": "scratch", "emptyDir": {}}])
    cluster.create("Pod", manifest)
    cluster.await_phase("under-scratch", "Succeeded")
    assert pod_log(cluster.namespace, "under-scratch").splitlines() == [repr([ROOT.name]), "wrote"]
    assert not (parent / "scratch").exists()


def test_a_file_written_to_a_claim_by_one_pod_is_read_by_the_next(cluster: Cluster) -> None:
    cluster.create("PersistentVolumeClaim", {
        "metadata": {"name": "checkpoints"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Mi"}}}})
    secret_word = uuid.uuid4().hex
    volume: Json = {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "checkpoints"}}],
                    "container": {"volumeMounts": [{"name": "data", "mountPath": "/checkpoints"}]}}
    cluster.create("Pod", pod_manifest("writer", ["sh", "-c", f"echo {secret_word} > /checkpoints/epoch-1"],
                                       **volume))
    cluster.await_phase("writer", "Succeeded")
    claim = cluster.json(cluster.core.read_namespaced_persistent_volume_claim("checkpoints", cluster.namespace))
    assert claim["status"]["phase"] == "Bound"
    cluster.create("Pod", pod_manifest("reader", ["cat", "/checkpoints/epoch-1"], **volume))
    cluster.await_phase("reader", "Succeeded")
    assert pod_log(cluster.namespace, "reader").strip() == secret_word


def test_a_deployment_with_a_readiness_probe_becomes_available_and_shows_its_logs(
        cluster: Cluster, kubectl: KubectlRunner) -> None:
    port = free_port()
    container = {
        "name": "web", "image": "python", "ports": [{"name": "http", "containerPort": port}],
        "env": [{"name": "PORT", "value": str(port)}],
        "command": ["sh", "-c", "echo serving on $(PORT); exec python -m http.server $(PORT) --bind 127.0.0.1"],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    }
    cluster.create("Deployment", {
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"terminationGracePeriodSeconds": 5, "containers": [container]}}}})
    apps = client.AppsV1Api(cluster.kube)

    def available() -> bool:
        status = cluster.json(apps.read_namespaced_deployment_status("web", cluster.namespace))["status"]
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        return conditions.get("Available") == "True" and status.get("readyReplicas") == 1

    wait_for(available, 45, "the Deployment to become Available")
    logs = kubectl("logs", "-n", cluster.namespace, "deployment/web").stdout
    assert f"serving on {port}" in logs
    assert '"GET / HTTP/1.1" 200' in logs  # the readiness probe's requests, logged by the server


def test_a_container_without_command_fails_at_once_saying_why(cluster: Cluster) -> None:
    manifest = pod_manifest("image-only", [])
    del manifest["spec"]["containers"][0]["command"]
    cluster.create("Pod", manifest)
    began = time.monotonic()
    pod = cluster.await_phase("image-only", "Failed", timeout=20)
    assert time.monotonic() - began < 15
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "NoCommand"
    assert "set `command`" in terminated["message"]


def test_the_service_account_token_works_in_cluster_and_rbac_applies(cluster: Cluster) -> None:
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
        cluster.create("Pod", pod_manifest(name, ["python", "-c", script], container={"env": namespace_env}))
        cluster.await_phase(name, "Succeeded", timeout=60)
        return pod_log(cluster.namespace, name).strip()

    assert run("before-grant") == "denied 403"
    cluster.create("Role", {"metadata": {"name": "pod-reader"},
                            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]})
    cluster.create("RoleBinding", {
        "metadata": {"name": "pod-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": cluster.namespace}]})
    assert run("after-grant").startswith("listed ")


def test_deleting_a_running_pod_sends_sigterm_then_removes_it(cluster: Cluster, tmp_path: Path) -> None:
    marker_dir = tmp_path / "markers"
    script = ('trap "echo got SIGTERM; echo stopped > /markers/term; exit 0" TERM; '
              "echo started; while true; do sleep 0.2; done")
    manifest = pod_manifest("graceful", ["sh", "-c", script],
                            volumes=[{"name": "markers", "hostPath": {"path": str(marker_dir),
                                                                      "type": "DirectoryOrCreate"}}],
                            container={"volumeMounts": [{"name": "markers", "mountPath": "/markers"}]})
    manifest["spec"]["terminationGracePeriodSeconds"] = 30
    cluster.create("Pod", manifest)
    cluster.await_phase("graceful", "Running")
    wait_for(lambda: "started" in pod_log(cluster.namespace, "graceful"), 10, "the pod to print that it started")
    began = time.monotonic()
    deleting = cluster.json(cluster.core.delete_namespaced_pod("graceful", cluster.namespace))
    cluster.await_deleted(deleting, timeout=25)
    assert time.monotonic() - began < 20, "the pod took its whole grace period: SIGTERM did not end it"
    assert (marker_dir / "term").read_text() == "stopped\n"
    assert "got SIGTERM" in pod_log(cluster.namespace, "graceful")


def test_active_deadline_fails_a_long_pod(cluster: Cluster) -> None:
    cluster.create("Pod", pod_manifest("too-long", ["sleep", "120"], activeDeadlineSeconds=3))
    pod = cluster.await_phase("too-long", "Failed", timeout=30)
    assert pod["status"]["reason"] == "DeadlineExceeded"
    assert "deadline" in pod["status"]["message"]
