"""End-to-end fixtures: the operator running against the testbed, studies, and their Optuna data."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, watch

from hpo_operator.models import STUDY_LABEL
from tests.conftest import ROOT
from tests.helpers import wait_for
from tests.studies import Studies
from tests.testbed.layout import HOST_IP, OTHER_MYSQL_IP

OBJECTIVES = Path(__file__).with_name("objectives.py")


# The operator's policy in these tests: besides the default server, studies may name 127.0.0.2
# (where tests run fake MySQL servers) and the testbed's MariaDB at its second address; trial pods
# may run as `trainer`; `hpo-operator-home` plays the operator's own namespace (where the chart keeps
# the admin Secret).
OPERATOR_NAMESPACE = "hpo-operator-home"
DELETE_TIMEOUT_SECONDS = 30
OPERATOR_POLICY = {
    "HPO_STORAGE_HOSTS": f"{HOST_IP},127.0.0.2,{OTHER_MYSQL_IP}",
    "HPO_TRIAL_SERVICE_ACCOUNTS": "trainer",
    "HPO_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE,
    # Shorter bounds than production's, so the tests of losing things finish sooner.
    "HPO_DELETE_TIMEOUT_SECONDS": str(DELETE_TIMEOUT_SECONDS),
    "HPO_TRIAL_LOST_SECONDS": "45",
}


def start_operator() -> int:
    """`make operator-up` with the tests' policy (idempotent; restarts an operator with other settings)."""
    subprocess.run(
        [sys.executable, "-m", "tests.testbed", "operator-up"],
        cwd=ROOT,
        check=True,
        env={**os.environ, **OPERATOR_POLICY},
    )
    return int((ROOT / ".testbed" / "operator.pid").read_text())


@pytest.fixture(scope="session")
def started_operator(kube: client.ApiClient) -> None:
    """The operator as `make operator-up` runs it, with the tests' policy, started once per session."""
    start_operator()


@pytest.fixture
def operator(started_operator: None) -> int:
    """The pid of the operator running now (a test that killed it started another)."""
    return int((ROOT / ".testbed" / "operator.pid").read_text())


@pytest.fixture
def objectives(kube: client.ApiClient, namespace: str) -> dict[str, Any]:
    """The test objectives as a ConfigMap, and the trial template that mounts it into trial pods."""
    client.CoreV1Api(kube).create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="objectives"), data={"objectives.py": OBJECTIVES.read_text()}
        ),
    )
    return {
        "spec": {
            "containers": [
                {
                    "name": "trial",
                    "env": [{"name": "PYTHONPATH", "value": "/objectives"}],
                    "volumeMounts": [{"name": "objectives", "mountPath": "/objectives"}],
                }
            ],
            "volumes": [{"name": "objectives", "configMap": {"name": "objectives"}}],
        }
    }


@pytest.fixture
def studies(kube: client.ApiClient, namespace: str, operator: int) -> Studies:
    return Studies(kube, namespace)


class LivePods:
    """Watches a study's trial pods and remembers the most that were alive (not yet ended) at once."""

    def __init__(self, kube: client.ApiClient, namespace: str, study: str) -> None:
        self.live: dict[str, str] = {}
        self.most = 0
        self.peak: list[str] = []  # the live pods when there were most, to say which ones in a failure
        self.seen: set[str] = set()
        self._stream = watch.Watch()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(client.CoreV1Api(kube), namespace, study), daemon=True)
        self._thread.start()

    def _run(self, core: client.CoreV1Api, namespace: str, study: str) -> None:
        version = ""
        while not self._stopped.is_set():  # a watch may end at any time: resume where it stopped
            try:
                for event in self._stream.stream(
                    core.list_namespaced_pod,
                    namespace,
                    resource_version=version,
                    label_selector=f"{STUDY_LABEL}={study}",
                    timeout_seconds=60,
                ):
                    pod = event["object"]
                    version = pod.metadata.resource_version
                    self.seen.add(pod.metadata.name)
                    ended = event["type"] == "DELETED" or pod.status.phase in ("Succeeded", "Failed")
                    if ended:
                        self.live.pop(pod.metadata.name, None)
                    else:
                        self.live[pod.metadata.name] = _describe(pod)
                    if len(self.live) > self.most:
                        self.most, self.peak = len(self.live), sorted(self.live.values())
            except (urllib3.exceptions.HTTPError, client.ApiException):
                continue

    def stop(self) -> None:
        self._stopped.set()
        self._stream.stop()


def _describe(pod: client.V1Pod) -> str:
    ready = next((c.status for c in pod.status.conditions or [] if c.type == "Ready"), "?")
    states = [next(k for k, v in s.state.to_dict().items() if v) for s in pod.status.container_statuses or []]
    deleting = " deleting" if pod.metadata.deletion_timestamp else ""
    return f"{pod.metadata.name} {pod.status.phase} ready={ready} containers={states}{deleting}"


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
