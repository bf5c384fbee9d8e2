"""Build the testbed's Go binaries once: etcd, Kubernetes (control plane, kubelet, kube-proxy, kubectl),
helm, containerd and its runc shim, the CNI plugins, CoreDNS and the image registry.

Binaries go to a cache outside the clone, in a folder keyed by a hash of the Go module that pins
them, so `testbed-down`/`testbed-up` and fresh clones never rebuild; a changed pin builds anew.
A cold build compiles a few thousand packages: progress is printed as they go. Everything is built
with cgo off (static binaries, no C toolchain needed); runc is the one node binary we take from
Debian instead (see install-debian-packages.sh).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.testbed import layout


@dataclass(frozen=True)
class Component:
    """One Go module under tests/testbed/go/ and the main packages it builds, one binary each.

    A binary is named as `go build` names it: after the last element of its package path (the
    module's own package "." after the module's folder).
    """

    module: str
    packages: tuple[str, ...]
    version: str
    ldflags: tuple[str, ...] = ()
    aliases: tuple[str, ...] = field(default=())

    @property
    def source(self) -> Path:
        return layout.GO_MODULES / self.module

    @property
    def binaries(self) -> tuple[str, ...]:
        return tuple(self.module if package == "." else package.rsplit("/", 1)[-1] for package in self.packages)

    def key(self) -> str:
        digest = hashlib.sha256()
        for path in sorted(self.source.iterdir()):
            digest.update(path.name.encode() + path.read_bytes())
        digest.update(" ".join(self.ldflags).encode() + go_version().encode())
        return digest.hexdigest()[:12]

    def folder(self) -> Path:
        return layout.CACHE / "bin" / f"{self.module}-{self.version}-{self.key()}"


def _kube_ldflags(version: str) -> tuple[str, ...]:
    """Stamp the release into both version packages, or /version reports v0.0.0."""
    major, minor = version.lstrip("v").split(".")[:2]
    stamps = {"gitVersion": version, "gitMajor": major, "gitMinor": minor, "gitTreeState": "clean"}
    return tuple(
        f"-X {package}.{name}={value}"
        for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for name, value in stamps.items()
    )


CNI_PLUGINS = ("main/bridge", "ipam/host-local", "main/loopback", "meta/portmap")

COMPONENTS = (
    Component("etcd", (".",), layout.ETCD_VERSION),
    Component(
        "helm",
        ("helm.sh/helm/v3/cmd/helm",),
        layout.HELM_VERSION,
        ldflags=(f"-X helm.sh/helm/v3/internal/version.version={layout.HELM_VERSION}",),
    ),
    Component(
        "kube",
        (".",),
        layout.KUBERNETES_VERSION,
        ldflags=_kube_ldflags(layout.KUBERNETES_VERSION),
        aliases=("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet", "kube-proxy"),
    ),
    Component(
        "containerd",
        (
            "github.com/containerd/containerd/v2/cmd/containerd",
            "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
        ),
        layout.CONTAINERD_VERSION,
        # Without the stamp the CRI reports "2.4.2+unknown"; the node shows containerd://<this>.
        ldflags=(f"-X github.com/containerd/containerd/v2/version.Version={layout.CONTAINERD_VERSION.lstrip('v')}",),
    ),
    Component(
        "cni",
        tuple(f"github.com/containernetworking/plugins/plugins/{plugin}" for plugin in CNI_PLUGINS),
        layout.CNI_PLUGINS_VERSION,
        ldflags=(
            "-X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion="
            f"{layout.CNI_PLUGINS_VERSION}",
        ),
    ),
    Component("coredns", ("github.com/coredns/coredns",), layout.COREDNS_VERSION),
    Component(
        "registry",
        ("github.com/distribution/distribution/v3/cmd/registry",),
        layout.REGISTRY_VERSION,
        ldflags=(f"-X github.com/distribution/distribution/v3/version.version={layout.REGISTRY_VERSION}",),
    ),
    # NetworkPolicy enforcement: kube-network-policies' controller behind a main of ours (go/netpol).
    Component("netpol", (".",), layout.NETWORK_POLICIES_VERSION),
)

# Built only when asked for (`make kueue-up`): Kueue is optional for users and for the testbed.
OPTIONAL_COMPONENTS = (
    Component(
        "kueue",
        ("sigs.k8s.io/kueue/cmd/kueue",),
        layout.KUEUE_VERSION,
        ldflags=(f"-X sigs.k8s.io/kueue/pkg/version.GitVersion={layout.KUEUE_VERSION}",),
    ),
)


def go_version() -> str:
    return subprocess.run(["go", "env", "GOVERSION"], check=True, capture_output=True, text=True).stdout.strip()


def _go_env() -> dict[str, str]:
    # GOMODCACHE and GOCACHE stay at Go's defaults under $HOME, outside the clone, shared by CI runs.
    return {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly"}


def build(component: Component) -> Path:
    """Return the cached folder holding ``component``'s binary, building it if the pin changed."""
    folder = component.folder()
    if (folder / ".complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    env = _go_env()
    total = len(
        subprocess.run(
            ["go", "list", "-deps", *component.packages],
            cwd=component.source,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
    )
    hint = "; a cold build of kube takes ~20 min on 2 cores" if component.module == "kube" else ""
    print(f"building {component.module} {component.version} ({total} packages{hint})", flush=True)
    command = [
        "go",
        "build",
        "-v",
        "-trimpath",
        "-ldflags",
        " ".join(("-s", "-w", *component.ldflags)),
        "-o",
        f"{folder}/",
        *component.packages,
    ]
    started = time.monotonic()
    compiled = 0
    last_report = started
    with subprocess.Popen(command, cwd=component.source, env=env, stderr=subprocess.PIPE, text=True) as process:
        assert process.stderr is not None
        errors: list[str] = []
        for line in process.stderr:
            if " " in line.strip() or line.startswith("#"):
                errors.append(line)  # package names have no spaces; anything else is compiler output
                continue
            compiled += 1
            if time.monotonic() - last_report > 20:
                last_report = time.monotonic()
                print(
                    f"  {component.module}: compiled {compiled}/{total} packages, {last_report - started:.0f}s",
                    flush=True,
                )
    if process.returncode != 0:
        sys.stderr.writelines(errors)
        raise SystemExit(f"go build of tests/testbed/go/{component.module} failed (exit {process.returncode})")
    for alias in component.aliases:
        (folder / alias).unlink(missing_ok=True)
        (folder / alias).symlink_to(component.binaries[0])
    (folder / ".complete").touch()
    print(f"built {component.module} in {time.monotonic() - started:.0f}s -> {folder}", flush=True)
    return folder


def build_all(modules: Iterable[str] | None = None) -> dict[str, Path]:
    """Build (or find) the binaries of ``modules`` (default: every component but the optional ones);
    return name -> path."""
    known = (*COMPONENTS, *OPTIONAL_COMPONENTS)
    wanted = set(modules) if modules is not None else {component.module for component in COMPONENTS}
    if unknown := wanted - {component.module for component in known}:
        raise ValueError(f"no Go component named {', '.join(sorted(unknown))} under tests/testbed/go/")
    binaries: dict[str, Path] = {}
    for component in (component for component in known if component.module in wanted):
        folder = build(component)
        for name in (*component.binaries, *component.aliases):
            binaries[name] = folder / name
    return binaries


def link_into(binaries: dict[str, Path], target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name, path in binaries.items():
        link = target / name
        link.unlink(missing_ok=True)
        link.symlink_to(path)
