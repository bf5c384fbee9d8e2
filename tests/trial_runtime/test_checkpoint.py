"""Checkpoints: atomic saves, the latest good one loaded, damaged files skipped, the trial told where it is."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import optuna
import pytest
import torch

import hpo_trial
from hpo_trial.checkpoint import checkpoint_directory, latest_step

pytestmark = pytest.mark.unit


@pytest.fixture
def trial() -> optuna.Trial:
    return optuna.create_study(study_name="ns/quick start").ask()


def test_the_latest_checkpoint_is_loaded_and_recorded_on_the_trial(
    trial: optuna.Trial, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hpo_trial")
    ckpt = hpo_trial.checkpoint(trial, root=tmp_path)
    assert ckpt.directory == tmp_path / "ns%2Fquick%20start" / "0"
    assert ckpt.load() is None
    ckpt.save(1, {"weights": torch.arange(3.0)})
    last = ckpt.save(2, {"weights": torch.arange(3.0) * 2})

    restored = hpo_trial.checkpoint(trial, root=tmp_path).load()

    assert restored is not None
    step, state = restored
    assert step == 2 and torch.equal(state["weights"], torch.tensor([0.0, 2.0, 4.0]))
    assert trial.user_attrs["checkpoint"] == {"path": str(last), "step": 2}
    assert [r.getMessage() for r in caplog.records] == [
        "checkpoint saved at step 1",
        "checkpoint saved at step 2",
        "resumed from step 2",
    ]


def test_only_the_newest_two_are_kept(trial: optuna.Trial, tmp_path: Path) -> None:
    ckpt = hpo_trial.checkpoint(trial, root=tmp_path)
    for step in range(1, 6):
        ckpt.save(step, step)
    assert sorted(path.name for path in ckpt.directory.iterdir()) == ["step-0000000004.ckpt", "step-0000000005.ckpt"]
    assert latest_step(ckpt.directory) == 5


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="partial"),
        pytest.param(lambda data: data[:-1] + bytes([data[-1] ^ 0xFF]), id="flipped-byte"),
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: b"not a checkpoint at all, but long enough to have a header", id="garbage"),
    ],
)
def test_a_damaged_latest_checkpoint_is_not_loaded_and_the_previous_one_is(
    trial: optuna.Trial, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: object
) -> None:
    ckpt = hpo_trial.checkpoint(trial, root=tmp_path)
    ckpt.save(1, {"total": 1})
    newest = ckpt.save(2, {"total": 3})
    newest.write_bytes(damage(newest.read_bytes()))  # type: ignore[operator]

    assert ckpt.load() == (1, {"total": 1})
    assert f"checkpoint {newest} is not loaded, it is damaged" in caplog.text


def test_with_only_damaged_checkpoints_the_trial_starts_over(trial: optuna.Trial, tmp_path: Path) -> None:
    ckpt = hpo_trial.checkpoint(trial, root=tmp_path)
    ckpt.save(1, "state").write_bytes(b"HPOCKPT1")
    assert ckpt.load() is None


def test_a_write_interrupted_before_its_rename_leaves_the_previous_checkpoint_current(
    trial: optuna.Trial, tmp_path: Path
) -> None:
    ckpt = hpo_trial.checkpoint(trial, root=tmp_path)
    ckpt.save(1, {"total": 1})
    stray = ckpt.directory / ".step-0000000002.ckptab12cd.ckpt.tmp"  # what a crash mid-write leaves
    stray.write_bytes(b"HPOCKPT1T half written")

    assert ckpt.load() == (1, {"total": 1})
    assert not stray.exists(), "stray temporary files are cleaned up"


def test_state_without_torch_tensors_round_trips(trial: optuna.Trial, tmp_path: Path) -> None:
    ckpt = hpo_trial.checkpoint(trial, root=tmp_path)
    ckpt.save(3, {"rng": [1, 2, 3], "best": 0.5})
    assert ckpt.load() == (3, {"rng": [1, 2, 3], "best": 0.5})


def test_study_names_become_one_safe_path_component(tmp_path: Path) -> None:
    assert checkpoint_directory(tmp_path, "..", 3) == tmp_path / "%2E%2E" / "3"
    assert checkpoint_directory(tmp_path, "a/b", 0) == tmp_path / "a%2Fb" / "0"


def test_without_a_root_checkpoints_go_to_a_fresh_directory_each_time(
    trial: optuna.Trial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HPO_CHECKPOINT_ROOT", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    first, second = hpo_trial.checkpoint(trial), hpo_trial.checkpoint(trial)
    first.save(1, "state")
    assert second.load() is None, "a trial must never resume someone else's checkpoint"
    assert first.directory.is_relative_to(tmp_path)
