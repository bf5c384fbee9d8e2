"""The testbed's processes: how each is started and how we know it is ready.

The order of SERVICES is the start order (and, reversed, the stop order): storage first, then the
API server, then what talks to it. Every flag that differs from a default is here for a reason
noted beside it; FIELD-NOTES.md explains the ones that are specific to running on 127.0.0.1.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pymysql

from tests.testbed import layout

PKI = layout.PKI
MARIADB = layout.TESTBED / "mariadb"
MARIADB_SOCKET = MARIADB / "mysqld.sock"


@dataclass(frozen=True)
class Service:
    name: str
    argv: list[str]
    ready: Callable[[], bool]
    prepare: Callable[[], None] = lambda: None
    after_ready: Callable[[], None] = lambda: None
    stop_timeout: float = 15.0
    env: dict[str, str] = field(default_factory=dict)


def _https_ok(url: str, cert_stem: str | None = None) -> bool:
    context = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
    if cert_stem is None:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # self-signed health ports
    else:
        context.load_cert_chain(PKI / f"{cert_stem}.crt", PKI / f"{cert_stem}.key")
    try:
        with urllib.request.urlopen(url, context=context, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _mariadb_answers() -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(MARIADB_SOCKET))
        except OSError:
            return False
    return True


def _mariadb_prepare() -> None:
    """Create the throw-away data directory once (mariadb-install-db, root by socket only)."""
    data = MARIADB / "data"
    if (data / "mysql").exists():
        return
    data.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
         "--auth-root-authentication-method=socket", "--skip-test-db"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )


def _mariadb_admin() -> None:
    """Create the admin user the operator and tests use, with the password `up` generated."""
    password = (MARIADB / "admin-password").read_text().strip()
    connection = pymysql.connect(unix_socket=str(MARIADB_SOCKET), user="root")
    try:
        with connection.cursor() as cursor:
            cursor.execute("CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s", (layout.MYSQL_ADMIN_USER, password))
            cursor.execute(f"GRANT ALL PRIVILEGES ON *.* TO `{layout.MYSQL_ADMIN_USER}`@'%' WITH GRANT OPTION")
    finally:
        connection.close()


def _kubeconfig(stem: str) -> str:
    return str(layout.TESTBED / f"{stem}.kubeconfig")


def _component_auth(stem: str) -> list[str]:
    return [f"--kubeconfig={_kubeconfig(stem)}", f"--authentication-kubeconfig={_kubeconfig(stem)}",
            f"--authorization-kubeconfig={_kubeconfig(stem)}", "--bind-address=127.0.0.1", "--leader-elect=false"]


def services(bin_dir: Path) -> list[Service]:
    mariadb = Service(
        "mariadb",
        ["/usr/sbin/mariadbd", "--no-defaults", f"--datadir={MARIADB / 'data'}", f"--socket={MARIADB_SOCKET}",
         f"--pid-file={MARIADB / 'mariadbd.pid'}", "--user=root", "--bind-address=127.0.0.1",
         f"--port={layout.MYSQL_PORT}", "--skip-name-resolve",
         "--max-connections=2000",  # every trial pod and the operator hold connections
         "--innodb-buffer-pool-size=256M",
         "--innodb-flush-log-at-trx-commit=2",  # a throw-away server: durability per second is enough
         f"--ssl-ca={PKI / 'ca.crt'}", f"--ssl-cert={PKI / 'mariadb.crt'}", f"--ssl-key={PKI / 'mariadb.key'}"],
        ready=_mariadb_answers, prepare=_mariadb_prepare, after_ready=_mariadb_admin,
    )
    etcd = Service(
        "etcd",
        [str(bin_dir / "etcd"), "--name=testbed", f"--data-dir={layout.TESTBED / 'etcd'}",
         f"--listen-client-urls=http://127.0.0.1:{layout.ETCD_CLIENT_PORT}",
         f"--advertise-client-urls=http://127.0.0.1:{layout.ETCD_CLIENT_PORT}",
         f"--listen-peer-urls=http://127.0.0.1:{layout.ETCD_PEER_PORT}",
         f"--initial-advertise-peer-urls=http://127.0.0.1:{layout.ETCD_PEER_PORT}",
         f"--initial-cluster=testbed=http://127.0.0.1:{layout.ETCD_PEER_PORT}",
         "--unsafe-no-fsync",  # the cluster's state is thrown away at testbed-down
         "--log-level=warn"],
        ready=lambda: _http_ok(f"http://127.0.0.1:{layout.ETCD_CLIENT_PORT}/health"),
    )
    apiserver = Service(
        "kube-apiserver",
        [str(bin_dir / "kube-apiserver"),
         f"--etcd-servers=http://127.0.0.1:{layout.ETCD_CLIENT_PORT}",
         "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={layout.API_PORT}",
         "--endpoint-reconciler-type=none",  # loopback endpoints are refused; there is no default route
         f"--service-cluster-ip-range={layout.SERVICE_CIDR}",
         f"--tls-cert-file={PKI / 'apiserver.crt'}", f"--tls-private-key-file={PKI / 'apiserver.key'}",
         f"--client-ca-file={PKI / 'ca.crt'}",
         "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
         "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
         f"--service-account-key-file={PKI / 'service-account.pub'}",
         f"--service-account-signing-key-file={PKI / 'service-account.key'}",
         f"--kubelet-client-certificate={PKI / 'apiserver-kubelet-client.crt'}",
         f"--kubelet-client-key={PKI / 'apiserver-kubelet-client.key'}",
         f"--kubelet-certificate-authority={PKI / 'ca.crt'}",
         "--kubelet-preferred-address-types=InternalIP",
         "--allow-privileged=true"],
        ready=lambda: _https_ok(f"https://127.0.0.1:{layout.API_PORT}/readyz", "admin"),
    )
    controller_manager = Service(
        "kube-controller-manager",
        [str(bin_dir / "kube-controller-manager"), *_component_auth("controller-manager"),
         f"--secure-port={layout.CONTROLLER_MANAGER_PORT}",
         f"--service-account-private-key-file={PKI / 'service-account.key'}",
         f"--root-ca-file={PKI / 'ca.crt'}", "--use-service-account-credentials=true",
         f"--service-cluster-ip-range={layout.SERVICE_CIDR}",
         "--enable-hostpath-provisioner=true"],  # dynamic PVs for the default StorageClass
        ready=lambda: _https_ok(f"https://127.0.0.1:{layout.CONTROLLER_MANAGER_PORT}/healthz"),
    )
    scheduler = Service(
        "kube-scheduler",
        [str(bin_dir / "kube-scheduler"), *_component_auth("scheduler"), f"--secure-port={layout.SCHEDULER_PORT}"],
        ready=lambda: _https_ok(f"https://127.0.0.1:{layout.SCHEDULER_PORT}/healthz"),
    )
    node_agent = Service(
        "node-agent",
        [sys.executable, "-m", "tests.testbed.node_agent",
         f"--kubeconfig={_kubeconfig('node-agent')}", f"--node-name={layout.NODE_NAME}",
         f"--state-dir={layout.TESTBED / 'node'}", f"--pod-log-dir={layout.POD_LOGS}",
         f"--serving-cert={PKI / 'kubelet.crt'}", f"--serving-key={PKI / 'kubelet.key'}",
         f"--client-ca={PKI / 'ca.crt'}", f"--port={layout.KUBELET_PORT}",
         f"--cpu={layout.NODE_CPU}", f"--memory={layout.NODE_MEMORY}", f"--gpus={layout.NODE_GPUS}",
         "--max-pods=110", f"--path-prefix={layout.VENV_BIN}",
         "--api-host=127.0.0.1", f"--api-port={layout.API_PORT}"],
        ready=lambda: _https_ok(f"https://127.0.0.1:{layout.KUBELET_PORT}/healthz", "apiserver-kubelet-client"),
        stop_timeout=45.0,  # it stops every pod first, each with its grace period
    )
    return [mariadb, etcd, apiserver, controller_manager, scheduler, node_agent]
