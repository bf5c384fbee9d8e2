"""What every benchmark item returns, and how `make bench` prints and stores it.

An item measures one thing as a ratio or a distribution inside one run, and returns `Figure`s:
the key it has in `.bench/latest.json`, our value, the baseline's where it has one, and the goal.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    key: str
    ours: float
    goal: str = ""
    baseline: float | None = None
    baseline_key: str | None = None  # the JSON key of the baseline's value, if it has one
    ratio_key: str | None = None  # the JSON key of ours / baseline, if the issue names one

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.ours / self.baseline


def progress(message: str) -> None:
    """One line of progress on stderr, stamped, so a long run shows where it is."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the closest ranks, as numpy's default does."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:.1f}"


def table(figures: Iterable[Figure]) -> str:
    rows = [("figure", "ours", "baseline", "ratio", "goal")]
    rows += [(f.key, _cell(f.ours), _cell(f.baseline), _cell(f.ratio), f.goal) for f in figures]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def as_json(figures: Iterable[Figure], quick: bool) -> dict[str, float]:
    """One key per figure (and per baseline and ratio that has a key), numbers only."""
    result: dict[str, float] = {}
    for figure in figures:
        result[figure.key] = figure.ours
        if figure.baseline_key is not None and figure.baseline is not None:
            result[figure.baseline_key] = figure.baseline
        if figure.ratio_key is not None and figure.ratio is not None:
            result[figure.ratio_key] = figure.ratio
    if quick:
        result["quick"] = 1
    return result


def write(path: Path, figures: Sequence[Figure], quick: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(as_json(figures, quick), indent=2, sort_keys=True) + "\n")
