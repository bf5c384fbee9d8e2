"""The operator's policy: what a study may ask of it, checked before anything is provisioned or run.

A study is written by a tenant; the operator holds the MySQL admin credentials and creates Jobs
with its own rights. So a study may name another MySQL server only with that server's admin Secret
of its own (the operator's admin goes to the operator's server alone), only a host the operator
allows, and its trial pods may not escalate beyond what the namespace's default ServiceAccount can
do. Pure functions of the spec and the operator's settings; a violation ends the study `Failed`
with every problem listed, and nothing is created.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpo_operator.models import HpoStudySpec, Storage
from hpo_operator.validation import Problem

DEFAULT_SERVICE_ACCOUNT = "default"
_TEMPLATE = "spec.trial.template.spec"
_CONTAINER_KINDS = ("initContainers", "containers", "ephemeralContainers")


@dataclass(frozen=True)
class Policy:
    """Operator-wide rules (from `HPO_STORAGE_HOSTS`, `HPO_TRIAL_SERVICE_ACCOUNTS` and the default server)."""

    default_host: str
    default_port: int
    storage_hosts: tuple[str, ...] = ()
    """Hosts studies may name (`host`, `host:port`, `*.domain`); empty allows any, with the study's own admin."""
    trial_service_accounts: tuple[str, ...] = ()
    """ServiceAccounts trial pods may run as besides `default`; only these get a token mounted."""

    def uses_default_server(self, storage: Storage) -> bool:
        host = _host(storage.host) if storage.host else _host(self.default_host)
        return host == _host(self.default_host) and (storage.port or self.default_port) == self.default_port

    def host_allowed(self, host: str, port: int) -> bool:
        if not self.storage_hosts:
            return True
        host = _host(host)
        for entry in self.storage_hosts:
            pattern, _, allowed_port = entry.partition(":")
            if allowed_port and allowed_port != str(port):
                continue
            pattern = _host(pattern)
            if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
                return True
        return False

    def check(self, spec: HpoStudySpec) -> list[Problem]:
        """Every way the study breaks the policy (empty: it may run)."""
        return self.storage_problems(spec.storage) + self.trial_pod_problems(spec.trial.template)

    def storage_problems(self, storage: Storage) -> list[Problem]:
        if self.uses_default_server(storage):
            if storage.tls is not None:
                return [
                    Problem(
                        "spec.storage.tls",
                        "applies to a server the study names in spec.storage.host; "
                        "the operator's server uses the operator's TLS settings; "
                        "remove it",
                    )
                ]
            return []
        host, port = storage.host or self.default_host, storage.port or self.default_port
        problems = []
        if storage.admin_secret is None:
            problems.append(
                Problem(
                    "spec.storage.adminSecret",
                    f"required because spec.storage names a server other than the operator's ({host}:{port}): the "
                    "operator's admin credentials are used on its own server only; name a Secret of this namespace "
                    "with the keys username and password of an admin of that server, or remove spec.storage.host "
                    "and spec.storage.port",
                )
            )
        if not self.host_allowed(host, port):
            problems.append(
                Problem(
                    "spec.storage.host",
                    f"{host}:{port} is not among the storage hosts the operator allows (HPO_STORAGE_HOSTS: "
                    f"{', '.join(self.storage_hosts)}); use one of them, or remove spec.storage.host to use the "
                    "operator's server",
                )
            )
        return problems

    def trial_pod_problems(self, template: dict[str, Any]) -> list[Problem]:
        """What in the trial pod template would give trial pods more than the namespace's default rights."""
        pod = template.get("spec") or {}
        if not isinstance(pod, dict):
            return [Problem(_TEMPLATE, "must be a pod spec (an object)")]
        account = pod.get("serviceAccountName") or pod.get("serviceAccount") or DEFAULT_SERVICE_ACCOUNT
        problems = []
        for key in ("serviceAccountName", "serviceAccount"):
            value = pod.get(key)
            if value is not None and value != DEFAULT_SERVICE_ACCOUNT and value not in self.trial_service_accounts:
                problems.append(Problem(f"{_TEMPLATE}.{key}", self._account_message(value)))
        may_have_token = account in self.trial_service_accounts
        if pod.get("automountServiceAccountToken") is True and not may_have_token:
            problems.append(
                Problem(
                    f"{_TEMPLATE}.automountServiceAccountToken",
                    f"trial pods get no ServiceAccount token unless their ServiceAccount ({account}) "
                    "is listed in the operator's HPO_TRIAL_SERVICE_ACCOUNTS; remove it",
                )
            )
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(key):
                problems.append(
                    Problem(f"{_TEMPLATE}.{key}", "trial pods may not share the node's namespaces; remove it")
                )
        problems += _volume_problems(pod.get("volumes"), may_have_token, account)
        for kind in _CONTAINER_KINDS:
            problems += _container_problems(kind, pod.get(kind))
        return problems

    def _account_message(self, account: object) -> str:
        allowed = ", ".join([DEFAULT_SERVICE_ACCOUNT, *self.trial_service_accounts])
        return (
            f"trial pods may run as {allowed}; {account!r} is not allowed by the operator's policy "
            "(HPO_TRIAL_SERVICE_ACCOUNTS); remove it or ask your cluster admin to allow it"
        )


