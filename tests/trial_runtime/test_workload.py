"""The default workload (PyTorch on scikit-learn's digits) run by ``hpo-trial`` on the CPU, as a trial pod runs it."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from tests.trial_runtime.conftest import OperatorSide, RunTrial

pytestmark = pytest.mark.integration


def pinned(**params: float) -> dict[str, FloatDistribution | IntDistribution]:
    """Declared parameters narrowed to one value each (same kind and log flag as the workload's)."""
    logs = {"lr", "weight_decay", "width", "batch_size"}
    return {
        name: FloatDistribution(value, value, log=name in logs)
        if isinstance(value, float)
        else IntDistribution(value, value, log=name in logs)
        for name, value in params.items()
    }


def test_quick_scan_on_the_cpu_reaches_accuracy_well_above_chance(
    operator: OperatorSide, start_trial: RunTrial
) -> None:
    study = operator.create_study()
    trial = operator.ask(
        study, pinned(lr=3e-3, n_layers=2, width=128, dropout=0.1, batch_size=64, weight_decay=1e-4, epochs=8)
    )

    run = start_trial(operator.assignment(study, trial), "--quick-scan")

    assert run.wait(timeout=120) == 0, run.output
    assert any("8192 training" in line for line in run.lines), "quick scan trains on the small subset"
    assert not any(line.startswith("resumed") for line in run.lines), "no checkpoint root: nothing to resume"
    stored = operator.frozen(study, trial.number)
    assert stored.state == TrialState.COMPLETE
    assert stored.user_attrs["val_accuracy"] > 0.8, run.output  # ten classes: chance is 0.1
    assert stored.value is not None and stored.value < 1.0, "validation loss well below chance level (ln 10 = 2.3)"
    assert sorted(stored.intermediate_values) == list(range(1, len(stored.intermediate_values) + 1))


def test_the_workload_resumes_from_its_checkpoint_after_sigterm(
    operator: OperatorSide, start_trial: RunTrial, tmp_path: Path
) -> None:
    study = operator.create_study()
    trial = operator.ask(
        study, pinned(lr=3e-3, n_layers=1, width=64, dropout=0.0, batch_size=128, weight_decay=1e-4, epochs=5)
    )
    assignment = operator.assignment(study, trial, checkpoint_root=str(tmp_path / "checkpoints"))

    first = start_trial(assignment)
    first.wait_for_line("checkpoint saved at step 2", timeout=120)
    first.signal(signal.SIGTERM)
    assert first.wait() == 143, first.output
    match = re.match(r"INTERRUPTED step=(\d+) ", first.message)
    assert match, first.message
    step = int(match.group(1))

    second = start_trial(assignment)

    assert second.wait(timeout=120) == 0, second.output
    assert f"resumed from step {step}" in second.lines
    epochs = [int(m.group(1)) for line in second.lines if (m := re.match(r"epoch (\d+)/5:", line))]
    assert epochs == list(range(step + 1, 6)), second.output
    stored = operator.frozen(study, trial.number)
    assert stored.state == TrialState.COMPLETE
    assert sorted(stored.intermediate_values) == [1, 2, 3, 4, 5], "each epoch reported once across both pods"
