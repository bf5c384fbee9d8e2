"""The trial pod template as a user writes it: its shape and its resource quantities, checked before any Job.

Part of validating a study (`validation.py`), before anything is provisioned. The CRD keeps
`spec.trial.template` free-form (a pod template is too large a schema to copy), so anything may
arrive here: these checks read it defensively and never raise, and cover what the operator itself
reads or writes when it builds a trial Job (`dispatch.build_job`) and what users most often get
wrong (quantities such as `cpu: "lots"`). Everything else a pod template may hold is left to the
API server, which validates the first trial Job in a server-side dry-run (`kube.dry_run_job`).
Pure functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from hpo_operator.contract import TRIAL_CONTAINER

WHERE = "spec.trial.template"
_CONTAINER_KINDS = ("initContainers", "containers")
# Kubernetes' quantity grammar (k8s.io/apimachinery/pkg/api/resource): a signed decimal number, then a
# binary-SI suffix, a decimal-SI suffix or a decimal exponent.
_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$")
_SUFFIXES = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{suffix: Decimal(1024) ** power for power, suffix in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), 1)},
}
_MAX_QUANTITY = Decimal(2) ** 63  # the API stores quantities in 64 bits (scaled)
_NATIVE_RESOURCES = {"cpu", "memory", "ephemeral-storage"}


@dataclass(frozen=True)
class Issue:
    """One problem with the template: the field (camelCase path from `spec.`) and what to do."""

    field: str
    message: str


def parse_quantity(value: object) -> Decimal | None:
    """A Kubernetes quantity's value (``"500m"`` -> 0.5, ``"1Gi"`` -> 1073741824), or None when it is not one.

    YAML numbers (``nvidia.com/gpu: 1``) are quantities too.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = value if isinstance(value, str) else repr(value)
    match = _QUANTITY.match(text.strip())
    if match is None:
        return None
    number, suffix = match.group(1), match.group(2) or ""
    try:
        amount = Decimal(number)
        scale = _SUFFIXES[suffix] if suffix in _SUFFIXES else Decimal(10) ** int(suffix[1:])
        return amount * scale
    except (ArithmeticError, ValueError):
        return None


def check(template: object) -> list[Issue]:
    """Every problem the operator can see in a trial pod template (empty: it may build Jobs from it)."""
    if not isinstance(template, dict):
        return [Issue(WHERE, "must be a pod template (an object with metadata and spec)")]
    issues: list[Issue] = []
    metadata = template.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            issues.append(Issue(f"{WHERE}.metadata", "must be an object"))
        else:
            for key in ("labels", "annotations"):
                issues += _string_map(metadata.get(key), f"{WHERE}.metadata.{key}")
    pod = template.get("spec")
    if pod is None:
        return issues
    if not isinstance(pod, dict):
        return [*issues, Issue(f"{WHERE}.spec", "must be a pod spec (an object)")]
    issues += _string_map(pod.get("nodeSelector"), f"{WHERE}.spec.nodeSelector")
    for key in ("tolerations", "volumes", "imagePullSecrets"):
        issues += _objects(pod.get(key), f"{WHERE}.spec.{key}")[1]
    for index, volume in enumerate(_objects(pod.get("volumes"), "")[0]):
        if not isinstance(volume.get("name"), str) or not volume.get("name"):
            issues.append(Issue(f"{WHERE}.spec.volumes[{index}].name", "every volume needs a name"))
    for key, expected in (
        ("serviceAccountName", str),
        ("automountServiceAccountToken", bool),
        ("activeDeadlineSeconds", int),
        ("priorityClassName", str),
    ):
        value = pod.get(key)
        if value is not None and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
            issues.append(Issue(f"{WHERE}.spec.{key}", f"must be {_KIND_NAMES[expected]}, not {value!r}"))
    containers: list[dict[str, Any]] = []
    for kind in _CONTAINER_KINDS:
        found, shape = _objects(pod.get(kind), f"{WHERE}.spec.{kind}")
        issues += shape
        for index, container in enumerate(found):
            issues += _container(
                container, f"{WHERE}.spec.{kind}[{index}]", named=kind != "containers" or len(found) > 1
            )
        if kind == "containers":
            containers = found
    if len(containers) > 1 and not any(c.get("name") == TRIAL_CONTAINER for c in containers):
        issues.append(
            Issue(
                f"{WHERE}.spec.containers",
                f"with several containers, name the one that runs the trial {TRIAL_CONTAINER!r}",
            )
        )
    return issues


_KIND_NAMES: dict[type, str] = {str: "a string", bool: "true or false", int: "an integer"}


def _objects(value: object, where: str) -> tuple[list[dict[str, Any]], list[Issue]]:
    """The entries of a list-of-objects field, and an issue instead of them when it has another shape."""
    if value is None:
        return [], []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        return [], [Issue(where, "must be a list of objects")]
    return value, []


