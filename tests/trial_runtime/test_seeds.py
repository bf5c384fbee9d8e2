"""Seeds that help: with `sampler.seed`, a seeded study runs the same again, yet a parameter the objective
suggests itself (declared nowhere) still varies from trial to trial.

The operator's own code asks (`StudyStore.ask`) and writes each trial's assignment (`dispatch.assignment`
with `search.sampler_config` for that trial); the runtime runs the objective in this process, as a
trial pod would. Before per-trial seeds, every pod rebuilt the sampler with the study's seed and the
undeclared parameter had the same value in all trials.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from hpo_operator import dispatch, search
from hpo_operator.storage import StudyStore
from hpo_operator.validation import parse
from hpo_trial import runtime
from hpo_trial.interrupt import SignalGuard
from tests.trial_runtime.conftest import Database

pytestmark = pytest.mark.integration


def run_seeded_study(
    database: Database, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sampler: str = "tpe"
) -> list[dict[str, float]]:
    """Eight trials of a study seeded with 7, one after the other; what each trial's objective saw."""
    spec, problems = parse(
        {
            "searchSpace": {"x": {"type": "float", "low": -10, "high": 10}},
            "sampler": {"name": sampler, "seed": 7},
            "budget": {"trials": 8, "parallelism": 1},
        }
    )
    assert spec is not None, problems
    optuna.create_study(study_name=name, storage=database.storage())
    store = StudyStore(database.url.replace("{", "{{").replace("}", "}}"), {}, name)
    ref = dispatch.TrialRef("ns", name, name, f"{name}-storage")
    seen = []
    try:
        for _ in range(8):
            trial = store.ask(spec, search.distributions(spec))
            assignment = dispatch.assignment(
                spec, ref, trial.number, trial._trial_id, search.sampler_config(spec, trial.number), None
            )
            record = tmp_path / f"{name}-{trial.number}.json"
            monkeypatch.setenv("TEST_RECORD", str(record))
            settings = runtime.Settings(
                storage_url=database.url,
                assignment=json.dumps(assignment),
                objective_flag="tests.trial_runtime.objectives:record_params",
            )
            with SignalGuard() as guard:
                outcome = runtime.run(settings, guard)
            assert outcome.exit_code == 0, outcome.message
            seen.append(json.loads(record.read_text()))
    finally:
        store.close()
    return seen


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_an_undeclared_parameter_varies_across_seeded_trials_and_the_study_is_reproducible(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sampler: str
) -> None:
    first = run_seeded_study(database, "first", tmp_path, monkeypatch, sampler)
    again = run_seeded_study(database, "again", tmp_path, monkeypatch, sampler)

    extra = [trial["extra"] for trial in first]
    assert len(set(extra)) == 8, f"the undeclared parameter repeated across trials: {extra}"
    assert first == again, "the same seed runs the same study again, declared and undeclared parameters alike"
    assert len({trial["x"] for trial in first}) == 8
    assert all(trial["extra"] != pytest.approx((trial["x"] + 10) / 20) for trial in first), (
        "the pod's draws are not a copy of the operator's (two seed streams)"
    )
