"""Study snapshots: every `checkpoints.everyTrials` finished trials, the study exported to a file on the claim.

While a study with `spec.checkpoints.claimName` runs, each time its study checkpoint moves on, a
short Job from the trial image (`<study>-snapshot-<finished>`) runs `hpo-transfer snapshot`: it
reads the study through the read-only Secret and writes a portable SQLite file, atomically, to
`<mountPath>/snapshots/<study>/`, keeping the newest three. That file is exactly what
`spec.importFrom` reads, so a study whose database is lost is restored into a new study. At most one
snapshot Job runs at a time; finished ones are deleted once `status.snapshot` records the newest.
Pure functions: `build_snapshot_job`, `parse_snapshot`, `decide`.
"""

from __future__ import annotations

import datetime
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from hpo_operator.contract import EXIT_FINISHED, SNAPSHOT_WORD
from hpo_operator.dispatch import CHECKPOINT_VOLUME, TrialRef
from hpo_operator.importing import SNAPSHOT_TASK, failure, job_name, task_labels, transfer_job
from hpo_operator.models import HpoStudySpec
from hpo_operator.outcomes import JobSummary, PodSummary

KEEP = 3
"""Snapshots of a study kept on the claim (the oldest are removed)."""
DIRECTORY = "snapshots"
"""Where on the claim: `snapshots/<study>/<study>-<finished>-<UTC time>.db`."""
SNAPSHOT_DEADLINE_SECONDS = 900
_SNAPSHOT = re.compile(rf"^{SNAPSHOT_WORD} path=(.+) trials=(\d+) finished=(\d+) at=(\S+)$")


def directory(spec: HpoStudySpec, study: str) -> str:
    """Where the snapshot pod writes the study's snapshots."""
    return posixpath.join(spec.checkpoints.mount_path, DIRECTORY, study)


def build_snapshot_job(
    spec: HpoStudySpec, ref: TrialRef, readonly_secret: str, finished: int, image: str
) -> dict[str, Any]:
    """The Job that snapshots the study once ``finished`` trials have finished (owner reference added by the caller).

    It only reads the study: its URL is the read-only user's (``readonly_secret``).
    """
    assert spec.checkpoints.claim_name is not None
    args = ["snapshot", "--study", ref.optuna_study, "--directory", directory(spec, ref.study), "--keep", str(KEEP)]
    job = transfer_job(
        spec,
        ref,
        job_name(ref.study, SNAPSHOT_TASK, finished),
        task_labels(ref.study, SNAPSHOT_TASK, finished),
        args,
        readonly_secret,
        image,
        SNAPSHOT_DEADLINE_SECONDS,
    )
    pod_spec = job["spec"]["template"]["spec"]
    pod_spec.setdefault("volumes", []).append(
        {"name": CHECKPOINT_VOLUME, "persistentVolumeClaim": {"claimName": spec.checkpoints.claim_name}}
    )
    pod_spec["containers"][0].setdefault("volumeMounts", []).append(
        {"name": CHECKPOINT_VOLUME, "mountPath": spec.checkpoints.mount_path}
    )
    return job


@dataclass(frozen=True)
class Taken:
    """A snapshot a Job reported (its termination message)."""

    path: str  # as the pod saw it, under the claim's mount path
    trials: int
    finished: int
    at: str  # RFC 3339

    def status(self, spec: HpoStudySpec) -> dict[str, Any]:
        """`status.snapshot`: its path relative to the claim's root, which `spec.importFrom.path` takes."""
        root = spec.checkpoints.mount_path.rstrip("/") + "/"
        relative = self.path[len(root) :] if self.path.startswith(root) else self.path
        return {
            "claimName": spec.checkpoints.claim_name,
            "path": relative,
            "time": self.at,
            "trials": self.trials,
            "finishedTrials": self.finished,
        }


def parse_snapshot(message: str) -> Taken | None:
    """``SNAPSHOT path=/checkpoints/snapshots/s/s-5-....db trials=6 finished=5 at=<ISO time>`` (None: not that)."""
    match = _SNAPSHOT.match(message.strip())
    if match is None:
        return None
    try:
        at = datetime.datetime.fromisoformat(match.group(4).replace("Z", "+00:00"))
    except ValueError:
        return None
    when = at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Taken(match.group(1), int(match.group(2)), int(match.group(3)), when)


@dataclass(frozen=True)
class Decision:
    create: int | None = None  # snapshot now, at this many finished trials (the Job's number)
    taken: Taken | None = None  # the newest snapshot a finished Job reported
    failed: tuple[tuple[str, str], ...] = ()  # (Job, why) of snapshot Jobs that failed
    delete: tuple[str, ...] = ()  # finished snapshot Jobs


def decide(due: int, done: int, jobs: list[JobSummary], pods: list[PodSummary]) -> Decision:
    """What to do about snapshots. Pure.

    ``due``: the finished trials of the study's last checkpoint (a multiple of `everyTrials`, 0: none
    yet); ``done``: the most finished trials a snapshot was taken or tried at. A new snapshot starts
    when the checkpoint has moved past it and no snapshot Job runs.
    """
    mine = [j for j in jobs if j.task == SNAPSHOT_TASK]
    newest_pod: dict[int, PodSummary] = {}
    for candidate in pods:
        known = newest_pod.get(candidate.attempt)
        if candidate.task == SNAPSHOT_TASK and (known is None or candidate.created > known.created):
            newest_pod[candidate.attempt] = candidate
    taken: Taken | None = None
    failed: list[tuple[str, str]] = []
    delete: list[str] = []
    running = False
    for job in sorted(mine, key=lambda j: j.attempt):
        latest = newest_pod.get(job.attempt)
        if job.succeeded:
            ok = latest is not None and latest.exit_code == EXIT_FINISHED
            taken = (parse_snapshot(latest.message) if ok and latest is not None else None) or taken
            delete.append(job.name)
        elif job.failed and (latest is None or latest.terminal):
            said = latest.message if latest is not None and latest.message else (job.message or "its pod was lost")
            failed.append((job.name, failure(said, "spec.checkpoints.claimName")[1]))
            delete.append(job.name)
        else:
            running = True
    tried = max([done, *(j.attempt for j in mine)])
    create = due if due > 0 and due > tried and not running else None
    return Decision(create, taken, tuple(failed), tuple(delete))
