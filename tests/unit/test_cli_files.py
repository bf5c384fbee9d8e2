"""kubectl hpo's files from a study in a local SQLite storage: plots (PNG and HTML) and the export."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpo_cli import plots
from hpo_cli.errors import CliError
from hpo_cli.export import export_study
from tests.helpers import png_size, png_title

pytestmark = pytest.mark.unit


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'source.db'}")
    made = optuna.create_study(study_name="lr", storage=storage, sampler=optuna.samplers.RandomSampler(seed=1))

    def objective(trial: optuna.Trial) -> float:
        x, y = trial.suggest_float("x", -3, 3), trial.suggest_int("y", 0, 4)
        for step in range(3):
            trial.report(x * x + step, step)
        if trial.number == 5:
            raise optuna.TrialPruned()
        return x * x + y

    made.optimize(objective, n_trials=12)
    made.enqueue_trial({"x": 0.5, "y": 1})
    made.ask()  # one RUNNING trial, as a live study has
    return made


@pytest.mark.parametrize("kind", ["history", "importance", "parallel", "slice", "contour", "intermediate"])
def test_a_png_is_optunas_figure_at_the_size_asked_with_the_trial_count_in_its_title(
    study: optuna.Study, tmp_path: Path, kind: str
) -> None:
    target = tmp_path / f"{kind}.png"
    plots.plot(study, kind, target, 900, 500)
    assert png_size(target) == (900, 500)
    assert png_title(target) == f"lr: {kind} (13 trials)"


def test_an_html_file_is_the_plotly_figure_with_the_study_and_its_trial_count(
    study: optuna.Study, tmp_path: Path
) -> None:
    target = tmp_path / "history.html"
    plots.plot(study, "history", target, 900, 500)
    text = target.read_text()
    assert "lr: history (13 trials)" in text and "plotly" in text.lower()


def test_a_pareto_front_needs_two_objectives(study: optuna.Study, tmp_path: Path) -> None:
    with pytest.raises(CliError, match="one objective"):
        plots.plot(study, "pareto", tmp_path / "p.html", 900, 500)


def test_a_multi_objective_study_plots_its_front_and_one_objective(tmp_path: Path) -> None:
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=2))
    study.optimize(lambda t: (t.suggest_float("a", 0, 1), t.suggest_float("b", 0, 1)), n_trials=8)
    plots.plot(study, "pareto", tmp_path / "p.png", 640, 480)
    plots.plot(study, "history", tmp_path / "h.png", 640, 480, objective=1)
    assert png_size(tmp_path / "p.png") == png_size(tmp_path / "h.png") == (640, 480)


def test_the_export_opens_with_optuna_and_has_the_same_trials(study: optuna.Study, tmp_path: Path) -> None:
    target = tmp_path / "out" / "lr.db"
    target.parent.mkdir()
    written = export_study(study._storage, "lr", target)
    assert (written.path, written.trials, written.finished) == (target, 13, 12)
    copy = optuna.load_study(study_name="lr", storage=f"sqlite:///{target}")
    assert [(t.number, t.state, t.values, t.params, t.intermediate_values) for t in copy.trials] == [
        (t.number, t.state, t.values, t.params, t.intermediate_values) for t in study.trials
    ]
    assert copy.best_trial.number == study.best_trial.number
    assert [p.name for p in target.parent.iterdir()] == ["lr.db"]  # no temporary file left behind


def test_the_export_refuses_a_file_that_is_not_sqlite(study: optuna.Study, tmp_path: Path) -> None:
    with pytest.raises(CliError, match=r"name it \*\.db"):
        export_study(study._storage, "lr", tmp_path / "lr.json")


def test_the_exported_file_is_readable_as_any_file_the_user_creates(study: optuna.Study, tmp_path: Path) -> None:
    import os

    umask = os.umask(0o022)
    try:
        written = export_study(study._storage, "lr", tmp_path / "lr.db")
    finally:
        os.umask(umask)
    assert written.path.stat().st_mode & 0o777 == 0o644
