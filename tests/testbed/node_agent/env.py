"""Container environments: what a pod spec declares, plus what a kubelet and an image would add.

The kubelet builds a container's environment from `envFrom` then `env` (later entries win), expands
`$(VAR)` references against what was defined before and the service variables, and the runtime adds
the image's defaults underneath. Nothing of the agent's own environment may leak in: the agent runs
with admin credentials in its environment, containers must not see them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from tests.testbed.node_agent.downward import DownwardError, field_value, resource_value
from tests.testbed.node_agent.kube import object_data
from tests.testbed.node_agent.settings import AgentSettings

Json = dict[str, Any]


class ContainerConfigError(Exception):
    """A reference the container's config needs is missing: the kubelet's CreateContainerConfigError."""


class ObjectLookup(Protocol):
    """Reads the Secrets and ConfigMaps of the pod's namespace (None when absent)."""

    def secret(self, name: str) -> Json | None: ...

    def config_map(self, name: str) -> Json | None: ...


def expand(text: str, mapping: Callable[[str], str | None]) -> str:
    """Kubernetes `$(VAR)` expansion: `$$` escapes, unknown or unterminated references stay literal."""
    out: list[str] = []
    cursor, length = 0, len(text)
    while cursor < length:
        char = text[cursor]
        if char != "$" or cursor + 1 >= length:
            out.append(char)
            cursor += 1
            continue
        following = text[cursor + 1]
        if following == "$":
            out.append("$")
            cursor += 2
        elif following == "(":
            closer = text.find(")", cursor + 2)
            if closer < 0:
                out.append("$(")
                cursor += 2
                continue
            name = text[cursor + 2:closer]
            value = mapping(name)
            out.append(value if value is not None else f"$({name})")
            cursor = closer + 1
        else:
            out.append("$" + following)
            cursor += 2
    return "".join(out)


def image_env(settings: AgentSettings, pod: Json) -> dict[str, str]:
    """What the image and runtime put under everything else: a PATH, HOME, and the pod's hostname."""
    hostname = pod["spec"].get("hostname") or pod["metadata"]["name"]
    return {"PATH": settings.container_path, "HOME": "/root", "HOSTNAME": hostname}


def service_env(host: str, port: int) -> dict[str, str]:
    """The `kubernetes` service's variables, as the kubelet adds them, pointing at the real API server."""
    url = f"tcp://{host}:{port}"
    prefix = f"KUBERNETES_PORT_{port}_TCP"
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": url,
        prefix: url,
        f"{prefix}_PROTO": "tcp",
        f"{prefix}_PORT": str(port),
        f"{prefix}_ADDR": host,
    }


def _source_data(objects: ObjectLookup, kind: str, ref: Json) -> dict[str, bytes] | None:
    name = ref.get("name", "")
    found = objects.secret(name) if kind == "Secret" else objects.config_map(name)
    if found is None:
        if ref.get("optional"):
            return None
        raise ContainerConfigError(f'{kind.lower()} "{name}" not found')
    return object_data(found)


def _from_sources(objects: ObjectLookup, sources: list[Json]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in sources:
        secret = source.get("secretRef")
        kind, ref = ("Secret", secret) if secret else ("ConfigMap", source["configMapRef"])
        data = _source_data(objects, kind, ref) or {}
        prefix = source.get("prefix", "")
        for key, value in data.items():
            name = prefix + key
            if name and "=" not in name and name.isprintable():
                env[name] = value.decode(errors="replace")
    return env


def _key_value(objects: ObjectLookup, kind: str, ref: Json) -> str | None:
    data = _source_data(objects, kind, ref)
    if data is None:
        return None
    key = ref.get("key", "")
    if key not in data:
        if ref.get("optional"):
            return None
        raise ContainerConfigError(f'couldn\'t find key {key} in {kind} "{ref.get("name", "")}"')
    return data[key].decode(errors="replace")


def _value_from(pod: Json, container: Json, source: Json, objects: ObjectLookup, allocatable: dict[str, str],
                host_ip: str) -> str | None:
    try:
        if "fieldRef" in source:
            return field_value(pod, source["fieldRef"]["fieldPath"], host_ip)
        if "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            target = _named_container(pod, ref.get("containerName")) or container
            return resource_value(target, ref["resource"], ref.get("divisor"), allocatable)
    except DownwardError as error:
        raise ContainerConfigError(str(error)) from error
    if "secretKeyRef" in source:
        return _key_value(objects, "Secret", source["secretKeyRef"])
    if "configMapKeyRef" in source:
        return _key_value(objects, "ConfigMap", source["configMapKeyRef"])
    raise ContainerConfigError(f"unsupported valueFrom {sorted(source)}")


def _named_container(pod: Json, name: str | None) -> Json | None:
    spec = pod.get("spec", {})
    candidates: list[Json] = [*spec.get("initContainers", []), *spec.get("containers", [])]
    return next((candidate for candidate in candidates if name and candidate.get("name") == name), None)


def declared_env(pod: Json, container: Json, objects: ObjectLookup, service: Mapping[str, str],
                 allocatable: dict[str, str], host_ip: str) -> dict[str, str]:
    """The variables the kubelet gives a container: service variables < envFrom < env, `$(VAR)` expanded."""
    env = _from_sources(objects, container.get("envFrom") or [])
    for item in container.get("env") or []:
        if "valueFrom" in item:
            value = _value_from(pod, container, item["valueFrom"], objects, allocatable, host_ip)
            if value is None:
                continue
        else:
            value = expand(item.get("value", ""), lambda name: env.get(name, service.get(name)))
        env[item["name"]] = value
    return {**service, **env}
