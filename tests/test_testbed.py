"""The testbed is a real cluster: schema validation, garbage collection, RBAC, nodes, MariaDB.

What the nodes do with pods (images, cgroups, networking, volumes) is in test_testbed_nodes.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pymysql
import pytest
import yaml
from kubernetes import client

from tests.conftest import KubectlRunner
from tests.helpers import wait_for
from tests.testbed import layout
from tests.testbed.nodes import NODES

pytestmark = pytest.mark.e2e

GROUP = "testbed.hpo.dev"


@pytest.fixture
def widget_crd(kubectl: KubectlRunner) -> Iterator[str]:
    """A throw-away namespaced CRD with a structural schema: spec.size is an integer >= 1."""
    plural = f"widgets{uuid.uuid4().hex[:6]}"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": plural.capitalize()[:-1]},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {"size": {"type": "integer", "minimum": 1}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(crd))
    kubectl("wait", "--for=condition=Established", f"crd/{plural}.{GROUP}", "--timeout=30s")
    yield plural
    kubectl("delete", "crd", f"{plural}.{GROUP}", "--wait=false")


def test_crd_schema_rejects_a_wrong_type_naming_the_field(
    kubectl: KubectlRunner, namespace: str, widget_crd: str
) -> None:
    kind = widget_crd.capitalize()[:-1]
    bad = {"apiVersion": f"{GROUP}/v1", "kind": kind, "metadata": {"name": "w"}, "spec": {"size": "big"}}
    rejected = kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(bad), check=False)
    assert rejected.returncode != 0
    assert "spec.size" in rejected.stderr and "integer" in rejected.stderr

    too_small = {**bad, "spec": {"size": 0}}
    rejected = kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(too_small), check=False)
    assert rejected.returncode != 0 and "spec.size" in rejected.stderr

    good = {**bad, "spec": {"size": 3}}
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(good))
    stored = json.loads(kubectl("get", widget_crd, "w", "-n", namespace, "-o", "json").stdout)
    assert stored["spec"] == {"size": 3}


def test_deleting_an_owner_garbage_collects_its_dependents(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner")))
    reference = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="dependent", owner_references=[reference]))
    )
    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def dependent_gone() -> bool:
        return not core.list_namespaced_config_map(namespace, field_selector="metadata.name=dependent").items

    wait_for(dependent_gone, 60, "the garbage collector to delete the dependent ConfigMap")


def test_rbac_denies_a_bare_service_account_and_allows_one_with_a_role(kubectl: KubectlRunner, namespace: str) -> None:
    kubectl("create", "serviceaccount", "reader", "-n", namespace)
    who = f"--as=system:serviceaccount:{namespace}:reader"
    denied = kubectl("auth", "can-i", "list", "pods", "-n", namespace, who, check=False)
    assert denied.stdout.strip() == "no"

    kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", namespace)
    kubectl(
        "create", "rolebinding", "reader", "--role=pod-reader", f"--serviceaccount={namespace}:reader", "-n", namespace
    )
    allowed = kubectl("auth", "can-i", "list", "pods", "-n", namespace, who, check=False)
    assert allowed.stdout.strip() == "yes"
    still_denied = kubectl("auth", "can-i", "delete", "pods", "-n", namespace, who, check=False)
    assert still_denied.stdout.strip() == "no"


def test_every_node_is_ready_on_containerd_with_gpu_capacity_and_the_pinned_release(kubectl: KubectlRunner) -> None:
    nodes = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == [node.name for node in NODES]
    for node in nodes:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        info = node["status"]["nodeInfo"]
        assert ready == "True" and info["kubeletVersion"] == layout.KUBERNETES_VERSION
        assert info["containerRuntimeVersion"] == f"containerd://{layout.CONTAINERD_VERSION.lstrip('v')}"
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == layout.NODE_GPUS
    version = yaml.safe_load(kubectl("version", "-o", "yaml").stdout)
    assert version["serverVersion"]["gitVersion"] == layout.KUBERNETES_VERSION


@pytest.mark.integration
def test_mariadb_accepts_the_exported_admin_credentials(testbed_env: dict[str, str]) -> None:
    connection = pymysql.connect(
        host=testbed_env["HPO_MYSQL_HOST"],
        port=int(testbed_env["HPO_MYSQL_PORT"]),
        user=testbed_env["HPO_MYSQL_USER"],
        password=testbed_env["HPO_MYSQL_PASSWORD"],
    )
    database = f"t_{uuid.uuid4().hex[:8]}"
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{database}`")  # the operator provisions databases like this
            cursor.execute("SHOW DATABASES LIKE %s", (database,))
            assert cursor.fetchone() == (database,)
            cursor.execute(f"DROP DATABASE `{database}`")
    finally:
        connection.close()
