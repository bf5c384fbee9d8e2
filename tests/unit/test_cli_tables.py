"""kubectl hpo's rows, decided without a cluster: values, ages, placements, sorting, CSV, JSON, the best trial."""

from __future__ import annotations

import csv
import datetime
import io
import math
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState, create_trial

from hpo_cli import names
from hpo_cli.tables import (
    Placement,
    best_document,
    human_age,
    parse_states,
    placements,
    render_csv,
    render_table,
    rounded,
    sort_rows,
    study_row,
    trial_json,
    trial_rows,
    trial_table,
)

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2026, 12, 3, 12, 0, 0)
LABELS = (names.STUDY_LABEL, names.TRIAL_LABEL, names.ATTEMPT_LABEL)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.18706903248075285, "0.1871"),
        (0.35566018617252787, "0.3557"),
        (1234567.0, "1.235e+06"),
        (2.0, "2"),
        (-0.000123456, "-0.0001235"),
        (None, "-"),
        (math.inf, "inf"),
    ],
)
def test_values_are_rounded_to_four_significant_digits(value: float | None, text: str) -> None:
    assert rounded(value) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (77, "77s"), (119, "119s"), (155, "2m35s"), (180, "3m"), (14 * 60 + 5, "14m"),
     (3 * 3600 + 4 * 60, "3h4m"), (9 * 3600, "9h"), (3 * 86400 + 3600, "3d1h"), (30 * 86400, "30d")],
)  # fmt: skip
def test_ages_read_as_kubectl_prints_them(seconds: float, text: str) -> None:
    assert human_age(seconds) == text


def test_states_are_optunas_names_in_any_case_and_comma_separated() -> None:
    assert parse_states(["complete,PRUNED", "fail"]) == {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}
    assert parse_states([]) == set()
    with pytest.raises(ValueError, match="unknown trial state\\(s\\) done"):
        parse_states(["done"])


def _trial(number: int, state: TrialState, value: float | None = None, **extra: Any) -> FrozenTrial:
    start = NOW - datetime.timedelta(seconds=100)
    trial = create_trial(
        state=state,
        value=value,
        params={"lr": 0.0123456789, "layers": 2},
        distributions={"lr": FloatDistribution(1e-4, 1e-1, log=True), "layers": IntDistribution(1, 4)},
        system_attrs=extra.get("system_attrs", {}),
        intermediate_values=extra.get("intermediate_values", {}),
    )
    trial.number = number
    trial.datetime_start = start
    trial.datetime_complete = None if state is TrialState.RUNNING else start + datetime.timedelta(seconds=42)
    return trial


def test_placements_come_from_live_pods_then_from_scheduling_events() -> None:
    pods = [
        ("s-3-1-abcde", {names.STUDY_LABEL: "s", names.TRIAL_LABEL: "3", names.ATTEMPT_LABEL: "1"}, "node-b"),
        ("other-1-0-zzzzz", {names.STUDY_LABEL: "other", names.TRIAL_LABEL: "1"}, "node-a"),  # not this study
        ("s-import-abcde", {names.STUDY_LABEL: "s"}, "node-a"),  # no trial label: not a trial pod
    ]
    events = [
        "Successfully assigned ns/s-0-0-x1y2z to node-a",
        "Successfully assigned ns/s-3-0-aaaaa to node-a",  # an older attempt of trial 3
        "Successfully assigned ns/s-long-1-0-bbbbb to node-a",  # another study whose name starts with s-
        "Successfully assigned ns/s-7-0-ccccc to node-b",
    ]
    found = placements("s", pods, events, LABELS)
    assert found == {
        0: Placement(0, "s-0-0-x1y2z", "node-a"),
        3: Placement(1, "s-3-1-abcde", "node-b"),
        7: Placement(0, "s-7-0-ccccc", "node-b"),
    }


