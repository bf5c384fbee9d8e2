"""`make kueue-up` / `kueue-down`: a real Kueue in the testbed, installed as users install it.

Kueue is optional, for users and for the testbed, so `testbed-up` neither builds nor installs it.
`up` builds its controller manager from Kueue's Go module (pinned in tests/testbed/go/kueue), puts
it in an image on the testbed's Debian base, renders Kueue's own manifests from the module's
`config/default` with `kubectl kustomize` (CRDs, RBAC, the Deployment, its webhooks with Kueue's
internal certificate management), applies them, waits until the webhooks answer, and then applies
examples/kueue-queues.yaml: the ResourceFlavor, the ClusterQueue `testbed-gpus` and the LocalQueue
`user-queue` in `default`. Each step is idempotent, so `up` on a running Kueue only re-applies.

Two changes to upstream's manifests, both in `adapt` (pure, unit-tested): the image is ours (pulled
from the testbed's registry, not `Always`) with a smaller CPU request for a 2-core machine, and
Kueue's visibility APIService is left out: the testbed's API server has no aggregation layer
(front-proxy certificates), and an unavailable APIService breaks API discovery, and with it
namespace deletion, for every other test.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from tests.testbed import build, cluster, images, layout, registry

NAMESPACE = "kueue-system"
DEPLOYMENT = "kueue-controller-manager"
CONTAINER = "manager"
QUEUES = layout.ROOT / "examples" / "kueue-queues.yaml"
LOCAL_QUEUE_NAMESPACE = "default"
RENDERED = layout.TESTBED / "kueue.yaml"
READY_TIMEOUT = 300


class KubectlFailed(RuntimeError):
    """kubectl exited non-zero; the message ends with what it wrote on stderr."""


def _kubectl(*arguments: str, check: bool = True) -> str:
    result = subprocess.run(
        [str(layout.BIN / "kubectl"), f"--kubeconfig={cluster.KUBECONFIG}", *arguments],
        capture_output=True,
        text=True,
    )
    if check and result.returncode != 0:
        raise KubectlFailed(f"kubectl {' '.join(arguments[:2])} failed: {result.stderr.strip()[-2000:]}")
    return result.stdout


def module_dir() -> Path:
    """Kueue's module source in Go's module cache (downloaded if needed): its `config/` holds the manifests."""
    result = subprocess.run(
        ["go", "mod", "download", "-json", f"sigs.k8s.io/kueue@{layout.KUEUE_VERSION}"],
        cwd=layout.GO_MODULES / "kueue",
        env=build._go_env(),
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(json.loads(result.stdout)["Dir"])


def image() -> images.Image:
    """The controller manager's image, whose build context is the binary's cache folder."""
    folder = build.build_all(["kueue"])["kueue"].parent
    dockerfiles = images.DOCKERFILES / "kueue"
    return images.Image("kueue", dockerfiles / "Dockerfile", folder, "HPO_KUEUE_IMAGE")


def adapt(documents: list[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """Upstream's rendered manifests, run from ``reference`` on the testbed (see the module's docstring)."""
    adapted = []
    for document in documents:
        if document.get("kind") == "APIService":
            continue
        if document.get("kind") == "Deployment" and document["metadata"]["name"] == DEPLOYMENT:
            for container in document["spec"]["template"]["spec"]["containers"]:
                if container["name"] == CONTAINER:
                    container["image"] = reference
                    container["imagePullPolicy"] = "IfNotPresent"
                    container.setdefault("resources", {})["requests"] = {"cpu": "100m", "memory": "256Mi"}
        adapted.append(document)
    return adapted


def render(reference: str) -> str:
    rendered = _kubectl("kustomize", str(module_dir() / "config" / "default"))
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    return yaml.safe_dump_all(adapt(documents, reference), sort_keys=False)


def _queues_accepted() -> bool:
    """Apply the queues; False while Kueue's webhooks do not answer yet (its certificate is being made)."""
    try:
        _kubectl("apply", "--server-side", f"--namespace={LOCAL_QUEUE_NAMESPACE}", "-f", str(QUEUES))
    except KubectlFailed as error:
        if "webhook" in str(error) or "connection refused" in str(error):
            return False
        raise
    return True


