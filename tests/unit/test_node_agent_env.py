"""Node agent: container environments and downward-API values, as the kubelet computes them."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from tests.testbed.node_agent.downward import DownwardError, field_value, parse_quantity, resource_value
from tests.testbed.node_agent.env import ContainerConfigError, declared_env, expand, service_env

pytestmark = pytest.mark.unit

Json = dict[str, Any]
POD: Json = {
    "metadata": {"name": "trial-7", "namespace": "team", "uid": "u-1", "labels": {"app": "mnist", "tier": "a b"},
                 "annotations": {"note": 'say "hi"'}},
    "spec": {"nodeName": "testbed-node", "serviceAccountName": "runner"},
}
ALLOCATABLE = {"cpu": "2", "memory": "24Gi"}


class Objects:
    """Secrets and ConfigMaps of one namespace, in memory."""

    def __init__(self, secrets: dict[str, Json] | None = None, config_maps: dict[str, Json] | None = None) -> None:
        self.secrets = secrets or {}
        self.config_maps = config_maps or {}

    def secret(self, name: str) -> Json | None:
        return self.secrets.get(name)

    def config_map(self, name: str) -> Json | None:
        return self.config_maps.get(name)


def lookup(values: dict[str, str]) -> Any:
    return values.get


@pytest.mark.parametrize(("text", "expected"), [
    ("$(VAR)", "value"),
    ("pre-$(VAR)-post", "pre-value-post"),
    ("$$(VAR)", "$(VAR)"),
    ("$$$(VAR)", "$value"),
    ("$(UNKNOWN)", "$(UNKNOWN)"),
    ("$(VAR", "$(VAR"),
    ("$VAR", "$VAR"),
    ("a $ b", "a $ b"),
    ("ends with $", "ends with $"),
    ("$(EMPTY)x", "x"),
    ("$(VAR)$(VAR)", "valuevalue"),
])
def test_expansion_follows_kubernetes_rules(text: str, expected: str) -> None:
    assert expand(text, lookup({"VAR": "value", "EMPTY": ""})) == expected


def test_env_overrides_env_from_and_expands_against_what_came_before() -> None:
    objects = Objects(config_maps={"cfg": {"kind": "ConfigMap", "data": {"A": "from-map", "B": "b"}}})
    container = {
        "envFrom": [{"configMapRef": {"name": "cfg"}}, {"configMapRef": {"name": "cfg"}, "prefix": "P_"}],
        "env": [{"name": "A", "value": "explicit"},
                {"name": "C", "value": "$(A)/$(B)/$(LATER)/$(KUBERNETES_SERVICE_HOST)"},
                {"name": "LATER", "value": "x"}],
    }
    env = declared_env(POD, container, objects, service_env("127.0.0.1", 6443), ALLOCATABLE, "127.0.0.1")
    assert env["A"] == "explicit" and env["P_A"] == "from-map" and env["P_B"] == "b"
    assert env["C"] == "explicit/b/$(LATER)/127.0.0.1"
    assert env["KUBERNETES_PORT_6443_TCP_ADDR"] == "127.0.0.1" and env["KUBERNETES_SERVICE_PORT"] == "6443"


def test_a_declared_variable_may_shadow_a_service_variable() -> None:
    container = {"env": [{"name": "KUBERNETES_SERVICE_HOST", "value": "elsewhere"}]}
    env = declared_env(POD, container, Objects(), service_env("127.0.0.1", 6443), ALLOCATABLE, "127.0.0.1")
    assert env["KUBERNETES_SERVICE_HOST"] == "elsewhere"


def test_secret_values_are_decoded_and_optional_references_may_be_missing() -> None:
    objects = Objects(secrets={"db": {"kind": "Secret", "data": {"password": "czNjcmV0"}}})
    container = {"env": [
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
        {"name": "NO_KEY", "valueFrom": {"secretKeyRef": {"name": "db", "key": "user", "optional": True}}},
        {"name": "NO_SECRET", "valueFrom": {"secretKeyRef": {"name": "other", "key": "x", "optional": True}}},
    ], "envFrom": [{"secretRef": {"name": "absent", "optional": True}}]}
    env = declared_env(POD, container, objects, {}, ALLOCATABLE, "127.0.0.1")
    assert env == {"PASSWORD": "s3cret"}


@pytest.mark.parametrize("reference", [
    {"secretKeyRef": {"name": "absent", "key": "x"}},
    {"secretKeyRef": {"name": "db", "key": "absent"}},
    {"configMapKeyRef": {"name": "absent", "key": "x"}},
    {"fieldRef": {"fieldPath": "spec.unknownField"}},
])
def test_a_missing_required_reference_is_a_config_error(reference: Json) -> None:
    objects = Objects(secrets={"db": {"kind": "Secret", "data": {}}})
    with pytest.raises(ContainerConfigError):
        declared_env(POD, {"env": [{"name": "X", "valueFrom": reference}]}, objects, {}, ALLOCATABLE, "127.0.0.1")


@pytest.mark.parametrize(("path", "expected"), [
    ("metadata.name", "trial-7"),
    ("metadata.namespace", "team"),
    ("metadata.uid", "u-1"),
    ("metadata.labels['app']", "mnist"),
    ("metadata.labels['absent']", ""),
    ("metadata.annotations['note']", 'say "hi"'),
    ("spec.nodeName", "testbed-node"),
    ("spec.serviceAccountName", "runner"),
    ("status.podIP", "127.0.0.1"),
    ("status.hostIP", "127.0.0.1"),
    ("metadata.labels", 'app="mnist"\ntier="a b"'),
    ("metadata.annotations", 'note="say \\"hi\\""'),
])
def test_field_paths_resolve_against_the_pod(path: str, expected: str) -> None:
    assert field_value(POD, path, "127.0.0.1") == expected


@pytest.mark.parametrize(("text", "value"), [
    ("2", Fraction(2)), ("500m", Fraction(1, 2)), ("24Gi", Fraction(24 * 2**30)), ("1k", Fraction(1000)),
    ("1.5", Fraction(3, 2)), ("1e3", Fraction(1000)), ("100Mi", Fraction(100 * 2**20)),
])
def test_quantities_parse_exactly(text: str, value: Fraction) -> None:
    assert parse_quantity(text) == value


def test_a_malformed_quantity_is_refused() -> None:
    with pytest.raises(DownwardError):
        parse_quantity("12 apples")


def test_resource_references_round_up_and_limits_default_to_the_node() -> None:
    container = {"resources": {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}}
    assert resource_value(container, "requests.cpu", None, ALLOCATABLE) == "1"
    assert resource_value(container, "requests.cpu", "1m", ALLOCATABLE) == "250"
    assert resource_value(container, "limits.memory", "1Mi", ALLOCATABLE) == "2048"
    assert resource_value(container, "limits.cpu", None, ALLOCATABLE) == "2"
    assert resource_value({}, "requests.memory", None, ALLOCATABLE) == "0"
