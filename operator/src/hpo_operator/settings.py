"""Operator-wide settings, from the environment (the Helm chart and `make operator-up` set them).

Defaults for what a study may leave out (the MySQL server, the trial image) live here, so a study
need not repeat them; the admin password is held here and used only for provisioning on the
default server. The policy studies must follow (`policy.py`) is configured here too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from hpo_operator.database import Server, Tls
from hpo_operator.policy import Policy

TLS_MODES = ("disabled", "verify-ca", "verify-identity")


class SettingsError(Exception):
    """An operator setting is wrong; the message names the variable and the fix."""


def _list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _number(
    env: dict[str, str] | os._Environ[str],
    name: str,
    default: float,
    minimum: float,
    kind: type[int] | type[float] = int,
) -> float:
    """A numeric setting, or SettingsError naming the variable and what it must be."""
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise SettingsError(f"{name}={text!r}: must be {'an integer' if kind is int else 'a number'}") from None
    if value < minimum:
        raise SettingsError(f"{name}={text}: must be at least {minimum:g}")
    return value


def tls_from(mode: str, ca_file: str) -> Tls:
    """The default server's TLS from `HPO_MYSQL_TLS` and `HPO_MYSQL_TLS_CA`."""
    mode = mode.strip().lower() or "disabled"
    if mode not in TLS_MODES:
        raise SettingsError(f"HPO_MYSQL_TLS={mode!r}: use one of {', '.join(TLS_MODES)}")
    if mode == "disabled":
        return Tls()
    if not ca_file:
        raise SettingsError(f"HPO_MYSQL_TLS={mode} needs HPO_MYSQL_TLS_CA, the path of the CA's PEM file")
    try:
        pem = Path(ca_file).read_text()
    except OSError as error:
        raise SettingsError(f"HPO_MYSQL_TLS_CA={ca_file}: cannot read it ({error.strerror})") from error
    return Tls(ca_pem=pem, verify_identity=mode == "verify-identity")


@dataclass(frozen=True)
class Settings:
    mysql_host: str = "mysql"
    mysql_port: int = 3306
    mysql_user: str = ""
    mysql_password: str = field(default="", repr=False)
    mysql_tls: Tls = field(default_factory=Tls)
    trial_image: str = "ghcr.io/hpo-operator/trial:0.1.0"
    namespaces: tuple[str, ...] = ()
    operator_namespace: str = ""
    storage_hosts: tuple[str, ...] = ()
    trial_service_accounts: tuple[str, ...] = ()
    metrics_port: int = 9090
    resync_seconds: float = 10.0
    kept_failed_jobs: int = 3
    max_parallelism: int = 256
    """HPO_MAX_PARALLELISM: no study runs more trials at once, whatever its spec.budget.parallelism."""
    max_waiting_trials: int = 16
    """HPO_MAX_WAITING_TRIALS: a study dispatches no new trial while this many of its trial pods have not started."""
    max_grid_points: int = 100_000
    """HPO_MAX_GRID_POINTS: a grid sampler's points (product of each parameter's values) beyond this are refused."""
    trial_lost_seconds: float = 120.0
    """HPO_TRIAL_LOST_SECONDS: a trial whose pod is unreachable and whose heartbeat is older than this is requeued."""
    delete_timeout_seconds: float = 120.0
    """HPO_DELETE_TIMEOUT_SECONDS: how long deleting a study retries dropping its database before giving up."""

    @property
    def default_server(self) -> Server:
        return Server(self.mysql_host, self.mysql_port, self.mysql_user, self.mysql_password, self.mysql_tls)

    @property
    def policy(self) -> Policy:
        return Policy(self.mysql_host, self.mysql_port, self.storage_hosts, self.trial_service_accounts)

    def serves(self, namespace: str) -> bool:
        """The operator's own namespace (where its admin Secret lives) is served only when listed."""
        return namespace != self.operator_namespace or namespace in self.namespaces

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            mysql_host=env.get("HPO_MYSQL_HOST", cls.mysql_host),
            mysql_port=int(_number(env, "HPO_MYSQL_PORT", cls.mysql_port, 1)),
            mysql_user=env.get("HPO_MYSQL_USER", ""),
            mysql_password=env.get("HPO_MYSQL_PASSWORD", ""),
            mysql_tls=tls_from(env.get("HPO_MYSQL_TLS", ""), env.get("HPO_MYSQL_TLS_CA", "")),
            trial_image=env.get("HPO_TRIAL_IMAGE", cls.trial_image),
            namespaces=_list(env.get("HPO_NAMESPACES", "")),
            operator_namespace=env.get("HPO_OPERATOR_NAMESPACE", ""),
            storage_hosts=_list(env.get("HPO_STORAGE_HOSTS", "")),
            trial_service_accounts=_list(env.get("HPO_TRIAL_SERVICE_ACCOUNTS", "")),
            metrics_port=int(_number(env, "HPO_METRICS_PORT", cls.metrics_port, 1)),
            resync_seconds=_number(env, "HPO_RESYNC_SECONDS", cls.resync_seconds, 0.1, float),
            max_parallelism=int(_number(env, "HPO_MAX_PARALLELISM", cls.max_parallelism, 1)),
            max_waiting_trials=int(_number(env, "HPO_MAX_WAITING_TRIALS", cls.max_waiting_trials, 1)),
            max_grid_points=int(_number(env, "HPO_MAX_GRID_POINTS", cls.max_grid_points, 1)),
            trial_lost_seconds=_number(env, "HPO_TRIAL_LOST_SECONDS", cls.trial_lost_seconds, 30, float),
            delete_timeout_seconds=_number(env, "HPO_DELETE_TIMEOUT_SECONDS", cls.delete_timeout_seconds, 0, float),
        )
