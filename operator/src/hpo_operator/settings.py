"""Operator-wide settings, from the environment (the Helm chart and `make operator-up` set them).

Defaults for what a study may leave out (the MySQL server, the trial image) live here, so a study
need not repeat them; the admin password is held here and used only for provisioning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hpo_operator.database import Server


@dataclass(frozen=True)
class Settings:
    mysql_host: str = "mysql"
    mysql_port: int = 3306
    mysql_user: str = ""
    mysql_password: str = field(default="", repr=False)
    trial_image: str = "ghcr.io/hpo-operator/trial:0.1.0"
    namespaces: tuple[str, ...] = ()
    metrics_port: int = 9090
    resync_seconds: float = 10.0
    kept_failed_jobs: int = 3

    @property
    def default_server(self) -> Server:
        return Server(self.mysql_host, self.mysql_port, self.mysql_user, self.mysql_password)

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            mysql_host=env.get("HPO_MYSQL_HOST", cls.mysql_host),
            mysql_port=int(env.get("HPO_MYSQL_PORT", cls.mysql_port)),
            mysql_user=env.get("HPO_MYSQL_USER", ""),
            mysql_password=env.get("HPO_MYSQL_PASSWORD", ""),
            trial_image=env.get("HPO_TRIAL_IMAGE", cls.trial_image),
            namespaces=tuple(n for n in env.get("HPO_NAMESPACES", "").split(",") if n),
            metrics_port=int(env.get("HPO_METRICS_PORT", cls.metrics_port)),
            resync_seconds=float(env.get("HPO_RESYNC_SECONDS", cls.resync_seconds)),
        )
