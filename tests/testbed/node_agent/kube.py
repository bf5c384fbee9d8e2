"""The node agent's door to the API server: generated-client calls that speak plain JSON dicts.

The rest of the agent handles pods, secrets and nodes as the JSON the API serves (camelCase, as in
manifests). This module makes every request the node identity needs (pods selected by
`spec.nodeName`, status through subresources, deletion with a UID precondition, TokenRequest bound
to a pod) and turns the generated client's responses into dicts.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any, cast

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

Json = dict[str, Any]

STRATEGIC_MERGE = "application/strategic-merge-patch+json"
TIMEOUT_S = 30
NODE_LEASE_NAMESPACE = "kube-node-lease"


def _json(response: Any) -> Json:
    data: Json = json.loads(response.data)
    return data


def object_data(obj: Json) -> dict[str, bytes]:
    """A Secret's or ConfigMap's entries as bytes (Secret `data` is base64, ConfigMap has both kinds)."""
    if obj.get("kind") == "Secret":
        entries = {key: base64.b64decode(value) for key, value in (obj.get("data") or {}).items()}
        entries.update({key: value.encode() for key, value in (obj.get("stringData") or {}).items()})
        return entries
    entries = {key: value.encode() for key, value in (obj.get("data") or {}).items()}
    entries.update({key: base64.b64decode(value) for key, value in (obj.get("binaryData") or {}).items()})
    return entries


def is_status(error: Exception, *codes: int) -> bool:
    return isinstance(error, ApiException) and error.status in codes


class Kube:
    """The API calls of one node identity."""

    def __init__(self, kubeconfig: str, node_name: str) -> None:
        self.api_client: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig)
        self.node_name = node_name
        self.core = client.CoreV1Api(self.api_client)
        self.coordination = client.CoordinationV1Api(self.api_client)

    def server_version(self) -> str:
        response = client.VersionApi(self.api_client).get_code(_preload_content=False, _request_timeout=TIMEOUT_S)
        return str(_json(response)["gitVersion"])

    # Pods bound to this node: the only pods a node identity may list or watch.

    def list_pods(self) -> tuple[list[Json], str]:
        response = self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node_name}", _preload_content=False, _request_timeout=TIMEOUT_S)
        listing = _json(response)
        return listing.get("items") or [], str(listing["metadata"]["resourceVersion"])

    def watch_pods(self, resource_version: str, timeout_s: int) -> Iterator[Json]:
        """Watch events ({type, object}) after `resource_version`; ends when the server closes the watch."""
        response = cast(urllib3.HTTPResponse, self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node_name}", watch=True, allow_watch_bookmarks=True,
            resource_version=resource_version, timeout_seconds=timeout_s,
            _preload_content=False, _request_timeout=(TIMEOUT_S, timeout_s + TIMEOUT_S)))
        try:
            pending = b""
            for chunk in response.stream(65536, decode_content=False):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        finally:
            response.release_conn()

    def patch_pod_status(self, namespace: str, name: str, uid: str, status: Json, timeout_s: float = TIMEOUT_S) -> None:
        """Strategic-merge the kubelet-owned part of a pod's status; the UID guards against a successor pod."""
        body = {"metadata": {"uid": uid}, "status": status}
        self.core.patch_namespaced_pod_status(name, namespace, body, _content_type=STRATEGIC_MERGE,
                                              _preload_content=False, _request_timeout=timeout_s)

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """The kubelet's final delete: grace 0, only this incarnation of the pod; gone already is fine."""
        options = client.V1DeleteOptions.model_validate({"gracePeriodSeconds": 0, "preconditions": {"uid": uid}})
        try:
            self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0, body=options,
                                            _preload_content=False, _request_timeout=TIMEOUT_S)
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    # Objects that pods bound to this node reference (the Node authorizer allows exactly those).

    def _get_or_none(self, call: Any, *args: Any) -> Json | None:
        try:
            return _json(call(*args, _preload_content=False, _request_timeout=TIMEOUT_S))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def get_secret(self, namespace: str, name: str) -> Json | None:
        return self._get_or_none(self.core.read_namespaced_secret, name, namespace)

    def get_config_map(self, namespace: str, name: str) -> Json | None:
        return self._get_or_none(self.core.read_namespaced_config_map, name, namespace)

    def get_pvc(self, namespace: str, name: str) -> Json | None:
        return self._get_or_none(self.core.read_namespaced_persistent_volume_claim, name, namespace)

    def get_pv(self, name: str) -> Json | None:
        return self._get_or_none(self.core.read_persistent_volume, name)

    def request_token(self, pod: Json, audience: str | None, expiration_s: int) -> Json:
        """A ServiceAccount token bound to the pod (TokenRequest); returns its status (token, expiry)."""
        metadata = pod["metadata"]
        body = client.AuthenticationV1TokenRequest.model_validate({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else [],
                "expirationSeconds": expiration_s,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": metadata["name"],
                                   "uid": metadata["uid"]},
            },
        })
        account = pod["spec"].get("serviceAccountName") or "default"
        response = self.core.create_namespaced_service_account_token(
            account, metadata["namespace"], body, _preload_content=False, _request_timeout=TIMEOUT_S)
        status: Json = _json(response)["status"]
        return status

    # The node itself and its lease.

    def get_node(self) -> Json | None:
        return self._get_or_none(self.core.read_node, self.node_name)

    def create_node(self, node: Json) -> Json:
        body = client.V1Node.model_validate(node)
        return _json(self.core.create_node(body, _preload_content=False, _request_timeout=TIMEOUT_S))

    def patch_node_status(self, status: Json) -> None:
        self.core.patch_node_status(self.node_name, {"status": status}, _content_type=STRATEGIC_MERGE,
                                    _preload_content=False, _request_timeout=TIMEOUT_S)

    def get_lease(self) -> Json | None:
        return self._get_or_none(self.coordination.read_namespaced_lease, self.node_name, NODE_LEASE_NAMESPACE)

    def create_event(self, event: Json) -> None:
        self.core.create_namespaced_event(event["metadata"]["namespace"], client.CoreV1Event.model_validate(event),
                                          _preload_content=False, _request_timeout=TIMEOUT_S)

    def create_lease(self, lease: Json) -> Json:
        return _json(self.coordination.create_namespaced_lease(
            NODE_LEASE_NAMESPACE, client.V1Lease.model_validate(lease), _preload_content=False,
            _request_timeout=TIMEOUT_S))

    def replace_lease(self, lease: Json) -> Json:
        return _json(self.coordination.replace_namespaced_lease(
            self.node_name, NODE_LEASE_NAMESPACE, client.V1Lease.model_validate(lease), _preload_content=False,
            _request_timeout=TIMEOUT_S))


class NamespaceObjects:
    """The Secrets and ConfigMaps of one pod's namespace, as env and volume rendering read them."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self._kube = kube
        self._namespace = namespace

    def secret(self, name: str) -> Json | None:
        return self._kube.get_secret(self._namespace, name)

    def config_map(self, name: str) -> Json | None:
        return self._kube.get_config_map(self._namespace, name)
