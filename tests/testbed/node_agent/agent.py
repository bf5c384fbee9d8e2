"""The node agent's main loop: start-up, the pod watch, one worker per pod, and shutdown.

Start-up cleans what a previous agent left (processes, state of pods that are gone), serves the
kubelet endpoint, registers the Node and starts its heartbeat. Then one watch on the pods bound to
this node (`spec.nodeName=<node>`, re-listing on 410 Gone) hands every pod to its `PodWorker`. On
SIGTERM every pod's containers are stopped and waited for before the agent exits 0.
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
from types import FrameType

from tests.testbed.node_agent import processes
from tests.testbed.node_agent.events import EventRecorder
from tests.testbed.node_agent.kube import Json, Kube, is_status
from tests.testbed.node_agent.logs import LogTarget
from tests.testbed.node_agent.node import NodeHeartbeat
from tests.testbed.node_agent.pods import AgentServices, PodWorker, is_orphaned
from tests.testbed.node_agent.server import KubeletServer
from tests.testbed.node_agent.settings import AgentSettings

log = logging.getLogger(__name__)

WATCH_TIMEOUT_S = 300
RETRY_S = 1.0
API_WAIT_LOG_S = 10.0
SHUTDOWN_JOIN_S = 30.0


class Agent:
    """Owns the workers; everything else runs on their threads."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.kube = Kube(str(settings.kubeconfig), settings.node_name)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: dict[str, PodWorker] = {}
        self._events = EventRecorder(self.kube, settings.node_name)
        self._services = AgentServices(self.kube, settings, self._events, self._forget)
        self._listed = False

    def run(self) -> int:
        processes.become_subreaper()
        threading.Thread(target=processes.run_reaper, args=(self._stop,), name="reaper", daemon=True).start()
        self._events.start()
        self.settings.pods_dir.mkdir(parents=True, exist_ok=True)
        self.settings.pod_log_dir.mkdir(parents=True, exist_ok=True)
        processes.sweep_recorded(sorted(self.settings.pods_dir.glob("*/containers/*/mount-namespace")))
        server = KubeletServer(self.settings, self.find_log)
        server.start()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info("serving the kubelet API on %s:%d", self.settings.host_ip, self.settings.port)
        heartbeat = NodeHeartbeat(self.kube, self.settings, self._stop)
        version = self._server_version()
        if version and heartbeat.register(version):
            heartbeat.start()
            threading.Thread(target=self._watch_pods, name="pod-watch", daemon=True).start()
        while not self._stop.wait(1.0):
            pass
        self._stop_pods()
        server.stop()
        processes.reap_orphans()
        log.info("node agent stopped")
        return 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping every pod", signal.Signals(signum).name)
        self._stop.set()

    def _server_version(self) -> str | None:
        waited = 0.0
        while not self._stop.is_set():
            try:
                return self.kube.server_version()
            except Exception as error:
                if waited % API_WAIT_LOG_S == 0:
                    log.info("waiting for the API server: %s", error)
            self._stop.wait(RETRY_S)
            waited += RETRY_S
        return None

    # The pod watch.

    def _watch_pods(self) -> None:
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._relist()
                resource_version = self._follow(resource_version)
            except Exception as error:
                if is_status(error, 410):
                    resource_version = None
                else:
                    log.warning("pod watch failed, resuming: %s", error)
                    self._stop.wait(RETRY_S)

    def _follow(self, resource_version: str) -> str | None:
        """Dispatch watch events until the server ends the watch; the version to resume from (None: re-list)."""
        for event in self.kube.watch_pods(resource_version, WATCH_TIMEOUT_S):
            if self._stop.is_set():
                break
            kind, obj = event["type"], event["object"]
            if kind == "ERROR":
                if obj.get("code") == 410:
                    log.info("pod watch expired (410), re-listing")
                    return None
                raise RuntimeError(f"pod watch error: {obj.get('message')}")
            resource_version = obj["metadata"]["resourceVersion"]
            if kind != "BOOKMARK":
                self._dispatch(kind, obj, at_start=False)
        return resource_version

    def _relist(self) -> str:
        pods, resource_version = self.kube.list_pods()
        at_start = not self._listed
        for pod in pods:
            self._dispatch("MODIFIED", pod, at_start)
        present = {pod["metadata"]["uid"] for pod in pods}
        with self._lock:
            missing = [worker for uid, worker in self._workers.items() if uid not in present]
        for worker in missing:
            worker.gone()
        if at_start:
            self._remove_stale_state(present)
            self._listed = True
        return resource_version

    def _dispatch(self, kind: str, pod: Json, at_start: bool) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            worker = self._workers.get(uid)
            if worker is not None:
                worker.gone() if kind == "DELETED" else worker.observe(pod)
                return
            if kind == "DELETED" or self._stop.is_set():
                return
            worker = PodWorker(self._services, pod, orphaned=at_start and is_orphaned(pod))
            self._workers[uid] = worker
        worker.start()

    def _forget(self, worker: PodWorker) -> None:
        with self._lock:
            if self._workers.get(worker.uid) is worker:
                del self._workers[worker.uid]

    def _remove_stale_state(self, present: set[str]) -> None:
        """Per-pod state of pods that no longer exist (deleted while no agent ran)."""
        for directory in self.settings.pods_dir.iterdir():
            if directory.name not in present:
                shutil.rmtree(directory, ignore_errors=True)

    def _stop_pods(self) -> None:
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.shutdown()
        for worker in workers:
            worker.join(SHUTDOWN_JOIN_S)
            if worker.is_alive():
                log.error("pod %s: worker did not stop in %ss", worker.key, SHUTDOWN_JOIN_S)

    # The kubelet API.

    def find_log(self, namespace: str, pod: str, container: str, previous: bool) -> LogTarget | None:
        with self._lock:
            workers = [w for w in self._workers.values() if (w.pod_namespace, w.pod_name) == (namespace, pod)]
        for worker in reversed(workers):
            target = worker.log_target(container, previous)
            if target is not None:
                return target
        return None