def _string_map(value: object, where: str) -> list[Issue]:
    if value is None:
        return []
    if not isinstance(value, dict):
        return [Issue(where, "must be a map of strings")]
    odd = [key for key, item in value.items() if not isinstance(item, str)]
    return [Issue(f"{where}.{odd[0]}", f"must be a string (quote it), not {value[odd[0]]!r}")] if odd else []


def _strings(value: object, where: str) -> list[Issue]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return [Issue(where, "must be a list of strings (quote numbers)")]
    return []


def _container(container: dict[str, Any], where: str, named: bool) -> list[Issue]:
    issues: list[Issue] = []
    name = container.get("name")
    if (named and name is None) or (name is not None and (not isinstance(name, str) or not name)):
        issues.append(Issue(f"{where}.name", "every container needs a name"))
    for key in ("image", "workingDir", "imagePullPolicy"):
        value = container.get(key)
        if value is not None and not isinstance(value, str):
            issues.append(Issue(f"{where}.{key}", f"must be a string, not {value!r}"))
    for key in ("command", "args"):
        issues += _strings(container.get(key), f"{where}.{key}")
    env, shape = _objects(container.get("env"), f"{where}.env")
    issues += shape
    for index, variable in enumerate(env):
        if not isinstance(variable.get("name"), str) or not variable.get("name"):
            issues.append(Issue(f"{where}.env[{index}].name", "every variable needs a name"))
        if "value" in variable and not isinstance(variable["value"], str):
            issues.append(
                Issue(f"{where}.env[{index}].value", f"must be a string (quote it), not {variable['value']!r}")
            )
    for key in ("envFrom", "volumeMounts", "ports"):
        issues += _objects(container.get(key), f"{where}.{key}")[1]
    for index, mount in enumerate(_objects(container.get("volumeMounts"), "")[0]):
        for key in ("name", "mountPath"):
            if not isinstance(mount.get(key), str) or not mount.get(key):
                issues.append(Issue(f"{where}.volumeMounts[{index}].{key}", "must be a non-empty string"))
    context = container.get("securityContext")
    if context is not None and not isinstance(context, dict):
        issues.append(Issue(f"{where}.securityContext", "must be an object"))
    return issues + _resources(container.get("resources"), f"{where}.resources")


def _resources(resources: object, where: str) -> list[Issue]:
    """Requests and limits must be quantities, limits at least the requests, extended resources whole."""
    if resources is None:
        return []
    if not isinstance(resources, dict):
        return [Issue(where, "must be an object with limits and requests")]
    issues: list[Issue] = []
    amounts: dict[str, dict[str, Decimal]] = {}
    for kind in ("limits", "requests"):
        given = resources.get(kind)
        if given is None:
            continue
        if not isinstance(given, dict):
            issues.append(Issue(f"{where}.{kind}", "must be a map of resource names to quantities"))
            continue
        for resource, value in given.items():
            field = f"{where}.{kind}.{resource}" if "/" not in str(resource) else f"{where}.{kind}[{resource}]"
            amount = parse_quantity(value)
            if amount is None:
                issues.append(
                    Issue(
                        field,
                        f'{value!r} is not a Kubernetes quantity; write e.g. "500m" or "2" '
                        'for cpu, "512Mi" or "4Gi" for memory, a whole number for '
                        "devices such as nvidia.com/gpu",
                    )
                )
            elif amount < 0:
                issues.append(Issue(field, f"{value!r} is negative; resources must be zero or more"))
            elif amount >= _MAX_QUANTITY:
                issues.append(Issue(field, f"{value!r} is too large for Kubernetes"))
            elif (
                str(resource) not in _NATIVE_RESOURCES
                and "hugepages-" not in str(resource)
                and amount != amount.to_integral_value()
            ):
                issues.append(Issue(field, f"{value!r}: {resource} is counted in whole units; use a whole number"))
            else:
                amounts.setdefault(kind, {})[str(resource)] = amount
    limits, requests = amounts.get("limits", {}), amounts.get("requests", {})
    for resource, request in requests.items():
        limit = limits.get(resource)
        field = f"{where}.requests.{resource}" if "/" not in resource else f"{where}.requests[{resource}]"
        if limit is not None and request > limit:
            issues.append(
                Issue(field, f"the request is more than the limit of {resource}; lower it or raise the limit")
            )
        elif (
            limit is not None
            and request != limit
            and resource not in _NATIVE_RESOURCES
            and "hugepages-" not in resource
        ):
            issues.append(
                Issue(
                    field,
                    f"{resource} cannot be overcommitted: request and limit must be equal (or give only the limit)",
                )
            )
    return issues