def test_a_pod_not_yet_scheduled_keeps_its_name_and_no_node() -> None:
    pods = [("s-2-0-abcde", {names.STUDY_LABEL: "s", names.TRIAL_LABEL: "2", names.ATTEMPT_LABEL: "0"}, "")]
    assert placements("s", pods, [], LABELS) == {2: Placement(0, "s-2-0-abcde", "")}


def test_where_a_trial_ran_is_what_its_pod_recorded_unless_a_later_attempt_is_known() -> None:
    recorded = {names.PLACEMENT_ATTR: {"attempt": 1, "pod": "s-0-1-abcde", "node": "node-a"}}
    trials = [_trial(0, TrialState.COMPLETE, 1.0, system_attrs=recorded), _trial(1, TrialState.COMPLETE, 2.0)]
    rows = trial_rows(trials, {1: Placement(0, "s-1-0-zzzzz", "node-b")}, NOW)
    assert [(r.pod, r.node) for r in rows] == [("s-0-1-abcde", "node-a"), ("s-1-0-zzzzz", "node-b")]
    later = trial_rows(trials, {0: Placement(2, "s-0-2-fghij", "")}, NOW)  # a new attempt, not yet scheduled
    assert (later[0].pod, later[0].node) == ("s-0-2-fghij", "")
    same = trial_rows(trials, {0: Placement(1, "s-0-1-abcde", "")}, NOW)  # its live pod, not yet scheduled
    assert same[0].node == "node-a"


def test_trial_rows_say_state_values_attempts_duration_placement_and_reason() -> None:
    trials = [
        _trial(1, TrialState.FAIL, system_attrs={names.FAIL_REASON_ATTR: "OOMKilled", names.ATTEMPT_ATTR: 1}),
        _trial(0, TrialState.COMPLETE, 0.25, system_attrs={names.ATTEMPT_ATTR: 0}),
        _trial(2, TrialState.PRUNED, system_attrs={names.ATTEMPT_ATTR: 0}, intermediate_values={0: 0.9, 3: 0.7}),
        _trial(3, TrialState.RUNNING, system_attrs={names.ATTEMPT_ATTR: 2, names.OUTCOMES_ATTR: ["preempted"]}),
        _trial(4, TrialState.COMPLETE, 0.5),  # imported: no attempt recorded
    ]
    rows = trial_rows(trials, {1: Placement(1, "s-1-1-abcde", "node-b")}, NOW)
    assert [r.number for r in rows] == [0, 1, 2, 3, 4]
    assert [r.attempts for r in rows] == [1, 2, 1, 3, None]
    assert [r.reason for r in rows] == ["", "OOMKilled", "pruned at step 3 (intermediate value 0.7)", "", ""]
    assert rows[0].values == (0.25,) and rows[1].values is None
    assert rows[0].duration == 42 and rows[3].duration == 100  # a running trial's duration runs to now
    assert (rows[1].pod, rows[1].node) == ("s-1-1-abcde", "node-b")
    assert rows[0].params == {"lr": 0.0123456789, "layers": 2}


@pytest.mark.parametrize(
    ("direction", "order"),
    [(StudyDirection.MINIMIZE, [1, 0, 2, 4, 3]), (StudyDirection.MAXIMIZE, [2, 0, 1, 4, 3])],
)
def test_sorting_by_value_puts_the_best_complete_trials_first_and_trials_without_a_value_last(
    direction: StudyDirection, order: list[int]
) -> None:
    trials = [
        _trial(0, TrialState.COMPLETE, 0.5),
        _trial(1, TrialState.COMPLETE, 0.1),
        _trial(2, TrialState.COMPLETE, 0.9),
        _trial(3, TrialState.FAIL),
        _trial(4, TrialState.PRUNED, 0.05),  # its last intermediate value: not a result to rank first
    ]
    rows = trial_rows(trials, {}, NOW)
    assert [r.number for r in sort_rows(rows, "value", [direction])] == order
    assert [r.number for r in sort_rows(rows, "number", [direction])] == [0, 1, 2, 3, 4]


