"""The testbed's volume provisioner: a folder per claim, mounted as a `local` volume from any node.

A user's cluster has a storage driver; the testbed has the host's disk. Kubernetes' built-in
hostPath provisioner makes folders only root may write, and the kubelet ignores `fsGroup` on
hostPath volumes, so non-root pods (the trial image's user, the in-chart MySQL's) could not use
them. For every claim of the default StorageClass this makes a folder under /tmp/hostpath_pv that
any user may write and a `local` PersistentVolume that every testbed node may mount (they share
the host's disk, so ReadWriteMany holds, and the kubelet applies `fsGroup` to local volumes). When
a claim is deleted, its volume and folder go with it.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config, watch

from tests.testbed.nodes import NODES

PROVISIONER = "testbed.hpo.dev/local"
STORAGE_CLASS = "standard"
ROOT = Path("/tmp/hostpath_pv")
_PROVISIONER_ANNOTATIONS = ("volume.kubernetes.io/storage-provisioner", "volume.beta.kubernetes.io/storage-provisioner")

log = logging.getLogger("provisioner")


def volume_for(claim: dict[str, Any]) -> dict[str, Any]:
    """The PersistentVolume bound to ``claim`` (pure: tested without a cluster)."""
    meta, spec = claim["metadata"], claim["spec"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"pvc-{meta['uid']}", "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "volumeMode": spec.get("volumeMode", "Filesystem"),
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "local": {"path": str(ROOT / meta["uid"])},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/hostname",
                                    "operator": "In",
                                    "values": [node.name for node in NODES],
                                }
                            ]
                        }
                    ]
                }
            },
        },
    }


def wants_volume(claim: dict[str, Any]) -> bool:
    annotations = claim["metadata"].get("annotations") or {}
    return (
        claim.get("status", {}).get("phase") == "Pending"
        and not claim["spec"].get("volumeName")
        and any(annotations.get(key) == PROVISIONER for key in _PROVISIONER_ANNOTATIONS)
    )


def _provision(core: client.CoreV1Api, claim: dict[str, Any]) -> None:
    volume = volume_for(claim)
    folder = Path(volume["spec"]["local"]["path"])
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o1777)  # any user may write, as on a fresh filesystem's /tmp; fsGroup narrows it
    try:
        core.create_persistent_volume(volume)  # type: ignore[arg-type]  # the client takes plain manifests too
        log.info(
            "provisioned %s for %s/%s",
            volume["metadata"]["name"],
            claim["metadata"]["namespace"],
            claim["metadata"]["name"],
        )
    except client.ApiException as error:
        if error.status != 409:
            raise


def _release(core: client.CoreV1Api, volume: dict[str, Any]) -> None:
    annotations = volume["metadata"].get("annotations") or {}
    if annotations.get("pv.kubernetes.io/provisioned-by") != PROVISIONER:
        return
    if volume.get("status", {}).get("phase") not in ("Released", "Failed"):
        return
    shutil.rmtree(volume["spec"]["local"]["path"], ignore_errors=True)
    try:
        core.delete_persistent_volume(volume["metadata"]["name"])
        log.info("deleted %s", volume["metadata"]["name"])
    except client.ApiException as error:
        if error.status != 404:
            raise


def _follow(list_call: Any, handle: Any) -> None:
    """List, handle each object, then watch from there; start over whenever a watch ends."""
    api = client.ApiClient()
    while True:
        try:
            body = api.sanitize_for_serialization(list_call())  # type: ignore[no-untyped-call]
            for item in body["items"]:
                handle(item)
            stream = watch.Watch()  # type: ignore[no-untyped-call]
            events = stream.stream(
                list_call,
                resource_version=body["metadata"]["resourceVersion"],  # type: ignore[no-untyped-call]
                timeout_seconds=300,
            )
            for event in events:
                if event["type"] != "DELETED":
                    handle(api.sanitize_for_serialization(event["object"]))  # type: ignore[no-untyped-call]
        except (urllib3.exceptions.HTTPError, client.ApiException) as error:
            log.warning("watch interrupted (%s); starting over in a second", error)
            time.sleep(1)  # a daemon's back-off (e.g. before its RBAC exists), not test synchronisation


def run(kubeconfig: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config.load_kube_config(kubeconfig)  # type: ignore[no-untyped-call]
    core = client.CoreV1Api()
    ROOT.mkdir(parents=True, exist_ok=True)

    def claim(item: dict[str, Any]) -> None:
        if wants_volume(item):
            _provision(core, item)

    threading.Thread(
        target=_follow, args=(core.list_persistent_volume, lambda item: _release(core, item)), daemon=True
    ).start()
    _follow(core.list_persistent_volume_claim_for_all_namespaces, claim)
    return 0
