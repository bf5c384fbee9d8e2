"""`hpo-operator`: run the operator (a thin wrapper around `kopf run` with our handlers).

Namespaces come from HPO_NAMESPACES (comma-separated; empty watches all), the MySQL default
server from HPO_MYSQL_*; other flags pass through to Kopf (e.g. --verbose, --liveness, --peering).
"""

from __future__ import annotations

import sys

from kopf.cli import main as kopf_main

from hpo_operator.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    scope = [f"--namespace={n}" for n in settings.namespaces] or ["--all-namespaces"]
    sys.argv = ["kopf", "run", "--standalone", *scope, *sys.argv[1:], "-m", "hpo_operator.handlers"]
    kopf_main()


if __name__ == "__main__":
    main()
