"""``kubectl hpo dashboard``: optuna-dashboard on this machine, on the study's read-only database user.

The dashboard runs in this process, bound to localhost, on the storage :mod:`hpo_cli.studies` opened
from the study's read-only Secret (a cluster Service address is port-forwarded first): nothing is
exposed beyond this machine and the operator's admin is never used.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from typing import TextIO

from optuna.storages import BaseStorage

__all__ = ["free_port", "serve"]


def free_port(host: str) -> int:
    """A TCP port free on ``host`` now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def serve(storage: BaseStorage, study_id: int, host: str, port: int, out: TextIO = sys.stdout) -> None:
    """Print the study's dashboard URL, then serve until interrupted (Ctrl-C)."""
    from optuna_dashboard import run_server

    chosen = port or free_port(host)
    print(f"optuna-dashboard for this study: http://{host}:{chosen}/dashboard/studies/{study_id}", file=out)
    print("(read-only database user; Ctrl-C stops it)", file=out, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        run_server(storage, host=host, port=chosen)
