"""Rows of ``kubectl hpo`` as pure functions: trials and studies in, table, CSV and JSON text out.

Nothing here reads the cluster or the database: :mod:`hpo_cli.studies` gathers Optuna's trials, the
trial pods and their scheduling Events, and these functions decide what a row says, so the tables
are unit-tested without a server (``tests/unit/test_cli_tables.py``).
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpo_cli.names import ATTEMPT_ATTR, FAIL_REASON_ATTR, OUTCOMES_ATTR, PLACEMENT_ATTR

__all__ = [
    "Placement",
    "TrialRow",
    "best_document",
    "dumps",
    "human_age",
    "parse_states",
    "placements",
    "render_csv",
    "render_table",
    "rounded",
    "sort_rows",
    "study_row",
    "trial_json",
    "trial_rows",
    "trial_table",
]

STATE_NAMES = {state.name.lower(): state for state in TrialState}
"""``--state`` values: Optuna's state names, any case (``complete``, ``pruned``, ``fail``, ``running``, ``waiting``)."""


@dataclass(frozen=True)
class Placement:
    """Where one attempt of a trial ran: its pod and node (empty while unscheduled)."""

    attempt: int
    pod: str
    node: str


@dataclass(frozen=True)
class TrialRow:
    """One trial as ``kubectl hpo trials`` shows it; values and params at full precision."""

    number: int
    state: str
    values: tuple[float, ...] | None
    params: dict[str, Any]
    attempts: int | None
    duration: float | None
    started: datetime.datetime | None
    completed: datetime.datetime | None
    pod: str
    node: str
    reason: str


def rounded(value: float | None, digits: int = 4) -> str:
    """A value for people: ``digits`` significant digits (``0.1871``, ``1.235e+06``); ``-`` for none."""
    if value is None:
        return "-"
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.{digits}g}"


def human_age(seconds: float) -> str:
    """A duration as ``kubectl get`` prints ages (``77s``, ``2m35s``, ``14m``, ``3h4m``, ``5d``)."""
    total = max(0, int(seconds))
    minutes, hours, days = total // 60, total // 3600, total // 86400
    if total < 120:
        return f"{total}s"
    if minutes < 10:
        return f"{minutes}m{total % 60}s" if total % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y{days % 365}d"


def parse_states(text: Sequence[str]) -> set[TrialState]:
    """``--state complete,pruned --state fail`` as Optuna states; ValueError names the unknown ones."""
    names = [name.strip().lower() for part in text for name in part.split(",") if name.strip()]
    unknown = [name for name in names if name not in STATE_NAMES]
    if unknown:
        raise ValueError(f"unknown trial state(s) {', '.join(unknown)}: choose from {', '.join(STATE_NAMES)}")
    return {STATE_NAMES[name] for name in names}


_POD_NAME = r"{study}-(?P<trial>\d+)-(?P<attempt>\d+)-[a-z0-9]{{5}}"
_SCHEDULED = re.compile(r"Successfully assigned (?P<namespace>[^/\s]+)/(?P<pod>\S+) to (?P<node>\S+)")


def placements(
    study: str,
    pods: Iterable[tuple[str, Mapping[str, str], str]],
    scheduled: Iterable[str],
    labels: tuple[str, str, str],
) -> dict[int, Placement]:
    """Each trial's latest known attempt: from its live pods, else from the Events that scheduled its pods.

    Finished trials' Jobs and pods are deleted by the operator, but the scheduler's ``Scheduled``
    Events (kept by the API server for an hour by default) still name pod and node.

    Args:
        study: The study's name (trial pods are ``<study>-<trial>-<attempt>-<suffix>``).
        pods: ``(name, labels, node)`` of the study's pods.
        scheduled: Messages of the namespace's ``Scheduled`` Events.
        labels: The study, trial and attempt label keys.
    """
    study_label, trial_label, attempt_label = labels
    found: dict[int, Placement] = {}

    def keep(trial: int, placement: Placement) -> None:
        if trial not in found or placement.attempt >= found[trial].attempt:
            found[trial] = placement

    pattern = re.compile(_POD_NAME.format(study=re.escape(study)))
    for message in scheduled:
        if (match := _SCHEDULED.search(message)) and (named := pattern.fullmatch(match["pod"])):
            keep(int(named["trial"]), Placement(int(named["attempt"]), match["pod"], match["node"]))
    for name, pod_labels, node in pods:
        if pod_labels.get(study_label) != study or trial_label not in pod_labels:
            continue
        try:
            trial, attempt = int(pod_labels[trial_label]), int(pod_labels.get(attempt_label, "0"))
        except ValueError:
            continue
        previous = found.get(trial)
        if previous is not None and previous.pod == name and not node:
            node = previous.node
        keep(trial, Placement(attempt, name, node))
    return found