def test_the_table_is_aligned_as_kubectl_get_prints_it() -> None:
    rows = trial_rows([_trial(0, TrialState.COMPLETE, 0.18706903248075285), _trial(10, TrialState.FAIL)], {}, NOW)
    text = render_table(*trial_table(rows))
    lines = text.splitlines()
    assert lines[0].split() == ["NUMBER", "STATE", "VALUE", "PARAMS", "ATTEMPTS", "DURATION", "NODE", "REASON"]
    assert lines[1].split()[:4] == ["0", "COMPLETE", "0.1871", "layers=2"]
    assert "lr=0.01235" in lines[1]
    starts = [line.index(word) for line, word in zip(lines, ["STATE", "COMPLETE", "FAIL"], strict=True)]
    assert len(set(starts)) == 1, text  # every column starts at the same offset, three spaces after the widest
    wide = render_table(*trial_table(rows, wide=True)).splitlines()[0].split()
    assert wide[6:9] == ["NODE", "POD", "STARTED"]


def test_json_and_csv_keep_full_precision() -> None:
    rows = trial_rows([_trial(0, TrialState.COMPLETE, 0.18706903248075285)], {}, NOW)
    assert trial_json(rows[0])["values"] == [0.18706903248075285]
    assert trial_json(rows[0])["params"]["lr"] == 0.0123456789
    parsed = list(csv.DictReader(io.StringIO(render_csv(rows))))
    assert float(parsed[0]["value"]) == 0.18706903248075285
    assert float(parsed[0]["params_lr"]) == 0.0123456789 and parsed[0]["params_layers"] == "2"


def test_best_is_the_best_trial_or_the_pareto_front() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    for values in ([1.0, 3.0], [2.0, 2.0], [3.0, 3.0], [0.5, 4.123456789012345]):
        study.add_trial(
            create_trial(values=values, params={"x": values[0]}, distributions={"x": FloatDistribution(0, 9)})
        )
    front = best_document(study.directions, None, study.best_trials)
    assert isinstance(front, list)
    assert [t["number"] for t in front] == [0, 1, 3]
    assert front[2]["values"] == [0.5, 4.123456789012345]
    single = optuna.create_study()
    single.add_trial(
        create_trial(value=0.1234567890123, params={"x": 1.5}, distributions={"x": FloatDistribution(0, 9)})
    )
    assert best_document(single.directions, single.best_trial, []) == {
        "number": 0,
        "value": 0.1234567890123,
        "params": {"x": 1.5},
    }


def test_a_study_row_rounds_the_best_value_and_names_a_pareto_front() -> None:
    body = {
        "metadata": {"name": "q", "namespace": "team", "creationTimestamp": "2026-12-03T11:58:43Z"},
        "status": {"phase": "Running", "progress": "5/8", "trials": {"running": 2}, "bestTrial": {"value": 0.18706903}},
    }
    assert study_row(body, NOW.replace(tzinfo=datetime.UTC), namespaced=False) == [
        "q", "Running", "5/8", "2", "0.1871", "77s",
    ]  # fmt: skip
    body["status"] = {"phase": "Pending", "paretoFront": [{"number": 1}, {"number": 2}]}
    assert study_row(body, NOW.replace(tzinfo=datetime.UTC), namespaced=True)[0:2] == ["team", "q"]
    assert study_row(body, NOW.replace(tzinfo=datetime.UTC), namespaced=True)[5] == "pareto:2"


def test_a_running_trials_duration_runs_to_now_whether_now_is_naive_or_aware() -> None:
    running = _trial(0, TrialState.RUNNING)
    aware = NOW.astimezone(datetime.UTC)  # the same instant, as an aware time
    assert trial_rows([running], {}, aware)[0].duration == trial_rows([running], {}, NOW)[0].duration == 100
