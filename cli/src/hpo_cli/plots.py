"""``kubectl hpo plot``: Optuna's own visualisation functions, written to an HTML (plotly) or PNG (matplotlib) file.

The figures are exactly Optuna's (``optuna.visualization`` and ``optuna.visualization.matplotlib``);
this module only picks the function for a kind, names the study and its trial count in the title,
and writes the file at the size asked for.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from hpo_cli.errors import CliError

__all__ = ["KINDS", "LARGE_STUDY", "plot", "title"]

KINDS = {
    "history": "plot_optimization_history",
    "importance": "plot_param_importances",
    "parallel": "plot_parallel_coordinate",
    "slice": "plot_slice",
    "contour": "plot_contour",
    "pareto": "plot_pareto_front",
    "intermediate": "plot_intermediate_values",
}
"""``--kind`` to the name of Optuna's function (the same name in both backends)."""
_TARGETED = {"history", "importance", "parallel", "slice", "contour"}
"""Kinds that take ``target`` (one objective of a multi-objective study)."""
LARGE_STUDY = 2000
"""Studies with more trials than this get a progress message: Optuna's figures take a while."""


def title(study: optuna.Study, kind: str) -> str:
    """The figure's title: which study, which kind, and how many trials it shows."""
    return f"{study.study_name}: {kind} ({len(study.trials)} trials)"


def plot(study: optuna.Study, kind: str, path: Path, width: int, height: int, objective: int = 0) -> None:
    """Write the figure ``kind`` of ``study`` to ``path``: PNG for ``.png``, HTML (self-contained) otherwise.

    Args:
        study: The study.
        kind: A key of :data:`KINDS`.
        path: The file (its suffix picks the format).
        width: Width in pixels.
        height: Height in pixels.
        objective: For a multi-objective study, which objective the single-objective kinds show.
    """
    if kind not in KINDS:
        raise CliError(f"unknown plot kind {kind!r}: choose from {', '.join(KINDS)}")
    directions = study.directions
    kwargs: dict[str, Any] = {}
    if kind == "pareto" and len(directions) < 2:
        raise CliError(f'study "{study.study_name}" has one objective: a Pareto front needs two or more')
    if kind in _TARGETED and len(directions) > 1:
        if not 0 <= objective < len(directions):
            raise CliError(f"--objective must be between 0 and {len(directions) - 1}")
        kwargs["target"] = _objective(objective)
        kwargs["target_name"] = (study.metric_names or [f"objective {objective}"] * len(directions))[objective]
    if len(study.trials) > LARGE_STUDY:
        print(f"plotting {kind} of {len(study.trials)} trials (this takes a while) ...", file=sys.stderr)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if path.suffix.lower() == ".png":
                _png(study, kind, path, width, height, kwargs)
            else:
                _html(study, kind, path, width, height, kwargs)
    except (ValueError, RuntimeError) as error:  # e.g. importance with fewer than two complete trials
        raise CliError(f"Optuna cannot draw {kind} for study {study.study_name!r}: {error}") from None


def _objective(index: int) -> Callable[[FrozenTrial], float]:
    def target(trial: FrozenTrial) -> float:
        return float((trial.values or [])[index])

    return target


def _html(study: optuna.Study, kind: str, path: Path, width: int, height: int, kwargs: dict[str, Any]) -> None:
    figure = getattr(optuna.visualization, KINDS[kind])(study, **kwargs)
    figure.update_layout(title=title(study, kind), width=width, height=height)
    figure.write_html(str(path), include_plotlyjs=True)  # the file works offline


def _png(study: optuna.Study, kind: str, path: Path, width: int, height: int, kwargs: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as backend

    axes = getattr(backend, KINDS[kind])(study, **kwargs)
    figure = np.asarray(axes).flat[0].figure
    dpi = 100
    figure.set_size_inches(width / dpi, height / dpi)
    figure.suptitle(title(study, kind))
    figure.savefig(path, dpi=dpi, format="png", metadata={"Title": title(study, kind)})  # a tEXt chunk, for tools
    plt.close(figure)
