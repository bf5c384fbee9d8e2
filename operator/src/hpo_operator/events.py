"""Events on a study, posted by the operator itself as `hpo-operator` (what `kubectl describe` shows under From).

Every step of a study's life that a user should see (a trial started, requeued, failed; the study
finished; its spec or database is wrong) is a core/v1 Event on the HpoStudy. Kopf's own event
posting would name Kopf as their source; these are built here (`build`, pure) and posted through
the API client (`kube.create_event`) by a `Recorder` bound once to the study's identity. Posting
never fails a pass: an Event that cannot be posted is logged.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hpo_operator.models import GROUP, KIND, VERSION
from hpo_operator.redaction import redact

COMPONENT = "hpo-operator"
"""The Events' source and reporting controller."""
MAX_MESSAGE = 1024


@dataclass(frozen=True)
class StudyRef:
    """The study an Event is about."""

    namespace: str
    name: str
    uid: str = ""


def instance() -> str:
    """Which operator replica reports (its pod's name)."""
    return os.environ.get("HOSTNAME") or socket.gethostname()


def _clip(message: str) -> str:
    message = redact(message)
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def build(
    study: StudyRef, reason: str, message: str, warning: bool, now: datetime.datetime, reporter: str
) -> dict[str, Any]:
    """A core/v1 Event on the study, from `hpo-operator` (masked: no secret reaches an Event)."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    seconds = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    involved = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": study.name, "namespace": study.namespace}
    if study.uid:
        involved["uid"] = study.uid
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{study.name[:200]}.", "namespace": study.namespace},
        "involvedObject": involved,
        "type": "Warning" if warning else "Normal",
        "reason": reason,
        "message": _clip(message),
        "action": reason,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": reporter[:128],
        "firstTimestamp": seconds,
        "lastTimestamp": seconds,
        "eventTime": stamp,
        "count": 1,
    }


class Recorder:
    """Posts Events on one study; bound once to the study's identity."""

    def __init__(
        self,
        study: StudyRef,
        post: Callable[[dict[str, Any]], None],
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self.study = study
        self._post = post
        self._logger = logger
        self._reporter = instance()

    def __call__(self, reason: str, message: str, warning: bool = False) -> None:
        event = build(self.study, reason, message, warning, datetime.datetime.now(datetime.UTC), self._reporter)
        try:
            self._post(event)
        except Exception as error:  # an Event is worth a log line, never a failed pass
            self._logger.warning(f"could not post Event {reason}: {type(error).__name__}: {redact(str(error))}")
