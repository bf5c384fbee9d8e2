"""The operator's environment: each limit has a default, and a wrong value names the variable."""

from __future__ import annotations

import pytest

from hpo_operator.settings import Settings, SettingsError

pytestmark = pytest.mark.unit


def test_the_runaway_guards_have_defaults() -> None:
    settings = Settings()
    assert (settings.max_parallelism, settings.max_waiting_trials, settings.max_grid_points) == (256, 16, 100_000)
    assert (settings.trial_lost_seconds, settings.delete_timeout_seconds) == (120.0, 120.0)


def test_the_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "HPO_MAX_PARALLELISM": "8",
        "HPO_MAX_WAITING_TRIALS": "2",
        "HPO_MAX_GRID_POINTS": "50",
        "HPO_TRIAL_LOST_SECONDS": "45",
        "HPO_DELETE_TIMEOUT_SECONDS": "0",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert (settings.max_parallelism, settings.max_waiting_trials, settings.max_grid_points) == (8, 2, 50)
    assert (settings.trial_lost_seconds, settings.delete_timeout_seconds) == (45.0, 0.0)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("HPO_MAX_PARALLELISM", "lots", "HPO_MAX_PARALLELISM='lots': must be an integer"),
        ("HPO_MAX_PARALLELISM", "0", "HPO_MAX_PARALLELISM=0: must be at least 1"),
        ("HPO_MAX_WAITING_TRIALS", "1.5", "HPO_MAX_WAITING_TRIALS='1.5': must be an integer"),
        ("HPO_TRIAL_LOST_SECONDS", "5", "HPO_TRIAL_LOST_SECONDS=5: must be at least 30"),
        ("HPO_MYSQL_PORT", "x", "HPO_MYSQL_PORT='x': must be an integer"),
    ],
)
def test_a_wrong_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        Settings.from_env()
    assert str(raised.value) == message
