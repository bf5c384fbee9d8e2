"""Secrets the operator handles are masked in every log line, even where a library formats them in."""

from __future__ import annotations

import io
import logging

import pytest

from hpo_operator import redaction

pytestmark = pytest.mark.unit


@pytest.fixture
def log() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(redaction.RedactingFilter())
    logger = logging.getLogger("test.redaction")
    logger.handlers[:] = [handler]
    logger.propagate = False
    return logger, stream


def test_a_remembered_password_is_masked_in_messages_arguments_and_tracebacks(
    log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = log
    redaction.remember("s3cret/pass{word}")
    logger.warning("connecting with %s", "s3cret/pass{word}")
    try:
        raise RuntimeError("url mysql+pymysql://u:s3cret%2Fpass%7Bword%7D@db/x failed")
    except RuntimeError:
        logger.exception("pass failed")
    text = stream.getvalue()
    assert "s3cret" not in text and text.count("***") >= 2 and "pass failed" in text


def test_any_password_in_a_url_is_masked_even_if_never_remembered() -> None:
    assert (
        redaction.redact("see mysql+pymysql://user:unknown-pw@host:3306/db")
        == "see mysql+pymysql://user:***@host:3306/db"
    )


def test_short_values_are_not_remembered_so_ordinary_text_survives() -> None:
    redaction.remember("abc", "", None)
    assert redaction.redact("abc def") == "abc def"
