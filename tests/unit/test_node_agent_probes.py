"""Node agent: probe checks and thresholds, and the restart policy with its backoff."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from tests.testbed.node_agent.probes import LIVENESS, READINESS, STARTUP, Prober, resolve_port, run_action
from tests.testbed.node_agent.runner import backoff_delay, should_restart

pytestmark = pytest.mark.unit


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = 200 if self.path == "/ok" and self.headers.get("X-Probe") == "yes" else 500
        self.send_response(code)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def no_exec(argv: list[str], timeout_s: float) -> tuple[int | None, str]:
    raise AssertionError("not an exec probe")


def test_http_probes_use_named_ports_paths_and_headers(http_port: int) -> None:
    container = {"ports": [{"name": "web", "containerPort": http_port}]}
    good = {"httpGet": {"port": "web", "path": "/ok", "httpHeaders": [{"name": "X-Probe", "value": "yes"}]}}
    assert run_action(good, container, "127.0.0.1", 1, no_exec) == (True, "HTTP probe failed with statuscode: 200")
    ok, message = run_action({"httpGet": {"port": http_port, "path": "/ok"}}, container, "127.0.0.1", 1, no_exec)
    assert not ok and "500" in message
    ok, message = run_action({"httpGet": {"port": "nope"}}, container, "127.0.0.1", 1, no_exec)
    assert not ok and "no port named" in message


def test_tcp_probes_connect(http_port: int) -> None:
    assert run_action({"tcpSocket": {"port": http_port}}, {}, "127.0.0.1", 1, no_exec)[0]
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    assert not run_action({"tcpSocket": {"port": closed_port}}, {}, "127.0.0.1", 1, no_exec)[0]


def test_exec_probes_succeed_on_exit_zero_and_fail_on_timeout() -> None:
    results = iter([(0, ""), (1, "boom\n"), (None, "")])

    def fake_exec(argv: list[str], timeout_s: float) -> tuple[int | None, str]:
        assert argv == ["check"] and timeout_s == 2
        return next(results)

    action = {"exec": {"command": ["check"]}}
    assert run_action(action, {}, "127.0.0.1", 2, fake_exec)[0]
    assert run_action(action, {}, "127.0.0.1", 2, fake_exec) == (False, "boom")
    assert run_action(action, {}, "127.0.0.1", 2, fake_exec) == (False, "command timed out after 2s")


def test_ports_resolve_by_number_or_name() -> None:
    assert resolve_port({}, 80) == 80 and resolve_port({}, "8080") == 8080
    assert resolve_port({"ports": [{"name": "metrics", "containerPort": 9090}]}, "metrics") == 9090


def run_prober(kind: str, results: list[bool], **probe: Any) -> list[bool]:
    """Feed a prober scripted results; return the state changes it reported."""
    changes: list[bool] = []
    stop = threading.Event()
    script = iter(results)

    def check() -> tuple[bool, str]:
        try:
            return next(script), ""
        except StopIteration:
            stop.set()
            return False, ""

    prober = Prober(kind, {"periodSeconds": 0.001, **probe}, 0.0, check,
                    lambda _kind, ok, _message: changes.append(ok), stop, None)
    prober.run()
    return changes


def test_readiness_flips_after_consecutive_results() -> None:
    results = [True, False, True, True, False, False, True]
    assert run_prober(READINESS, results, successThreshold=2, failureThreshold=2) == [True, False]


def test_liveness_reports_failure_once_and_stops() -> None:
    assert run_prober(LIVENESS, [True, False, False, True, False, False, False], failureThreshold=3) == [False]


def test_startup_ends_at_the_first_success_or_the_failure_threshold() -> None:
    assert run_prober(STARTUP, [False, False, True, False], failureThreshold=3) == [True]
    assert run_prober(STARTUP, [False, False, False, True], failureThreshold=3) == [False]


@pytest.mark.parametrize(("policy", "code", "init", "restart"), [
    ("Always", 0, False, True), ("Always", 1, False, True),
    ("OnFailure", 0, False, False), ("OnFailure", 2, False, True),
    ("Never", 1, False, False),
    ("Always", 0, True, False), ("Always", 1, True, True), ("Never", 1, True, False),
])
def test_restart_policy(policy: str, code: int, init: bool, restart: bool) -> None:
    assert should_restart(policy, code, init) is restart


def test_backoff_doubles_up_to_ten_seconds() -> None:
    assert [backoff_delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
