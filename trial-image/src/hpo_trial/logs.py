"""The trial pod's log: plain, unbuffered lines on stdout, with the storage URL's secrets redacted.

Set up once at the start of a trial pod. Checks read fixed lines from the pod's log (``checkpoint
saved at step <k>``, ``resumed from step <k>``), so informational lines are the bare message and
every line is flushed as it is written; Kubernetes adds the timestamps.
"""

from __future__ import annotations

import io
import logging
import re
import sys
from urllib.parse import unquote, urlsplit

__all__ = ["configure_logging", "redact"]

_secrets: list[str] = []
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*(@)")


def configure_logging(*, secret_urls: list[str]) -> None:
    """Send the ``hpo_trial`` loggers to stdout, line-buffer stdout, and hide the URLs' passwords.

    Args:
        secret_urls: URLs (the storage URL) whose whole text and password must never be printed.
    """
    _secrets.clear()
    for url in secret_urls:
        _secrets.append(url)
        password = urlsplit(url).password if "://" in url else None
        if password and len(password) >= 4:  # a shorter one would garble ordinary text
            _secrets.extend({password, unquote(password)})
    _secrets.sort(key=len, reverse=True)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Formatter())
    logger = logging.getLogger("hpo_trial")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def redact(text: str) -> str:
    """Return ``text`` with the configured secrets and any URL password replaced by ``***``."""
    for secret in _secrets:
        text = text.replace(secret, "***")
    return _URL_PASSWORD.sub(r"\1***\2", text)


class _Formatter(logging.Formatter):
    """Bare messages for INFO; ``warning:``/``error:`` prefixes above; secrets redacted always."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        return redact(text)
