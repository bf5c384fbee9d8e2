"""Node agent: the kubelet endpoint serves container logs over mutual TLS, and nothing without a client cert."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.testbed.node_agent.logs import LogTarget, encode_cri, timestamp
from tests.testbed.node_agent.server import KubeletServer
from tests.testbed.node_agent.settings import parse_args

pytestmark = pytest.mark.unit


Issued = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _issue(directory: Path, stem: str, common_name: str, issuer: Issued | None, server: bool = False) -> Issued:
    """A key and certificate written as <stem>.crt/.key, self-signed when there is no issuer."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(hours=1))
               .issuer_name(issuer[0].subject if issuer else name)
               .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True))
    if server:
        localhost = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
        builder = builder.add_extension(x509.SubjectAlternativeName([localhost]), critical=False)
    certificate = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (directory / f"{stem}.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / f"{stem}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                              serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()))
    return certificate, key


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    ca = _issue(tmp_path, "ca", "testbed-ca", None)
    _issue(tmp_path, "kubelet", "testbed-node", ca, server=True)
    _issue(tmp_path, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ca)
    _issue(tmp_path, "stranger", "stranger", _issue(tmp_path, "other-ca", "other-ca", None))
    return tmp_path


@pytest.fixture
def served(pki: Path, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    log = tmp_path / "0.log"
    log.write_bytes(encode_cri(b"one\ntwo\nthree\n", timestamp(0)))

    def find(namespace: str, pod: str, container: str, previous: bool) -> LogTarget | None:
        if (namespace, pod, container, previous) == ("team", "trial-1", "main", False):
            return log, lambda: False
        return None

    port = free_port()
    settings = parse_args(["--serving-cert", str(pki / "kubelet.crt"), "--serving-key", str(pki / "kubelet.key"),
                           "--client-ca", str(pki / "ca.crt"), "--port", str(port)])
    server = KubeletServer(settings, find)
    server.start()
    yield port, pki
    server.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(port: int, pki: Path, path: str, client_stem: str | None) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if client_stem:
        context.load_cert_chain(pki / f"{client_stem}.crt", pki / f"{client_stem}.key")
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_logs_are_served_to_the_api_servers_client_certificate(served: tuple[int, Path]) -> None:
    port, pki = served

    def as_apiserver(path: str) -> tuple[int, str]:
        return get(port, pki, path, "apiserver-kubelet-client")

    assert as_apiserver("/healthz") == (200, "ok\n")
    assert as_apiserver("/containerLogs/team/trial-1/main") == (200, "one\ntwo\nthree\n")
    assert as_apiserver("/containerLogs/team/trial-1/main?tailLines=1") == (200, "three\n")
    status, body = as_apiserver("/containerLogs/team/trial-1/other")
    assert status == 404 and '"other"' in body
    assert as_apiserver("/containerLogs/team/trial-1/main?tailLines=x")[0] == 400


@pytest.mark.parametrize("client_stem", [None, "stranger"])
def test_clients_without_a_certificate_from_the_cluster_ca_are_refused(served: tuple[int, Path],
                                                                       client_stem: str | None) -> None:
    port, pki = served
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(port, pki, "/healthz", client_stem)
