"""The testbed's image registry: distribution v3 (built from its Go module) on 127.0.0.1, plain HTTP.

Images are built on this machine (tests/testbed/images.py) and pushed here; containerd on the
testbed's nodes will pull them from here. Its blobs live in the cache outside the clone
(layout.CACHE/registry), so they survive `make testbed-down` and fresh clones: an image pushed once
is not built again. `running()` starts a registry for the length of a build unless one already
answers (the testbed's own, once the registry is a testbed service).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.testbed import layout

ROOT = layout.CACHE / "registry"
CONFIG = ROOT / "config.yml"
DATA = ROOT / "data"
LOG = ROOT / "registry.log"
ADDRESS = f"127.0.0.1:{layout.REGISTRY_PORT}"
# The manifest media types a HEAD on /v2/<name>/manifests/<tag> must accept to find any image.
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)


def write_config() -> Path:
    """The registry's configuration: filesystem storage in the cache, deletes allowed (for garbage
    collection), loopback only, no TLS (the testbed's containerd is told to use plain HTTP for it)."""
    ROOT.mkdir(parents=True, exist_ok=True)
    CONFIG.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {DATA}\n  delete:\n    enabled: true\n"
        "  cache:\n    blobdescriptor: inmemory\n"
        f"http:\n  addr: {ADDRESS}\n"
    )
    return CONFIG


def argv(binary: Path) -> list[str]:
    """The command that serves the registry (for the supervisor, or `running`)."""
    return [str(binary), "serve", str(write_config())]


def answers() -> bool:
    """True when a registry answers the v2 API at ADDRESS."""
    try:
        with urllib.request.urlopen(f"http://{ADDRESS}/v2/", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def has_manifest(repository: str, tag: str) -> bool:
    """True when the registry holds ``repository:tag``."""
    request = urllib.request.Request(
        f"http://{ADDRESS}/v2/{repository}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": MANIFEST_TYPES},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return False
        raise


@contextlib.contextmanager
def running(binary: Path, timeout: float = 30) -> Iterator[str]:
    """Yield the registry's address, starting one for the duration unless one already answers."""
    if answers():
        yield ADDRESS
        return
    ROOT.mkdir(parents=True, exist_ok=True)
    with open(LOG, "ab") as log:
        process = subprocess.Popen(argv(binary), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not answers():
            if process.poll() is not None:
                raise RuntimeError(f"the registry exited with code {process.returncode}; see {LOG}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the registry did not answer on {ADDRESS} within {timeout:.0f}s; see {LOG}")
            time.sleep(0.1)
        yield ADDRESS
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _digest(repository: str, tag: str) -> str:
    head = urllib.request.Request(
        f"http://{ADDRESS}/v2/{repository}/manifests/{tag}", method="HEAD", headers={"Accept": MANIFEST_TYPES}
    )
    with urllib.request.urlopen(head, timeout=10) as response:
        return str(response.headers["Docker-Content-Digest"])


def delete_other_tags(repository: str, keep: str) -> list[str]:
    """Delete every manifest of ``repository`` but the one tagged ``keep``; return the tags deleted."""
    try:
        with urllib.request.urlopen(f"http://{ADDRESS}/v2/{repository}/tags/list", timeout=10) as response:
            tags = json.load(response).get("tags") or []
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return []
        raise
    kept = _digest(repository, keep) if keep in tags else None
    deleted = []
    for tag in tags:
        digest = _digest(repository, tag)
        if tag == keep or digest == kept:  # a DELETE by digest would drop every tag of that manifest
            continue
        delete = urllib.request.Request(f"http://{ADDRESS}/v2/{repository}/manifests/{digest}", method="DELETE")
        with urllib.request.urlopen(delete, timeout=10):
            deleted.append(tag)
    return deleted


def garbage_collect(binary: Path) -> None:
    """Delete blobs no manifest references (the registry must not be serving: run between builds)."""
    if answers():
        raise RuntimeError(f"a registry is serving on {ADDRESS}: garbage collection needs it stopped")
    subprocess.run(
        [str(binary), "garbage-collect", "--delete-untagged", str(write_config())],
        check=True,
        stdout=subprocess.DEVNULL,
    )
