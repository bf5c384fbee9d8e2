"""The downward API: what a pod may learn about itself, for env `fieldRef`/`resourceFieldRef` and volumes.

Both environment variables and downwardAPI volume files resolve the same field paths and resource
references, so the rules live here once, as pure functions of the pod manifest.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

Json = dict[str, Any]

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": Fraction(1),
            "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
            "P": Fraction(10**15), "E": Fraction(10**18)}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[A-Za-z]*)$")
_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.*)'\]$")


class DownwardError(ValueError):
    """A field path or resource the pod asked for that cannot be resolved."""


def parse_quantity(text: str) -> Fraction:
    """A Kubernetes resource quantity ("500m", "24Gi", "1e3") as an exact number."""
    match = _QUANTITY.match(text.strip())
    if not match:
        raise DownwardError(f"invalid quantity {text!r}")
    number, suffix = Fraction(match.group(1)), match.group(2)
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    if suffix[:1] in ("e", "E"):
        return number * Fraction(10) ** int(suffix[1:])
    raise DownwardError(f"invalid quantity suffix in {text!r}")


def _format_map(values: dict[str, str]) -> str:
    """Labels or annotations as the kubelet writes them into a downwardAPI file: sorted `k="v"` lines."""
    return "\n".join(f'{key}="{_go_quote(values[key])}"' for key in sorted(values))


def _go_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def field_value(pod: Json, field_path: str, host_ip: str) -> str:
    """The value of a `fieldRef.fieldPath` for this pod (all pods share the host's address here)."""
    metadata, spec = pod.get("metadata", {}), pod.get("spec", {})
    subscript = _SUBSCRIPT.match(field_path)
    if subscript:
        return str((metadata.get(subscript.group(1)) or {}).get(subscript.group(2), ""))
    simple: dict[str, str] = {
        "metadata.name": metadata.get("name", ""),
        "metadata.namespace": metadata.get("namespace", ""),
        "metadata.uid": metadata.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": host_ip,
        "status.podIPs": host_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if field_path in simple:
        return simple[field_path]
    if field_path in ("metadata.labels", "metadata.annotations"):
        return _format_map(metadata.get(field_path.split(".")[1]) or {})
    raise DownwardError(f"unsupported fieldPath {field_path!r}")


def resource_value(container: Json, resource: str, divisor: str | None, allocatable: dict[str, str]) -> str:
    """The value of a `resourceFieldRef`: a limit defaults to the node's allocatable, as the kubelet does."""
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or not name:
        raise DownwardError(f"unsupported resource {resource!r}")
    declared = (container.get("resources") or {}).get(kind) or {}
    raw = declared.get(name) or (allocatable.get(name) if kind == "limits" else None) or "0"
    scale = parse_quantity(divisor or "1")
    if scale <= 0:
        raise DownwardError(f"invalid divisor {divisor!r}")
    return str(math.ceil(parse_quantity(raw) / scale))
