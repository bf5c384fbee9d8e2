"""Events come from hpo-operator, name the study, and never carry a secret."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import pytest

from hpo_operator import events, redaction

pytestmark = pytest.mark.unit
NOW = datetime.datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=datetime.UTC)
STUDY = events.StudyRef("team", "mnist", "uid-1")


def test_an_event_is_a_core_v1_event_from_hpo_operator_on_the_study() -> None:
    event = events.build(STUDY, "TrialStarted", "trial 3: {'lr': 0.01}", False, NOW, "hpo-operator-7d9f")
    assert event["involvedObject"] == {
        "apiVersion": "hpo.dev/v1alpha1",
        "kind": "HpoStudy",
        "name": "mnist",
        "namespace": "team",
        "uid": "uid-1",
    }
    assert event["source"] == {"component": "hpo-operator"} and event["reportingComponent"] == "hpo-operator"
    assert (event["type"], event["reason"], event["action"]) == ("Normal", "TrialStarted", "TrialStarted")
    assert event["metadata"] == {"generateName": "mnist.", "namespace": "team"}
    assert event["eventTime"] == "2026-12-01T12:00:00.123456Z" and event["firstTimestamp"] == "2026-12-01T12:00:00Z"
    assert events.build(STUDY, "TrialFailed", "boom", True, NOW, "x")["type"] == "Warning"


def test_an_event_message_is_masked_and_bounded() -> None:
    redaction.remember("s3cr3t-password")
    event = events.build(STUDY, "DatabaseError", "cannot log in with s3cr3t-password " + "x" * 2000, True, NOW, "x")
    assert "s3cr3t-password" not in event["message"] and len(event["message"]) <= events.MAX_MESSAGE


def test_a_recorder_never_fails_the_pass(caplog: pytest.LogCaptureFixture) -> None:
    posted: list[dict[str, Any]] = []
    events.Recorder(STUDY, posted.append, logging.getLogger("test"))("StudyFinished", "all 4 trials finished")
    assert [e["reason"] for e in posted] == ["StudyFinished"]

    def refuse(event: dict[str, Any]) -> None:
        raise RuntimeError("namespace is being terminated")

    events.Recorder(STUDY, refuse, logging.getLogger("test"))("StudyFinished", "done")
    assert "could not post Event StudyFinished" in caplog.text


def test_events_kopf_itself_would_post_come_from_hpo_operator_too(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import kopf

    from hpo_operator import handlers

    monkeypatch.setattr(handlers.metrics, "serve", lambda port: None)
    settings = kopf.OperatorSettings()
    asyncio.run(handlers.configure(settings=settings))
    assert settings.posting.reporting_component == "hpo-operator"
    assert settings.posting.event_name_prefix == "hpo-operator-"
    assert settings.posting.level == logging.WARNING, "Kopf's own log lines are not posted"
