"""Certificates and keys for the testbed: one CA, a cert per identity, the service-account key.

Identities follow a real cluster's: the admin is in system:masters, each controller has its own
user, each kubelet is `system:node:<name>` in `system:nodes` (so the Node authorizer and the
NodeRestriction admission plugin judge it), kube-proxy is `system:kube-proxy`.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.testbed import layout
from tests.testbed.nodes import NODES

VALIDITY = datetime.timedelta(days=3650)


@dataclass(frozen=True)
class Identity:
    """A certificate to issue: file stem, subject, and for servers the names it answers to."""

    stem: str
    common_name: str
    organizations: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()

    @property
    def is_server(self) -> bool:
        return bool(self.ips or self.dns)


IDENTITIES = (
    Identity(
        "apiserver",
        "kube-apiserver",
        ips=("127.0.0.1", layout.HOST_IP, layout.SERVICE_IP),
        dns=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
    ),
    Identity("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)),
    Identity("admin", "kubernetes-admin", ("system:masters",)),
    Identity("controller-manager", "system:kube-controller-manager"),
    Identity("scheduler", "system:kube-scheduler"),
    Identity("kube-proxy", "system:kube-proxy"),  # bound to system:node-proxier by default
    Identity("coredns", "testbed:coredns"),  # RBAC in manifests/rbac.yaml
    Identity("provisioner", "testbed:provisioner"),
    Identity("netpol", "testbed:netpol"),
    # Each node: its kubelet's client (Node authorizer, NodeRestriction) and serving certificates.
    *(
        identity
        for node in NODES
        for identity in (
            Identity(f"{node.identity}-client", f"system:node:{node.name}", ("system:nodes",)),
            Identity(f"{node.identity}-serving", node.name, ips=(node.ip,), dns=(node.name,)),
        )
    ),
    # MariaDB offers TLS (clients choose; users created with REQUIRE SSL must use it). Its second
    # address lets tests name it as a server other than the operator's default.
    Identity("mariadb", "mariadb", ips=("127.0.0.1", layout.HOST_IP, layout.OTHER_MYSQL_IP), dns=("localhost",)),
)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    return x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _create_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name("hpo-operator-testbed-ca")
    cert = (
        _builder(subject, subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    (folder / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(folder / "ca.key", key)
    return cert, key


def _issue(folder: Path, identity: Identity, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if identity.is_server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = _builder(_name(identity.common_name, identity.organizations), ca.subject, key.public_key())
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if identity.is_server:
        names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in identity.ips]
        names += [x509.DNSName(dns) for dns in identity.dns]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    (folder / f"{identity.stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(folder / f"{identity.stem}.key", key)


def ensure(folder: Path = layout.PKI) -> None:
    """Create the CA, every identity's certificate and the service-account key pair, once."""
    if (folder / "service-account.pub").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _create_ca(folder)
    for identity in IDENTITIES:
        _issue(folder, identity, ca, ca_key)
    signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(folder / "service-account.key", signing_key)
    (folder / "service-account.pub").write_bytes(
        signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def kubeconfig(path: Path, user_stem: str, folder: Path = layout.PKI) -> None:
    """Write a kubeconfig that authenticates with ``<user_stem>.crt`` against the testbed API."""
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: https://127.0.0.1:{layout.API_PORT}
    certificate-authority: {folder / "ca.crt"}
users:
- name: {user_stem}
  user:
    client-certificate: {folder / f"{user_stem}.crt"}
    client-key: {folder / f"{user_stem}.key"}
contexts:
- name: testbed
  context: {{cluster: testbed, user: {user_stem}}}
current-context: testbed
"""
    )
    path.chmod(0o600)