def _recorded(trial: FrozenTrial) -> Placement | None:
    """Where the trial's last attempt ran, as its pod recorded it (``hpo:placement``), if it did."""
    placement = trial.system_attrs.get(PLACEMENT_ATTR)
    if not isinstance(placement, dict) or not placement.get("node"):
        return None
    return Placement(int(placement.get("attempt") or 0), str(placement.get("pod", "")), str(placement["node"]))


def _attempts(trial: FrozenTrial) -> int | None:
    attempt = trial.system_attrs.get(ATTEMPT_ATTR)
    outcomes = trial.system_attrs.get(OUTCOMES_ATTR)
    counted = len(outcomes) if isinstance(outcomes, list) else 0
    if isinstance(attempt, int):
        return max(attempt + 1, counted)
    return counted or None


def _reason(trial: FrozenTrial) -> str:
    if trial.state is TrialState.FAIL:
        return str(trial.system_attrs.get(FAIL_REASON_ATTR, ""))
    if trial.state is TrialState.PRUNED and trial.intermediate_values:
        step = max(trial.intermediate_values)
        return f"pruned at step {step} (intermediate value {rounded(trial.intermediate_values[step])})"
    return ""


def trial_rows(trials: Iterable[FrozenTrial], where: Mapping[int, Placement], now: datetime.datetime) -> list[TrialRow]:
    """One row per trial, in trial-number order: Optuna's view plus where each trial's last attempt ran.

    Where it ran is what its pod recorded in Optuna (kept for ever), or else ``where`` (live pods and
    recent scheduling Events), whichever names the later attempt. ``now`` ends a running trial's
    duration; Optuna's times are naive (the writer's local time), so ``now`` should be too.
    """
    if now.tzinfo is not None:
        now = now.astimezone().replace(tzinfo=None)
    rows = []
    for trial in sorted(trials, key=lambda t: t.number):
        end = trial.datetime_complete or (now if trial.state is TrialState.RUNNING else None)
        start = trial.datetime_start
        duration = (end - start).total_seconds() if start is not None and end is not None else None
        found = [p for p in (_recorded(trial), where.get(trial.number)) if p is not None]
        placement = max(found, key=lambda p: p.attempt) if found else None
        rows.append(
            TrialRow(
                number=trial.number,
                state=trial.state.name,
                values=tuple(trial.values) if trial.values is not None else None,
                params=dict(trial.params),
                attempts=_attempts(trial),
                duration=duration,
                started=start,
                completed=trial.datetime_complete,
                pod=placement.pod if placement else "",
                node=placement.node if placement else "",
                reason=_reason(trial),
            )
        )
    return rows


def sort_rows(rows: Sequence[TrialRow], by: str, directions: Sequence[StudyDirection]) -> list[TrialRow]:
    """Rows by ``number`` or by ``value``: COMPLETE trials best first (by the first objective), then the other
    trials with a value (PRUNED ones keep their last intermediate value), then those without one."""
    if by == "number":
        return sorted(rows, key=lambda row: row.number)
    if by != "value":
        raise ValueError(f"cannot sort by {by!r}: choose number or value")
    sign = -1.0 if directions and directions[0] is StudyDirection.MAXIMIZE else 1.0
    return sorted(
        rows,
        key=lambda row: (
            row.values is None,
            row.state != TrialState.COMPLETE.name,
            sign * row.values[0] if row.values else 0.0,
            row.number,
        ),
    )


