"""A hostile MySQL server for security tests: it asks every client for its password in clear text.

It speaks just enough of the MySQL protocol (handshake v10, then an AuthSwitchRequest to
`mysql_clear_password`) to learn what a client would give away, and records every connection:
the user name the client sent and any password it answered with. A client that does the right
thing hangs up after the switch; one that complies hands over its password.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field

_CAPABILITIES = (
    0x00000001  # CLIENT_LONG_PASSWORD
    | 0x00000008  # CLIENT_CONNECT_WITH_DB
    | 0x00000200  # CLIENT_PROTOCOL_41
    | 0x00002000  # CLIENT_TRANSACTIONS
    | 0x00008000  # CLIENT_SECURE_CONNECTION
    | 0x00080000  # CLIENT_PLUGIN_AUTH
)


@dataclass
class Attempt:
    """One connection: who the client said it was, and the clear-text password if it sent one."""

    user: str = ""
    cleartext_password: str | None = None


@dataclass
class FakeMySQL:
    """Listen on ``host`` (any free port) until ``close``; ``attempts`` lists every connection."""

    host: str = "127.0.0.2"
    port: int = 0
    attempts: list[Attempt] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._socket = socket.create_server((self.host, self.port))
        self.port = self._socket.getsockname()[1]
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._socket.close()

    def users(self) -> list[str]:
        with self._lock:
            return [attempt.user for attempt in self.attempts]

    def passwords(self) -> list[str]:
        with self._lock:
            return [a.cleartext_password for a in self.attempts if a.cleartext_password is not None]

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return  # closed
            attempt = Attempt()
            with self._lock:
                self.attempts.append(attempt)
            threading.Thread(target=self._talk, args=(connection, attempt), daemon=True).start()

    def _talk(self, connection: socket.socket, attempt: Attempt) -> None:
        with connection:
            connection.settimeout(10)
            try:
                _send(connection, 0, _handshake())
                response = _receive(connection)
                user = response[32 : response.index(b"\0", 32)].decode(errors="replace")
                with self._lock:
                    attempt.user = user
                _send(connection, 2, b"\xfemysql_clear_password\0")
                answer = _receive(connection)
                with self._lock:
                    attempt.cleartext_password = answer.rstrip(b"\0").decode(errors="replace")
                _send(connection, 4, b"\xff" + struct.pack("<H", 1045) + b"#28000Access denied")
            except (OSError, ValueError, ConnectionError):
                return  # the client hung up: what it sent so far is recorded


def _handshake() -> bytes:
    salt = b"abcdefghijklmnopqrst"
    return (
        b"\x0a"
        + b"5.7.99-fake\0"
        + struct.pack("<I", 1)
        + salt[:8]
        + b"\0"
        + struct.pack("<H", _CAPABILITIES & 0xFFFF)
        + b"\x21"
        + struct.pack("<H", 2)
        + struct.pack("<H", _CAPABILITIES >> 16)
        + bytes([len(salt) + 1])
        + b"\0" * 10
        + salt[8:]
        + b"\0"
        + b"mysql_native_password\0"
    )


def _send(connection: socket.socket, sequence: int, payload: bytes) -> None:
    connection.sendall(struct.pack("<I", len(payload))[:3] + bytes([sequence]) + payload)


def _receive(connection: socket.socket) -> bytes:
    header = _exactly(connection, 4)
    return _exactly(connection, int.from_bytes(header[:3], "little"))


def _exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the client closed the connection")
        data += chunk
    return data
