"""Probes and lifecycle handlers: httpGet, tcpSocket and exec checks, and the thresholds around them.

A container run gets one `Prober` thread per probe. It runs the check on the probe's schedule and
reports only transitions, after `successThreshold`/`failureThreshold` consecutive results, as the
kubelet's prober does: readiness starts failed, liveness starts healthy, startup gates the others.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Json = dict[str, Any]
ExecFn = Callable[[list[str], float], tuple[int | None, str]]
CheckFn = Callable[[], tuple[bool, str]]
ChangeFn = Callable[[str, bool, str], None]

STARTUP, LIVENESS, READINESS = "startup", "liveness", "readiness"
USER_AGENT = "kube-probe/testbed"


def resolve_port(container: Json, port: int | str) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"container has no port named {port!r}")


def _http_get(action: Json, container: Json, host_ip: str, timeout_s: float) -> tuple[bool, str]:
    host = action.get("host") or host_ip
    port = resolve_port(container, action["port"])
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    headers.update({item["name"]: item["value"] for item in action.get("httpHeaders") or []})
    if action.get("scheme", "HTTP").upper() == "HTTPS":
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=timeout_s,
                                                                             context=context)
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("GET", action.get("path") or "/", headers=headers)
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as error:
        return False, f"Get {host}:{port}{action.get('path', '/')}: {error}"
    finally:
        connection.close()
    return 200 <= status < 400, f"HTTP probe failed with statuscode: {status}"


def _tcp_socket(action: Json, container: Json, host_ip: str, timeout_s: float) -> tuple[bool, str]:
    host, port = action.get("host") or host_ip, resolve_port(container, action["port"])
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True, ""
    except OSError as error:
        return False, f"dial tcp {host}:{port}: {error}"


def run_action(action: Json, container: Json, host_ip: str, timeout_s: float, exec_fn: ExecFn) -> tuple[bool, str]:
    """One check (or lifecycle handler): (succeeded, message)."""
    try:
        if "exec" in action:
            code, output = exec_fn(list(action["exec"].get("command") or []), timeout_s)
            if code is None:
                return False, f"command timed out after {timeout_s:g}s"
            return code == 0, output.strip() or f"command exited with {code}"
        if "httpGet" in action:
            return _http_get(action["httpGet"], container, host_ip, timeout_s)
        if "tcpSocket" in action:
            return _tcp_socket(action["tcpSocket"], container, host_ip, timeout_s)
    except ValueError as error:
        return False, str(error)
    return False, f"unsupported handler {sorted(set(action) & {'grpc', 'sleep'}) or sorted(action)}"


class Prober(threading.Thread):
    """Runs one probe for one container run until the run ends (or, for startup, until it passes)."""

    def __init__(self, kind: str, probe: Json, began: float, check: CheckFn, on_change: ChangeFn,
                 stop: threading.Event, gate: threading.Event | None) -> None:
        super().__init__(name=f"probe-{kind}", daemon=True)
        self.kind = kind
        self._probe = probe
        self._began = began
        self._check = check
        self._on_change = on_change
        self._stop_event = stop
        self._gate = gate
        self._state: bool | None = {STARTUP: None, LIVENESS: True, READINESS: False}[kind]
        self._last: bool | None = None
        self._streak = 0

    def run(self) -> None:
        delay = self._began + float(self._probe.get("initialDelaySeconds", 0)) - time.monotonic()
        if delay > 0 and self._stop_event.wait(delay):
            return
        while self._gate is not None and not self._gate.wait(0.2):
            if self._stop_event.is_set():
                return
        period = float(self._probe.get("periodSeconds") or 10)
        while not self._stop_event.is_set():
            ok, message = self._check()
            if self._stop_event.is_set() or self._record(ok, message):
                return
            self._stop_event.wait(period)

    def _record(self, ok: bool, message: str) -> bool:
        """Count a result as the kubelet does (a run of equal results reaching its threshold sets the
        state); report a change of state; True when this prober's work is over."""
        self._streak = self._streak + 1 if ok == self._last else 1
        self._last = ok
        threshold = int(self._probe.get("successThreshold" if ok else "failureThreshold") or (1 if ok else 3))
        if self._streak >= threshold and ok != self._state:
            self._state = ok
            self._on_change(self.kind, ok, message)
        if self.kind == STARTUP:
            return self._state is not None
        return self.kind == LIVENESS and self._state is False
