"""Every pod's log in a namespace, kept after the pod is gone (`kubectl logs` needs the pod to exist).

The operator deletes a finished trial's Job, and its pods with it, so a test that wants to read what
a trial printed follows each pod's log from the moment its container starts, through the API
server and the node's kubelet, exactly as `kubectl logs -f` does.
"""

from __future__ import annotations

import threading
from types import TracebackType

import urllib3
from kubernetes import client, watch


class PodLogs:
    """Follow the log of every pod in ``namespace`` (optionally matching ``selector``) while in use.

    Use as a context manager; ``text(pod)`` is what that pod printed so far, ``all()`` every log.
    """

    def __init__(self, kube: client.ApiClient, namespace: str, selector: str = "") -> None:
        self.core = client.CoreV1Api(kube)
        self.namespace, self.selector = namespace, selector
        self._logs: dict[str, str] = {}
        self._followed: set[str] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._stream = watch.Watch()
        self._watcher = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> PodLogs:
        self._watcher.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stopped.set()
        self._stream.stop()

    def text(self, pod: str) -> str:
        with self._lock:
            return self._logs.get(pod, "")

    def all(self) -> dict[str, str]:
        with self._lock:
            return dict(self._logs)

    def _watch(self) -> None:
        version = ""
        while not self._stopped.is_set():  # a watch may end at any time: resume where it stopped
            try:
                for event in self._stream.stream(
                    self.core.list_namespaced_pod,
                    self.namespace,
                    label_selector=self.selector,
                    resource_version=version,
                    timeout_seconds=60,
                ):
                    pod = event["object"]
                    version = pod.metadata.resource_version
                    statuses = pod.status.container_statuses or []
                    started = any(s.state and (s.state.running or s.state.terminated) for s in statuses)
                    name = pod.metadata.name
                    if started and name not in self._followed:
                        self._followed.add(name)
                        threading.Thread(target=self._follow, args=(name,), daemon=True).start()
            except (urllib3.exceptions.HTTPError, client.ApiException):
                continue

    def _follow(self, pod: str) -> None:
        try:
            response = self.core.read_namespaced_pod_log(pod, self.namespace, follow=True, _preload_content=False)
            for chunk in response.stream(1024):
                with self._lock:
                    self._logs[pod] = self._logs.get(pod, "") + chunk.decode(errors="replace")
        except (urllib3.exceptions.HTTPError, client.ApiException):
            return  # the pod went away: what was read is kept
