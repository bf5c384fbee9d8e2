"""HpoStudy objects as a test or benchmark sees them: create, read, wait on, and their Optuna data."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import optuna
from kubernetes import client, watch

from hpo_operator.models import GROUP, PLURAL, VERSION
from tests.helpers import wait_for


class Studies:
    """Create, read and wait on HpoStudy objects in one namespace."""

    def __init__(self, kube: client.ApiClient, namespace: str) -> None:
        self.api = client.CustomObjectsApi(kube)
        self.core = client.CoreV1Api(kube)
        self.namespace = namespace

    def create(self, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "HpoStudy", "metadata": {"name": name}, "spec": spec}
        self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def get(self, name: str) -> dict[str, Any]:
        return dict(self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name))

    def patch(self, name: str, spec: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec})

    def wait(self, name: str, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """Watch the study until ``predicate(study)`` holds."""
        current = self.get(name)
        if predicate(current):
            return current
        stream = watch.Watch()
        for event in stream.stream(
            self.api.list_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            field_selector=f"metadata.name={name}",
            timeout_seconds=int(timeout),
            resource_version=current["metadata"]["resourceVersion"],
        ):
            if predicate(event["object"]):
                stream.stop()
                return dict(event["object"])
        raise AssertionError(
            f"timed out after {timeout:.0f}s waiting for study {name} to {what}; "
            f"last status: {self.get(name).get('status')}"
        )

    def wait_phase(self, name: str, phase: str, timeout: float = 240) -> dict[str, Any]:
        return self.wait(name, lambda s: (s.get("status") or {}).get("phase") == phase, timeout, f"reach {phase}")

    def optuna_study(self, name: str) -> optuna.Study:
        """The study as Optuna reads it from the database, through the study's own storage Secret."""
        secret = self.core.read_namespaced_secret(f"{name}-storage", self.namespace)
        url = base64.b64decode(secret.data["url"]).decode()
        return optuna.load_study(study_name=name, storage=url)

    def events(self, name: str) -> list[client.CoreV1Event]:
        return list(
            self.core.list_namespaced_event(
                self.namespace, field_selector=f"involvedObject.name={name},involvedObject.kind=HpoStudy"
            ).items
        )

    def wait_events(
        self, name: str, accept: Callable[[client.CoreV1Event], bool], what: str, timeout: float = 30, count: int = 1
    ) -> list[client.CoreV1Event]:
        """The study's Events that ``accept`` takes, once there are ``count`` of them.

        The operator posts a transition's Events just after the status that shows it (so a failed
        status patch never leaves an Event behind): a test that has seen the status waits for them.
        """

        def enough() -> list[client.CoreV1Event] | None:
            found = [e for e in self.events(name) if accept(e)]
            return found if len(found) >= count else None

        return wait_for(enough, timeout, f"{what} of study {name}")
