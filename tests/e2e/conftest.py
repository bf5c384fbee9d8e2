"""End-to-end fixtures: the operator running against the testbed, studies, and their Optuna data."""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import urllib3
from kubernetes import client, watch

from hpo_operator.models import GROUP, PLURAL, STUDY_LABEL, VERSION
from tests.conftest import ROOT
from tests.helpers import wait_for

OBJECTIVES = Path(__file__).with_name("objectives.py")


@pytest.fixture(scope="session")
def operator(kube: client.ApiClient) -> int:
    """The operator as `make operator-up` runs it (idempotent); returns its pid."""
    subprocess.run([sys.executable, "-m", "tests.testbed", "operator-up"], cwd=ROOT, check=True)
    return int((ROOT / ".testbed" / "operator.pid").read_text())


@pytest.fixture
def objectives(kube: client.ApiClient, namespace: str) -> dict[str, Any]:
    """The test objectives as a ConfigMap, and the trial template that mounts it into trial pods."""
    client.CoreV1Api(kube).create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="objectives"), data={"objectives.py": OBJECTIVES.read_text()}))
    return {"spec": {
        "containers": [{"name": "trial", "env": [{"name": "PYTHONPATH", "value": "/objectives"}],
                        "volumeMounts": [{"name": "objectives", "mountPath": "/objectives"}]}],
        "volumes": [{"name": "objectives", "configMap": {"name": "objectives"}}],
    }}


class Studies:
    """Create, read and wait on HpoStudy objects in one namespace."""

    def __init__(self, kube: client.ApiClient, namespace: str) -> None:
        self.api = client.CustomObjectsApi(kube)
        self.core = client.CoreV1Api(kube)
        self.namespace = namespace

    def create(self, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "HpoStudy", "metadata": {"name": name}, "spec": spec}
        self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def get(self, name: str) -> dict[str, Any]:
        return dict(self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name))

    def patch(self, name: str, spec: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec})

    def wait(self, name: str, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """Watch the study until ``predicate(study)`` holds."""
        current = self.get(name)
        if predicate(current):
            return current
        stream = watch.Watch()
        for event in stream.stream(self.api.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                                   field_selector=f"metadata.name={name}", timeout_seconds=int(timeout),
                                   resource_version=current["metadata"]["resourceVersion"]):
            if predicate(event["object"]):
                stream.stop()
                return dict(event["object"])
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for study {name} to {what}; "
                             f"last status: {self.get(name).get('status')}")

    def wait_phase(self, name: str, phase: str, timeout: float = 240) -> dict[str, Any]:
        return self.wait(name, lambda s: (s.get("status") or {}).get("phase") == phase, timeout, f"reach {phase}")

    def optuna_study(self, name: str) -> optuna.Study:
        """The study as Optuna reads it from the database, through the study's own storage Secret."""
        secret = self.core.read_namespaced_secret(f"{name}-storage", self.namespace)
        url = base64.b64decode(secret.data["url"]).decode()
        return optuna.load_study(study_name=name, storage=url)

    def events(self, name: str) -> list[client.CoreV1Event]:
        return list(self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name},involvedObject.kind=HpoStudy").items)


@pytest.fixture
def studies(kube: client.ApiClient, namespace: str, operator: int) -> Studies:
    return Studies(kube, namespace)


class LivePods:
    """Watches a study's trial pods and remembers the most that were alive (not yet ended) at once."""

    def __init__(self, kube: client.ApiClient, namespace: str, study: str) -> None:
        self.live: set[str] = set()
        self.most = 0
        self.seen: set[str] = set()
        self._stream = watch.Watch()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(client.CoreV1Api(kube), namespace, study),
                                        daemon=True)
        self._thread.start()

    def _run(self, core: client.CoreV1Api, namespace: str, study: str) -> None:
        version = ""
        while not self._stopped.is_set():  # a watch may end at any time: resume where it stopped
            try:
                for event in self._stream.stream(core.list_namespaced_pod, namespace, resource_version=version,
                                                 label_selector=f"{STUDY_LABEL}={study}", timeout_seconds=60):
                    pod = event["object"]
                    version = pod.metadata.resource_version
                    self.seen.add(pod.metadata.name)
                    ended = event["type"] == "DELETED" or pod.status.phase in ("Succeeded", "Failed")
                    (self.live.discard if ended else self.live.add)(pod.metadata.name)
                    self.most = max(self.most, len(self.live))
            except (urllib3.exceptions.HTTPError, client.ApiException):
                continue

    def stop(self) -> None:
        self._stopped.set()
        self._stream.stop()


@pytest.fixture
def live_pods(kube: client.ApiClient, namespace: str) -> Iterator[Callable[[str], LivePods]]:
    watchers: list[LivePods] = []

    def start(study: str) -> LivePods:
        watchers.append(LivePods(kube, namespace, study))
        wait_for(lambda: watchers[-1]._thread.is_alive(), 5, "the pod watch to start")
        return watchers[-1]

    yield start
    for watcher in watchers:
        watcher.stop()
