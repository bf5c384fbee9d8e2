"""The CLI's one exception: a problem the person running ``kubectl hpo`` can act on, said in one message."""

from __future__ import annotations

__all__ = ["CliError"]


class CliError(Exception):
    """What went wrong and what to do about it; ``main`` prints it to stderr and exits 1, without a traceback."""