def _host(host: str) -> str:
    return host.lower().rstrip(".")


def _items(value: object, where: str, problems: list[Problem]) -> list[dict[str, Any]]:
    """The entries of a list field, reporting a field of the wrong shape instead of failing on it."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        problems.append(Problem(where, "must be a list of objects"))
        return []
    return value


def _volume_problems(volumes: object, may_have_token: bool, account: str) -> list[Problem]:
    problems: list[Problem] = []
    for index, volume in enumerate(_items(volumes, f"{_TEMPLATE}.volumes", problems)):
        where = f"{_TEMPLATE}.volumes[{index}]"
        if "hostPath" in volume:
            problems.append(
                Problem(
                    f"{where}.hostPath",
                    "trial pods may not mount paths of the node; use a "
                    "PersistentVolumeClaim (spec.checkpoints.claimName)",
                )
            )
        sources = (volume.get("projected") or {}).get("sources") if isinstance(volume.get("projected"), dict) else None
        for position, source in enumerate(_items(sources, f"{where}.projected.sources", problems)):
            if "serviceAccountToken" in source and not may_have_token:
                problems.append(
                    Problem(
                        f"{where}.projected.sources[{position}].serviceAccountToken",
                        f"trial pods get no ServiceAccount token unless their ServiceAccount "
                        f"({account}) is listed in HPO_TRIAL_SERVICE_ACCOUNTS; remove it",
                    )
                )
    return problems


def _container_problems(kind: str, containers: object) -> list[Problem]:
    problems: list[Problem] = []
    for index, container in enumerate(_items(containers, f"{_TEMPLATE}.{kind}", problems)):
        where = f"{_TEMPLATE}.{kind}[{index}]"
        context = container.get("securityContext") or {}
        if not isinstance(context, dict):
            problems.append(Problem(f"{where}.securityContext", "must be an object"))
            continue
        if context.get("privileged"):
            problems.append(
                Problem(f"{where}.securityContext.privileged", "trial pods may not be privileged; remove it")
            )
        capabilities = context.get("capabilities") or {}
        if isinstance(capabilities, dict) and capabilities.get("add"):
            problems.append(
                Problem(
                    f"{where}.securityContext.capabilities.add", "trial pods may not add Linux capabilities; remove it"
                )
            )
        for position, port in enumerate(_items(container.get("ports"), f"{where}.ports", problems)):
            if port.get("hostPort"):
                problems.append(
                    Problem(
                        f"{where}.ports[{position}].hostPort", "trial pods may not bind ports of the node; remove it"
                    )
                )
    return problems