def up() -> None:
    started = time.monotonic()
    cluster.require_running("make kueue-up")
    kueue = image()
    with registry.running(build.build_all(["registry"])["registry"]):
        reference = images.ensure_one(kueue)
    print(f"kueue {layout.KUEUE_VERSION}: installing from {reference}", flush=True)
    if not RENDERED.exists():
        _finish_removal()  # an interrupted kueue-down: its CRDs must be gone before they are made again
    RENDERED.write_text(render(reference))
    _kubectl("apply", "--server-side", "--force-conflicts", "-f", str(RENDERED))
    _kubectl("--namespace", NAMESPACE, "rollout", "status", f"deployment/{DEPLOYMENT}", f"--timeout={READY_TIMEOUT}s")
    deadline = time.monotonic() + READY_TIMEOUT
    while not _queues_accepted():
        if time.monotonic() > deadline:
            raise SystemExit(
                f"kueue-up: Kueue's webhooks did not answer within {READY_TIMEOUT}s; see "
                f"`kubectl -n {NAMESPACE} logs deployment/{DEPLOYMENT}`"
            )
        time.sleep(1)
    print(
        f"kueue up in {time.monotonic() - started:.0f}s: ClusterQueue testbed-gpus, LocalQueue "
        f"{LOCAL_QUEUE_NAMESPACE}/user-queue (see `kubectl get clusterqueues,localqueues -A`)",
        flush=True,
    )


def _kueue_kinds() -> list[str]:
    """The Kueue CRDs still in the cluster (being deleted or not), as `<plural>.kueue.x-k8s.io`."""
    names = _kubectl("get", "customresourcedefinitions", "-o", "name").split()
    return [n.removeprefix("customresourcedefinition.apiextensions.k8s.io/") for n in names if "kueue.x-k8s.io" in n]


def _finish_removal() -> None:
    """Wait until Kueue's CRDs are gone, releasing what their finalizers hold once Kueue no longer runs.

    Kueue puts finalizers on its Workloads and queues; deleted together with its controller, they
    would hold their CRDs in deletion for ever (and a CRD still being deleted is not created again).
    """
    deadline = time.monotonic() + READY_TIMEOUT
    while kinds := _kueue_kinds():
        if time.monotonic() > deadline:
            raise SystemExit(f"kueue-down: {', '.join(kinds)} still there after {READY_TIMEOUT}s")
        for kind in kinds:
            for line in _kubectl(
                "get",
                kind,
                "-A",
                "-o",
                "custom-columns=NS:.metadata.namespace,NAME:.metadata.name",
                "--no-headers",
                check=False,
            ).splitlines():
                namespace, name = line.split()
                scope = [] if namespace == "<none>" else [f"--namespace={namespace}"]
                patch = '{"metadata":{"finalizers":null}}'
                _kubectl("patch", kind, name, *scope, "--type=merge", "-p", patch, check=False)
        time.sleep(1)


def down() -> None:
    """Remove Kueue and every object of its kinds; Jobs it suspended stay suspended, as upstream's uninstall leaves
    them."""
    cluster.require_running("make kueue-down")
    if not RENDERED.exists():
        print("kueue is not installed (no .testbed/kueue.yaml)", flush=True)
        return
    # The LocalQueue lives in `default`; the rest names its own namespaces or none.
    for manifest, scope in ((QUEUES, [f"--namespace={LOCAL_QUEUE_NAMESPACE}"]), (RENDERED, [])):
        _kubectl("delete", "--ignore-not-found", "--wait=false", *scope, "-f", str(manifest))
    _finish_removal()
    _kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", f"--timeout={READY_TIMEOUT}s")
    RENDERED.unlink()
    print("kueue removed", flush=True)
