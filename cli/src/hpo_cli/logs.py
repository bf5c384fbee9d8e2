"""``kubectl hpo logs``: the log of a trial's pod, chosen by the labels the operator puts on it.

Each attempt of a trial is its own Job (``<study>-<trial>-<attempt>``) whose pod carries the study,
trial and attempt labels; the log is the trial container's. The operator deletes a finished trial's
Job, and its pod with it (the last three failed Jobs are kept), so a finished trial may have no log
left: the message then says so and what Optuna recorded.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from kubernetes.client.exceptions import ApiException

from hpo_cli.errors import CliError
from hpo_cli.names import ATTEMPT_LABEL, TRIAL_CONTAINER
from hpo_cli.studies import Cluster, Study

__all__ = ["choose_pod", "print_logs"]


def choose_pod(pods: list[Any], trial: int, attempt: int | None) -> Any:
    """The pod of ``attempt`` (None: the latest attempt's newest pod)."""

    def attempt_of(pod: Any) -> int:
        try:
            return int((pod.metadata.labels or {}).get(ATTEMPT_LABEL, "0"))
        except ValueError:
            return 0

    candidates = [p for p in pods if attempt is None or attempt_of(p) == attempt]
    if not candidates:
        kept = sorted({attempt_of(p) for p in pods})
        if kept:
            raise CliError(f"trial {trial} has no pod for attempt {attempt}; attempts with a pod: {kept}")
        raise CliError(
            f"trial {trial} has no pod: the operator deletes a finished trial's Job and pod (it keeps the last "
            "three failed ones), and a trial not yet started has none; kubectl hpo trials shows what Optuna "
            "recorded of it"
        )
    return max(candidates, key=lambda p: (attempt_of(p), p.metadata.creation_timestamp))


def print_logs(
    cluster: Cluster, study: Study, trial: int, attempt: int | None, follow: bool, out: TextIO = sys.stdout
) -> None:
    """Print (or follow) the trial container's log of the chosen pod."""
    pod = choose_pod(cluster.trial_pods(study, trial), trial, attempt)
    name = pod.metadata.name
    try:
        if not follow:
            out.write(cluster.core.read_namespaced_pod_log(name, study.namespace, container=TRIAL_CONTAINER))
            return
        response: Any = cluster.core.read_namespaced_pod_log(
            name, study.namespace, container=TRIAL_CONTAINER, follow=True, _preload_content=False
        )
        for chunk in response.stream(decode_content=True):
            out.write(chunk.decode(errors="replace"))
            out.flush()
    except ApiException as error:
        if error.status == 403:
            raise CliError(
                f'you may not read pod logs in namespace "{study.namespace}" (check with: kubectl auth can-i get '
                f"pods/log -n {study.namespace})"
            ) from None
        raise CliError(f"cannot read the log of pod {name}: {error.status} {error.reason}: {error.body}") from None
