"""The few Kubernetes API calls the study loop makes, each idempotent and each behind a small function.

Handlers run more than once by design (restarts, resumes), so creating what exists or deleting
what is gone is success, not an error. Everything the loop asks of the API server is here, so the
pure policies around it are tested without a cluster and the end-to-end tests cover these calls.
"""

from __future__ import annotations

import base64
import json
from typing import Any, cast

import kopf
from kubernetes import client, config
from kubernetes.client import ApiException

from hpo_operator.models import GROUP, PLURAL, VERSION
from hpo_operator.queueing import JOB_UID_LABEL, KUEUE_GROUP, KUEUE_VERSION
from hpo_operator.redaction import redact

_api: client.ApiClient | None = None


def api() -> client.ApiClient:
    """One API client per process, in-cluster or from the kubeconfig."""
    global _api
    if _api is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        _api = client.ApiClient()
    return _api


def create_owned(manifest: dict[str, Any], owner: dict[str, Any]) -> None:
    """Create a namespaced object owned by the study (garbage-collected with it); exists is fine."""
    kopf.adopt(manifest, owner=kopf.Body(cast(kopf.RawBody, owner)))
    namespace = manifest["metadata"]["namespace"]
    try:
        body: Any = manifest  # the client accepts plain manifests as well as its model objects
        if manifest["kind"] == "Job":
            client.BatchV1Api(api()).create_namespaced_job(namespace, body)
        elif manifest["kind"] == "Secret":
            client.CoreV1Api(api()).create_namespaced_secret(namespace, body)
        else:
            raise ValueError(f"create_owned does not handle {manifest['kind']}")
    except ApiException as error:
        if error.status != 409:
            raise


def delete_job(namespace: str, name: str) -> None:
    try:
        client.BatchV1Api(api()).delete_namespaced_job(name, namespace, propagation_policy="Background")
    except ApiException as error:
        if error.status != 404:
            raise


def ensure_secret(namespace: str, name: str, data: dict[str, str], owner: dict[str, Any]) -> None:
    """Create the study's Secret, or bring an existing one's keys to ``data`` (others are kept)."""
    current = read_secret(namespace, name)
    if current is None:
        create_owned(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace},
                "stringData": data,
            },
            owner,
        )
    elif any(current.get(key) != value for key, value in data.items()):
        client.CoreV1Api(api()).patch_namespaced_secret(name, namespace, {"stringData": data})


def create_event(event: dict[str, Any]) -> None:
    """Post a core/v1 Event (built by `events.build`)."""
    body: Any = event
    client.CoreV1Api(api()).create_namespaced_event(event["metadata"]["namespace"], body)


def dry_run_job(job: dict[str, Any]) -> dict[str, Any] | None:
    """Ask the API server to validate a Job without creating it: None when it accepts it, else its Status.

    The API server's own validation (and its admission webhooks) names each field it refuses.
    Raises ApiException for anything but a refusal of the Job itself (no permission, unreachable).
    """
    manifest = {**job, "metadata": {k: v for k, v in job["metadata"].items() if k != "name"}}
    manifest["metadata"]["generateName"] = job["metadata"]["name"][:57] + "-"
    body: Any = manifest
    try:
        client.BatchV1Api(api()).create_namespaced_job(job["metadata"]["namespace"], body, dry_run="All")
    except ApiException as error:
        if error.status not in (400, 422):
            raise
        try:
            status = json.loads(error.body or "{}")
        except ValueError:
            status = {"message": str(error.reason)}
        return status if isinstance(status, dict) else {"message": str(status)}
    return None


def _read(read: Any, name: str, namespace: str) -> Any:
    """An object read by ``read`` (a client method), None when it does not exist."""
    try:
        return read(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def secret_keys(namespace: str, name: str) -> frozenset[str] | None:
    """The keys of a Secret (None when it does not exist)."""
    secret = _read(client.CoreV1Api(api()).read_namespaced_secret, name, namespace)
    return None if secret is None else frozenset(secret.data or {})


def claim_exists(namespace: str, name: str) -> bool:
    """Whether a PersistentVolumeClaim exists."""
    return _read(client.CoreV1Api(api()).read_namespaced_persistent_volume_claim, name, namespace) is not None


def local_queue_exists(namespace: str, name: str) -> bool | None:
    """Whether a Kueue LocalQueue exists; None when the cluster serves no Kueue API (Kueue is not installed)."""
    objects = client.CustomObjectsApi(api())
    try:
        objects.get_namespaced_custom_object(KUEUE_GROUP, KUEUE_VERSION, namespace, "localqueues", name)
    except ApiException as error:
        if error.status != 404:
            raise
        try:
            objects.get_api_resources(KUEUE_GROUP, KUEUE_VERSION)
        except ApiException as missing:
            if missing.status == 404:
                return None
            raise
        return False
    return True


def workloads(namespace: str, job_uids: list[str]) -> list[dict[str, Any]]:
    """Kueue's Workloads of the given Jobs, in one request (empty when Kueue's API is not served)."""
    if not job_uids:
        return []
    try:
        found = client.CustomObjectsApi(api()).list_namespaced_custom_object(
            KUEUE_GROUP,
            KUEUE_VERSION,
            namespace,
            "workloads",
            label_selector=f"{JOB_UID_LABEL} in ({','.join(sorted(job_uids))})",
        )
    except ApiException as error:
        if error.status == 404:
            return []
        raise
    return list(cast(dict[str, Any], found).get("items") or [])


def read_secret(namespace: str, name: str) -> dict[str, str] | None:
    """A Secret's data as text (None when it does not exist)."""
    secret = _read(client.CoreV1Api(api()).read_namespaced_secret, name, namespace)
    if secret is None:
        return None
    return {key: base64.b64decode(value).decode(errors="replace") for key, value in (secret.data or {}).items()}


def patch_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    """Write the study's status; its messages are masked like every other output."""
    status = {**status, "message": redact(status.get("message", ""))} if "message" in status else status
    if "conditions" in status:
        status["conditions"] = [{**c, "message": redact(c.get("message", ""))} for c in status["conditions"]]
    client.CustomObjectsApi(api()).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": status}
    )
