"""The kubelet API this node serves: container logs for `kubectl logs`, and /healthz.

The API server reaches a node's kubelet over TLS on the Node's daemon endpoint port, presenting its
kubelet-client certificate; this server accepts only clients signed by the cluster CA and answers
`GET /containerLogs/{namespace}/{pod}/{container}` with the kubelet's query options, streaming with
`follow=true` until the container's run ends.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.testbed.node_agent.logs import LogQuery, LogTarget, parse_timestamp, stream_log
from tests.testbed.node_agent.settings import AgentSettings

log = logging.getLogger(__name__)

FindLog = Callable[[str, str, str, bool], LogTarget | None]

HANDSHAKE_TIMEOUT_S = 10.0
TRUE = ("true", "1")


def _int(values: dict[str, list[str]], name: str) -> int | None:
    raw = values.get(name, [""])[0]
    if raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"invalid {name}: {raw!r}") from None


def parse_log_query(query: str, now_ns: int | None = None) -> LogQuery:
    """The kubelet's container-log options from a query string; ValueError for malformed ones."""
    values = parse_qs(query)
    now_ns = time.time_ns() if now_ns is None else now_ns
    since_seconds = _int(values, "sinceSeconds")
    since_ns = None if since_seconds is None else now_ns - since_seconds * 10**9
    if values.get("sinceTime"):
        try:
            since_ns = parse_timestamp(values["sinceTime"][0])
        except ValueError:
            raise ValueError(f"invalid sinceTime: {values['sinceTime'][0]!r}") from None
    tail = _int(values, "tailLines")
    return LogQuery(
        follow=values.get("follow", [""])[0] in TRUE,
        tail_lines=tail if tail is None or tail >= 0 else None,
        timestamps=values.get("timestamps", [""])[0] in TRUE,
        since_ns=since_ns,
        limit_bytes=_int(values, "limitBytes"),
        previous=values.get("previous", [""])[0] in TRUE,
    )


class _TLSServer(ThreadingHTTPServer):
    """Threads per connection, with the TLS handshake done in the connection's thread."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext, find: FindLog) -> None:
        super().__init__(address, _Handler)
        self.context = context
        self.find = find

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            connection = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            log.debug("TLS handshake with %s failed: %s", client_address, error)
            return
        connection.settimeout(None)
        try:
            _Handler(connection, client_address, self)
        finally:
            connection.close()


class _Handler(BaseHTTPRequestHandler):
    server: _TLSServer
    protocol_version = "HTTP/1.0"  # bodies end when the connection closes: right for follow streams

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        parts = [unquote(part) for part in url.path.strip("/").split("/")]
        if parts == ["healthz"]:
            self._text(200, "ok")
        elif len(parts) == 4 and parts[0] == "containerLogs":
            self._container_logs(parts[1], parts[2], parts[3], url.query)
        else:
            self._text(404, f"{url.path}: not served by the testbed node agent")

    def _container_logs(self, namespace: str, pod: str, container: str, query: str) -> None:
        try:
            options = parse_log_query(query)
        except ValueError as error:
            self._text(400, str(error))
            return
        target = self.server.find(namespace, pod, container, options.previous)
        if target is None:
            if options.previous:
                self._text(400, f'previous terminated container "{container}" in pod "{pod}" not found')
            else:
                self._text(404, f'container "{container}" in pod "{pod}" has not started or is not on this node')
            return
        path, live = target
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        with contextlib.suppress(TimeoutError, BrokenPipeError, ConnectionResetError, ssl.SSLError):
            stream_log(path, options, live, self._write)  # a client going away ends the stream

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def _text(self, code: int, text: str) -> None:
        body = (text + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class KubeletServer:
    """Serves the kubelet endpoints on 127.0.0.1:<port> until stopped."""

    def __init__(self, settings: AgentSettings, find: FindLog) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(settings.serving_cert, settings.serving_key)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(settings.client_ca)
        self._server = _TLSServer((settings.host_ip, settings.port), context, find)
        self._thread = threading.Thread(target=self._server.serve_forever, name="kubelet-server", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