def _params_text(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={rounded(v) if isinstance(v, float) else v}" for k, v in sorted(params.items())) or "-"


def _values_text(values: tuple[float, ...] | None) -> str:
    return ",".join(rounded(v) for v in values) if values else "-"


def trial_table(rows: Sequence[TrialRow], wide: bool = False) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the trial table (``-o wide`` adds the pod and the start time)."""
    headers = ["NUMBER", "STATE", "VALUE", "PARAMS", "ATTEMPTS", "DURATION", "NODE", "REASON"]
    if wide:
        headers[7:7] = ["POD", "STARTED"]
    cells = []
    for row in rows:
        line = [
            str(row.number),
            row.state,
            _values_text(row.values),
            _params_text(row.params),
            "-" if row.attempts is None else str(row.attempts),
            "-" if row.duration is None else human_age(row.duration),
            row.node or "-",
            row.reason or "",
        ]
        if wide:
            line[7:7] = [row.pod or "-", row.started.strftime("%Y-%m-%dT%H:%M:%S") if row.started else "-"]
        cells.append(line)
    return headers, cells


def render_table(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    """Columns as ``kubectl get`` aligns them: left-aligned, three spaces apart, the last one unpadded."""
    widths = [max([len(h), *(len(line[i]) for line in cells)]) for i, h in enumerate(headers)]
    out = []
    for line in [list(headers), *cells]:
        padded = [cell.ljust(width) for cell, width in zip(line[:-1], widths[:-1], strict=True)] + [line[-1]]
        out.append("   ".join(padded).rstrip())
    return "\n".join(out) + "\n"


def trial_json(row: TrialRow) -> dict[str, Any]:
    """A row as JSON, at full precision, with Optuna's field names where Optuna has them."""
    return {
        "number": row.number,
        "state": row.state,
        "values": list(row.values) if row.values is not None else None,
        "params": row.params,
        "attempts": row.attempts,
        "duration_seconds": row.duration,
        "datetime_start": row.started.isoformat() if row.started else None,
        "datetime_complete": row.completed.isoformat() if row.completed else None,
        "pod": row.pod or None,
        "node": row.node or None,
        "reason": row.reason or None,
    }


def render_csv(rows: Sequence[TrialRow]) -> str:
    """The rows as CSV at full precision: one column per value and per parameter (``params_<name>``, as pandas)."""
    width = max((len(row.values) for row in rows if row.values), default=1)
    names = sorted({name for row in rows for name in row.params})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    value_headers = ["value"] if width == 1 else [f"values_{i}" for i in range(width)]
    writer.writerow(
        [
            "number",
            "state",
            *value_headers,
            *(f"params_{n}" for n in names),
            "attempts",
            "duration_seconds",
            "datetime_start",
            "datetime_complete",
            "pod",
            "node",
            "reason",
        ]
    )
    for row in rows:
        values = list(row.values or ()) + [None] * (width - len(row.values or ()))
        data = trial_json(row)
        writer.writerow(
            [row.number, row.state, *("" if v is None else repr(v) for v in values)]
            + [_csv_cell(row.params.get(n)) for n in names]
            + [_csv_cell(data[k]) for k in ("attempts", "duration_seconds", "datetime_start", "datetime_complete")]
            + [row.pod, row.node, row.reason]
        )
    return buffer.getvalue()


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def best_document(
    directions: Sequence[StudyDirection], best: FrozenTrial | None, front: Sequence[FrozenTrial]
) -> dict[str, Any] | list[dict[str, Any]] | None:
    """What ``kubectl hpo best`` prints: the best trial (single objective) or the Pareto front, at full precision."""
    if len(directions) > 1:
        return [
            {"number": t.number, "values": list(t.values or ()), "params": dict(t.params)}
            for t in sorted(front, key=lambda t: t.number)
        ]
    if best is None:
        return None
    return {"number": best.number, "value": best.value, "params": dict(best.params)}


def study_row(study: Mapping[str, Any], now: datetime.datetime, namespaced: bool) -> list[str]:
    """One HpoStudy for ``kubectl hpo list``: [namespace,] name, phase, trials, running, best, age."""
    meta, status = study.get("metadata", {}), study.get("status") or {}
    trials = status.get("trials") or {}
    best = status.get("bestTrial") or {}
    best_text = f"pareto:{len(status['paretoFront'])}" if status.get("paretoFront") else rounded(best.get("value"))
    created = meta.get("creationTimestamp")
    age = "-"
    if created:
        born = datetime.datetime.fromisoformat(str(created).replace("Z", "+00:00"))
        age = human_age((now - born).total_seconds())
    row = [
        str(meta.get("name", "")),
        str(status.get("phase", "")) or "-",
        str(status.get("progress", "")) or "-",
        str(trials.get("running", 0)),
        best_text,
        age,
    ]
    return [str(meta.get("namespace", "")), *row] if namespaced else row


def dumps(document: Any) -> str:
    """JSON as the CLI prints it: indented, floats at full precision (``repr``), one trailing newline."""
    return json.dumps(document, indent=2) + "\n"
