"""Secrets never leave the operator: every password it handles is masked in its logs, Events and status.

The operator's own messages never include a password; this is the second line, for text a library
formats (an exception that quotes a statement, a URL in a traceback). Each password is registered
when the operator reads or makes it, and every log record, Event and status message passes
through `redact` on its way out.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import quote

_MASK = "***"
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*(@)")
_lock = threading.Lock()
_secrets: set[str] = set()
_ordered: list[str] = []


def remember(*secrets: str | None) -> None:
    """Mask these values (and their URL-encoded forms) from now on; short ones would garble text."""
    added = {form for secret in secrets if secret and len(secret) >= 6 for form in (secret, quote(secret, safe=""))}
    with _lock:
        if added - _secrets:
            _secrets.update(added)
            _ordered[:] = sorted(_secrets, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every remembered secret, and any password in a URL, replaced by ``***``."""
    for secret in _ordered:
        if secret in text:
            text = text.replace(secret, _MASK)
    return _URL_PASSWORD.sub(rf"\1{_MASK}\2", text)


class RedactingFilter(logging.Filter):
    """Installed on the log handlers: formats each record once, masked, before any handler prints it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install() -> None:
    """Mask every handler of the root logger (where Kopf's and ours end up)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
