"""The testbed's processes: how each is started and how we know it is ready.

The order of `services()` is the start order (and, reversed, the stop order): the registry and
storage first, then the API server, then what talks to it, the nodes last. Every flag that differs
from a default is here for a reason noted beside it; FIELD-NOTES.md explains the ones specific to
these machines (loopback, cgroup v1, no CAP_SYS_RESOURCE).
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

from tests.testbed import images, layout, nodes, pki, registry
from tests.testbed.nodes import NODES, Node

PKI = layout.PKI
MARIADB = layout.TESTBED / "mariadb"
MARIADB_SOCKET = MARIADB / "mysqld.sock"
MANIFESTS = Path(__file__).parent / "manifests"
NETPOL_QUEUE = 100


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
        [
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={data}",
            "--user=root",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
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
    return [
        f"--kubeconfig={_kubeconfig(stem)}",
        f"--authentication-kubeconfig={_kubeconfig(stem)}",
        f"--authorization-kubeconfig={_kubeconfig(stem)}",
        "--bind-address=127.0.0.1",
        "--leader-elect=false",
    ]


def _apply_manifests() -> None:
    """The cluster's own objects, as soon as the API serves: StorageClass, DNS Service, RBAC of host parts."""
    subprocess.run(
        [
            str(layout.BIN / "kubectl"),
            f"--kubeconfig={layout.TESTBED / 'kubeconfig'}",
            "apply",
            "--server-side",
            "-f",
            str(MANIFESTS),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _corefile() -> Path:
    """CoreDNS on the host: cluster names from the API (the kubernetes plugin), others from the host's resolver."""
    path = layout.TESTBED / "Corefile"
    path.write_text(
        f"{layout.CLUSTER_DOMAIN}:53 in-addr.arpa:53 {{\n    bind {layout.HOST_IP}\n    errors\n"
        f"    health {layout.HOST_IP}:{layout.COREDNS_HEALTH_PORT}\n"
        f"    kubernetes {layout.CLUSTER_DOMAIN} in-addr.arpa {{\n        kubeconfig {_kubeconfig('coredns')} testbed\n"
        "        pods insecure\n    }\n    cache 30\n}\n"
        f".:53 {{\n    bind {layout.HOST_IP}\n    errors\n    forward . /etc/resolv.conf\n    cache 30\n}}\n"
    )
    return path


def _kube_proxy_config() -> Path:
    """One kube-proxy for the host (both nodes' pods share its network), in iptables mode."""
    path = layout.TESTBED / "kube-proxy.yaml"
    path.write_text(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
        f"clientConnection: {{kubeconfig: {_kubeconfig('kube-proxy')}}}\n"
        f"mode: iptables\nclusterCIDR: {layout.CLUSTER_CIDR}\nhostnameOverride: {NODES[0].name}\n"
        f"bindAddress: {layout.HOST_IP}\nnodePortAddresses: [primary]\n"
        f"healthzBindAddress: 127.0.0.1:{layout.KUBE_PROXY_HEALTHZ_PORT}\n"
        f"metricsBindAddress: 127.0.0.1:{layout.KUBE_PROXY_METRICS_PORT}\n"
        "conntrack: {maxPerCore: 0}\n"  # leave the host's conntrack limits alone
    )
    return path


def _containerd_answers(node: Node) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(node.socket))
        except OSError:
            return False
    return True


def _node_services(node: Node, bin_dir: Path, sandbox_image: str) -> list[Service]:
    """A node's containerd (with runc and the CNI plugins on its PATH) and its kubelet."""
    path = f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"
    containerd = Service(
        f"containerd-{node.index}",
        [str(bin_dir / "containerd"), f"--config={node.home / 'containerd.toml'}"],
        ready=lambda: _containerd_answers(node),
        env={"PATH": path},
        prepare=lambda: nodes.write_files(node, bin_dir, sandbox_image),
        stop_timeout=30.0,
    )
    kubelet = Service(
        f"kubelet-{node.index}",
        nodes.kubelet_argv(node, bin_dir / "kubelet"),
        ready=lambda: _http_ok(f"http://{node.ip}:{layout.KUBELET_HEALTHZ_PORT}/healthz"),
        env={"PATH": path},
        prepare=lambda: pki.kubeconfig(node.home / "kubelet.kubeconfig", f"{node.identity}-client"),
        stop_timeout=30.0,
    )
    return [containerd, kubelet]


def services(bin_dir: Path) -> list[Service]:
    registry_service = Service("registry", registry.argv(bin_dir / "registry"), ready=registry.answers)
    mariadb = Service(
        "mariadb",
        [
            "/usr/sbin/mariadbd",
            "--no-defaults",
            f"--datadir={MARIADB / 'data'}",
            f"--socket={MARIADB_SOCKET}",
            f"--pid-file={MARIADB / 'mariadbd.pid'}",
            "--user=root",
            # Loopback for the host, HOST_IP for pods (and the host: one URL works from both), and a
            # second address that tests name as "another server".
            f"--bind-address=127.0.0.1,{layout.HOST_IP},{layout.OTHER_MYSQL_IP}",
            f"--port={layout.MYSQL_PORT}",
            "--skip-name-resolve",
            "--max-connections=2000",  # every trial pod and the operator hold connections
            "--innodb-buffer-pool-size=256M",
            "--innodb-flush-log-at-trx-commit=2",  # a throw-away server: durability per second is enough
            f"--ssl-ca={PKI / 'ca.crt'}",
            f"--ssl-cert={PKI / 'mariadb.crt'}",
            f"--ssl-key={PKI / 'mariadb.key'}",
        ],
        ready=_mariadb_answers,
        prepare=_mariadb_prepare,
        after_ready=_mariadb_admin,
    )
    etcd = Service(
        "etcd",
        [
            str(bin_dir / "etcd"),
            "--name=testbed",
            f"--data-dir={layout.TESTBED / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{layout.ETCD_CLIENT_PORT}",
            f"--advertise-client-urls=http://127.0.0.1:{layout.ETCD_CLIENT_PORT}",
            f"--listen-peer-urls=http://127.0.0.1:{layout.ETCD_PEER_PORT}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{layout.ETCD_PEER_PORT}",
            f"--initial-cluster=testbed=http://127.0.0.1:{layout.ETCD_PEER_PORT}",
            "--unsafe-no-fsync",  # the cluster's state is thrown away at testbed-down
            "--log-level=warn",
        ],
        ready=lambda: _http_ok(f"http://127.0.0.1:{layout.ETCD_CLIENT_PORT}/health"),
    )
    apiserver = Service(
        "kube-apiserver",
        [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{layout.ETCD_CLIENT_PORT}",
            # Every address: the host uses 127.0.0.1, pods the `kubernetes` Service, whose endpoint is
            # HOST_IP (the endpoint reconciler refuses loopback).
            "--bind-address=0.0.0.0",
            f"--advertise-address={layout.HOST_IP}",
            f"--secure-port={layout.API_PORT}",
            f"--service-cluster-ip-range={layout.SERVICE_CIDR}",
            f"--tls-cert-file={PKI / 'apiserver.crt'}",
            f"--tls-private-key-file={PKI / 'apiserver.key'}",
            f"--client-ca-file={PKI / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={PKI / 'service-account.pub'}",
            f"--service-account-signing-key-file={PKI / 'service-account.key'}",
            f"--kubelet-client-certificate={PKI / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={PKI / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={PKI / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true",
        ],
        ready=lambda: _https_ok(f"https://127.0.0.1:{layout.API_PORT}/readyz", "admin"),
        after_ready=_apply_manifests,
    )
    controller_manager = Service(
        "kube-controller-manager",
        [
            str(bin_dir / "kube-controller-manager"),
            *_component_auth("controller-manager"),
            f"--secure-port={layout.CONTROLLER_MANAGER_PORT}",
            f"--service-account-private-key-file={PKI / 'service-account.key'}",
            f"--root-ca-file={PKI / 'ca.crt'}",
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={layout.SERVICE_CIDR}",
            # Nodes get their pod CIDRs from their kubelets' configuration; the controller must not
            # hand out others (it would, with --allocate-node-cidrs).
            "--allocate-node-cidrs=false",
        ],
        ready=lambda: _https_ok(f"https://127.0.0.1:{layout.CONTROLLER_MANAGER_PORT}/healthz"),
    )
    scheduler = Service(
        "kube-scheduler",
        [str(bin_dir / "kube-scheduler"), *_component_auth("scheduler"), f"--secure-port={layout.SCHEDULER_PORT}"],
        ready=lambda: _https_ok(f"https://127.0.0.1:{layout.SCHEDULER_PORT}/healthz"),
    )
    coredns = Service(
        "coredns",
        [str(bin_dir / "coredns"), "-conf", str(_corefile())],
        ready=lambda: _http_ok(f"http://{layout.HOST_IP}:{layout.COREDNS_HEALTH_PORT}/health"),
    )
    kube_proxy = Service(
        "kube-proxy",
        [str(bin_dir / "kube-proxy"), f"--config={_kube_proxy_config()}"],
        ready=lambda: _http_ok(f"http://127.0.0.1:{layout.KUBE_PROXY_HEALTHZ_PORT}/healthz"),
    )
    provisioner = Service(
        "provisioner",
        [sys.executable, "-m", "tests.testbed", "provisioner", _kubeconfig("provisioner")],
        ready=lambda: True,
    )
    sandbox = images.references()["HPO_TESTBED_PAUSE_IMAGE"]
    node_services = [service for node in NODES for service in _node_services(node, bin_dir, sandbox)]
    # NetworkPolicy enforcement for every pod (go/netpol: kube-network-policies' controller, fed by
    # an NFQUEUE rule for new connections from and to the pod network).
    netpol = Service(
        "netpol",
        [
            str(bin_dir / "netpol"),
            f"--kubeconfig={_kubeconfig('netpol')}",
            f"--pod-cidr={layout.CLUSTER_CIDR}",
            f"--nfqueue-id={NETPOL_QUEUE}",
            f"--node={NODES[0].name}",
        ],
        ready=lambda: True,
    )
    # kube-proxy last: it waits for its node to be registered before it reports healthy.
    return [
        registry_service,
        mariadb,
        etcd,
        apiserver,
        controller_manager,
        scheduler,
        coredns,
        provisioner,
        netpol,
        *node_services,
        kube_proxy,
    ]
