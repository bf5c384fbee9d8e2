"""`hpo-operator`: run the operator (a thin wrapper around `kopf run` with our handlers).

Namespaces come from HPO_NAMESPACES (comma-separated; empty watches all), the MySQL default
server from HPO_MYSQL_*. With several replicas, HPO_PEERING names a Kopf peering so that only one
replica works at a time; each needs a distinct priority (equal priorities freeze all), which
HPO_PRIORITY=auto derives from the pod's name. Other flags pass through to Kopf (e.g. --verbose,
--liveness, --log-format).
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys

from kopf.cli import main as kopf_main

from hpo_operator.settings import Settings, SettingsError


def peering_flags(env: dict[str, str]) -> list[str]:
    """Kopf's peering flags: standalone unless HPO_PEERING is set."""
    peering = env.get("HPO_PEERING", "")
    if not peering:
        return ["--standalone"]
    priority = env.get("HPO_PRIORITY", "auto")
    if priority == "auto":  # distinct per pod: a hash of its name, in Kopf's accepted range
        name = env.get("HOSTNAME") or socket.gethostname()
        priority = str(int(hashlib.sha256(name.encode()).hexdigest(), 16) % 1_000_000 + 1)
    return [f"--peering={peering}", f"--priority={priority}"]


def main() -> None:
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        raise SystemExit(f"hpo-operator: {error}") from None
    scope = [f"--namespace={n}" for n in settings.namespaces] or ["--all-namespaces"]
    sys.argv = ["kopf", "run", *peering_flags(dict(os.environ)), *scope, *sys.argv[1:], "-m", "hpo_operator.handlers"]
    kopf_main()


if __name__ == "__main__":
    main()
