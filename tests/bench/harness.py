"""The testbed side of the benchmarks: a namespace with the objective, an observer that times pods
and Jobs with this machine's clock, and the operator's own figures (metrics, memory).

`make bench` starts the testbed and the operator (`make operator-up`) before any of this runs.
"""

from __future__ import annotations

import contextlib
import datetime
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client, config, watch
from prometheus_client.parser import text_string_to_metric_families

from hpo_operator import database
from hpo_operator.models import DISPATCHED_AT_ANNOTATION, TRIAL_LABEL
from tests.bench.report import progress
from tests.mysql import admin_server
from tests.studies import Studies
from tests.testbed import cluster, layout
from tests.testbed.operator import METRICS_PORT

OBJECTIVES = layout.ROOT / "tests" / "bench" / "objectives.py"


def api() -> client.ApiClient:
    cluster.require_running("bench")
    return config.new_client_from_config(str(cluster.KUBECONFIG))


def testbed_env() -> dict[str, str]:
    """The `HPO_*` values `.testbed/env` exports (the MariaDB admin, the images)."""
    return dict(
        line.removeprefix("export ").split("=", 1)
        for line in cluster.ENV_FILE.read_text().splitlines()
        if line.startswith("export HPO_")
    )


def mysql_admin() -> database.Server:
    """The testbed's MariaDB admin, as the operator gets it (the baseline provisions its own database)."""
    return admin_server(testbed_env())


def objective_template(sleep_s: float) -> dict[str, Any]:
    """A trial pod template that runs tests/bench/objectives.py, mounted from the ConfigMap `objectives`."""
    return {
        "spec": {
            "containers": [
                {
                    "name": "trial",
                    "env": [
                        {"name": "PYTHONPATH", "value": "/objectives"},
                        {"name": "BENCH_SLEEP_S", "value": str(sleep_s)},
                    ],
                    "volumeMounts": [{"name": "objectives", "mountPath": "/objectives"}],
                }
            ],
            "volumes": [{"name": "objectives", "configMap": {"name": "objectives"}}],
        }
    }


def study_spec(trials: int, parallelism: int, sleep_s: float, **extra: Any) -> dict[str, Any]:
    return {
        "searchSpace": {"x": {"type": "float", "low": -5, "high": 5}},
        "budget": {"trials": trials, "parallelism": parallelism},
        "storage": {"deletionPolicy": "Delete"},
        "trial": {"objective": "objectives:sleep", "template": objective_template(sleep_s)},
        **extra,
    }


@contextlib.contextmanager
def namespace(kube: client.ApiClient, prefix: str) -> Iterator[str]:
    """A fresh namespace holding the objectives ConfigMap; deleted afterwards (the operator drops the databases)."""
    core = client.CoreV1Api(kube)
    name = f"bench-{prefix}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_config_map(
        name,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="objectives"), data={"objectives.py": OBJECTIVES.read_text()}
        ),
    )
    try:
        yield name
    finally:
        core.delete_namespace(name)


@dataclass
class PodTimes:
    """When this machine saw a pod appear, start running and end (its whole life as a slot holder), and its labels."""

    seen: float
    labels: dict[str, str]
    running: float | None = None
    ended: float | None = None


@dataclass
class Timeline:
    """Watches a namespace's pods and Jobs, stamping each pod's appearance and end with time.time().

    Kubernetes timestamps are whole seconds; this observer adds only its watch latency, the same
    for the operator's pods and the baseline's. Jobs are remembered with their annotations because
    the operator deletes the Jobs of finished trials.
    """

    kube: client.ApiClient
    namespace: str
    pods: dict[str, PodTimes] = field(default_factory=dict)
    dispatched: dict[str, tuple[int, float]] = field(default_factory=dict)  # Job -> (trial, operator's time)
    _stopped: threading.Event = field(default_factory=threading.Event)
    _streams: list[watch.Watch] = field(default_factory=list)

    def __enter__(self) -> Timeline:
        core, batch = client.CoreV1Api(self.kube), client.BatchV1Api(self.kube)
        listening = [threading.Event(), threading.Event()]
        for (lister, record), ready in zip(
            ((core.list_namespaced_pod, self._pod), (batch.list_namespaced_job, self._job)), listening, strict=True
        ):
            threading.Thread(target=self._follow, args=(lister, record, ready), daemon=True).start()
        for ready in listening:
            if not ready.wait(30):
                raise RuntimeError(f"could not list the objects of namespace {self.namespace}")
        return self

    def __exit__(self, *_: object) -> None:
        self._stopped.set()
        for stream in self._streams:
            stream.stop()

    def _follow(self, lister: Any, record: Any, ready: threading.Event) -> None:
        stream = watch.Watch()
        self._streams.append(stream)
        version = ""
        while not self._stopped.is_set():  # a watch may end at any time: resume where it stopped
            try:
                if not version:
                    listed = lister(self.namespace)
                    for item in listed.items:
                        record("ADDED", item, time.time())
                    version = listed.metadata.resource_version
                    ready.set()
                for event in stream.stream(lister, self.namespace, resource_version=version, timeout_seconds=60):
                    version = event["object"].metadata.resource_version
                    record(event["type"], event["object"], time.time())
            except (urllib3.exceptions.HTTPError, client.ApiException):
                version = ""

    def _pod(self, kind: str, pod: client.V1Pod, now: float) -> None:
        times = self.pods.setdefault(pod.metadata.name, PodTimes(now, dict(pod.metadata.labels or {})))
        if times.running is None and pod.status.phase in ("Running", "Succeeded", "Failed"):
            times.running = now
        if times.ended is None and (kind == "DELETED" or pod.status.phase in ("Succeeded", "Failed")):
            times.ended = now

    def _job(self, _kind: str, job: client.V1Job, _now: float) -> None:
        stamp = (job.metadata.annotations or {}).get(DISPATCHED_AT_ANNOTATION)
        trial = (job.metadata.labels or {}).get(TRIAL_LABEL)
        if stamp is not None and trial is not None:
            self.dispatched.setdefault(job.metadata.name, (int(trial), parse_time(stamp)))

    def trial_dispatch_times(self) -> dict[int, float]:
        """Trial number -> when the operator created its first Job (the operator's own clock)."""
        times: dict[int, float] = {}
        for trial, stamp in self.dispatched.values():
            times[trial] = min(stamp, times.get(trial, stamp))
        return times

    def ended_pods(self) -> list[PodTimes]:
        return [p for p in self.pods.values() if p.ended is not None]


def parse_time(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def operator_metrics() -> dict[str, float]:
    """The operator's Prometheus samples by name (summed over labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name] = samples.get(sample.name, 0.0) + sample.value
    return samples


def operator_pid() -> int:
    return int((layout.TESTBED / "operator.pid").read_text())


def reset_peak_memory(pid: int) -> None:
    """Start the kernel's peak-RSS count (VmHWM) afresh, so it covers only what follows."""
    with open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")


def peak_memory_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def await_studies(studies: Studies, names: list[str], timeout: float) -> float:
    """Wait until every study has Succeeded, showing progress; returns when the last one did."""
    for done, name in enumerate(names, 1):
        studies.wait_phase(name, "Succeeded", timeout)
        if len(names) > 1:
            progress(f"  {done}/{len(names)} studies succeeded")
    return time.time()
