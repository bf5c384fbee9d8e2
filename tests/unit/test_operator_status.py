"""When a study ends, its phase and conditions, the status written, and the Events a change calls for."""

from __future__ import annotations

import datetime
from dataclasses import replace
from typing import Any

import pytest

from hpo_operator import status as st
from hpo_operator.models import HpoStudyStatus, Phase
from hpo_operator.outcomes import Waiting
from hpo_operator.storage import Counts, FinishedTrial, RunningTrial

pytestmark = pytest.mark.unit
NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("failed", "max_failed", "started_at", "deadline", "expected"),
    [
        (0, None, "2026-12-01T11:00:00Z", None, None),
        (3, 3, "2026-12-01T11:00:00Z", None, None),
        (
            4,
            3,
            "2026-12-01T11:00:00Z",
            None,
            st.End(st.REASON_TOO_MANY_FAILURES, "4 trials failed, more than spec.budget.maxFailedTrials (3)"),
        ),
        (0, None, "2026-12-01T11:00:00Z", 3600, None),
        (0, None, "2026-12-01T10:59:59Z", 3600, st.End(st.REASON_DEADLINE, "spec.budget.deadlineSeconds reached")),
        (0, None, None, 1, None),  # not started yet: no deadline
    ],
)
def test_when_a_study_ends_early(
    failed: int, max_failed: int | None, started_at: str | None, deadline: int | None, expected: st.End | None
) -> None:
    assert st.end_of_study(failed, max_failed, started_at, deadline, NOW) == expected


DONE = Counts(complete=3, failed=1)
BASE = st.Progress(total=4, counts=DONE, busy=False)


def conditions(verdict: st.Verdict) -> dict[str, tuple[bool, str]]:
    return {c.type: (c.status, c.reason) for c in verdict.conditions}


PHASES: list[tuple[str, st.Progress, Phase, str, dict[str, tuple[bool, str]]]] = [
    (
        "budget spent with a complete trial: succeeded",
        BASE,
        Phase.SUCCEEDED,
        "all 4 trials finished",
        {"Progressing": (False, "BudgetSpent"), "Finished": (True, "BudgetSpent")},
    ),
    (
        "budget spent and every trial failed: failed",
        replace(BASE, counts=Counts(failed=3, pruned=1)),
        Phase.FAILED,
        "all 4 trials finished, but no trial completed (3 failed, 1 pruned)",
        {"Finished": (True, "NoTrialCompleted")},
    ),
    (
        "deadline with none complete: failed",
        replace(BASE, counts=Counts(failed=2), end=st.End(st.REASON_DEADLINE, "spec.budget.deadlineSeconds reached")),
        Phase.FAILED,
        "spec.budget.deadlineSeconds reached, but no trial completed",
        {"Finished": (True, "NoTrialCompleted")},
    ),
    (
        "deadline with one complete: succeeded",
        replace(BASE, counts=Counts(complete=1, failed=1), end=st.End(st.REASON_DEADLINE, "deadline reached")),
        Phase.SUCCEEDED,
        "deadline reached",
        {"Finished": (True, "DeadlineReached")},
    ),
    (
        "dispatching",
        replace(BASE, counts=Counts(running=2, complete=1), busy=True),
        Phase.RUNNING,
        "1 of 4 trials finished",
        {"Progressing": (True, "Dispatching"), "Finished": (False, "InProgress")},
    ),
    (
        "continued after finishing (budget raised)",
        replace(BASE, total=6),
        Phase.RUNNING,
        "4 of 6 trials finished",
        {"Finished": (False, "InProgress")},
    ),
    (
        "deadline, draining",
        replace(
            BASE, counts=Counts(running=1, complete=1), busy=True, end=st.End(st.REASON_DEADLINE, "deadline reached")
        ),
        Phase.RUNNING,
        "deadline reached; letting running trials finish",
        {"Progressing": (True, "Draining")},
    ),
    (
        "too many failures, still running: failed now, finished later",
        replace(
            BASE, counts=Counts(running=1, failed=4), busy=True, end=st.End(st.REASON_TOO_MANY_FAILURES, "4 failed")
        ),
        Phase.FAILED,
        "4 failed",
        {"Progressing": (True, "TooManyFailures"), "Finished": (False, "TooManyFailures")},
    ),
    (
        "too many failures, nothing running",
        replace(BASE, end=st.End(st.REASON_TOO_MANY_FAILURES, "4 failed")),
        Phase.FAILED,
        "4 failed",
        {"Finished": (True, "TooManyFailures")},
    ),
    (
        "suspended",
        replace(BASE, counts=Counts(running=1), busy=True, suspend=True),
        Phase.SUSPENDED,
        "suspended: stopping running trials",
        {"Progressing": (False, "Suspended"), "Finished": (False, "Suspended")},
    ),
    (
        "capped parallelism is said",
        replace(
            BASE,
            counts=Counts(running=256),
            busy=True,
            total=10**9,
            parallelism_capped="parallelism capped at 256 by HPO_MAX_PARALLELISM",
        ),
        Phase.RUNNING,
        "0 of 1000000000 trials finished; parallelism capped at 256 by HPO_MAX_PARALLELISM",
        {},
    ),
    (
        "trials waiting, with the reason",
        replace(
            BASE,
            counts=Counts(running=3),
            busy=True,
            waiting=2,
            waiting_reason=Waiting.UNSCHEDULABLE,
            waiting_message="trial 4: 0/1 nodes: Insufficient cpu",
        ),
        Phase.RUNNING,
        "0 of 4",
        {"TrialsWaiting": (True, "Unschedulable")},
    ),
    (
        "paced",
        replace(
            BASE, counts=Counts(running=16), busy=True, waiting=16, paced=True, waiting_reason=Waiting.UNSCHEDULABLE
        ),
        Phase.RUNNING,
        "",
        {"TrialsWaiting": (True, "Paced")},
    ),
    (
        "none waiting",
        replace(BASE, counts=Counts(running=3), busy=True),
        Phase.RUNNING,
        "",
        {"TrialsWaiting": (False, "AllStarted")},
    ),
    (
        "the sampler fails",
        replace(
            BASE,
            counts=Counts(running=0, complete=1),
            total=5,
            blocked=(st.REASON_SAMPLER_ERROR, "the sampler raised ValueError: boom"),
        ),
        Phase.RUNNING,
        "the sampler raised ValueError: boom",
        {"Progressing": (True, "SamplerError")},
    ),
]


@pytest.mark.parametrize(("case", "progress", "phase", "message", "expected"), PHASES, ids=[c[0] for c in PHASES])
def test_the_phase_and_conditions_of_each_situation(
    case: str, progress: st.Progress, phase: Phase, message: str, expected: dict[str, tuple[bool, str]]
) -> None:
    verdict = st.decide(progress)
    assert verdict.phase is phase
    assert verdict.message.startswith(message), verdict.message
    found = conditions(verdict)
    assert {kind: found[kind] for kind in expected} == expected
    assert set(found) == {"Validated", "DatabaseReady", "TrialsWaiting", "Progressing", "Finished"}, (
        "every condition, every time"
    )


def test_the_waiting_condition_says_why_and_that_dispatch_is_paced() -> None:
    verdict = st.decide(
        replace(
            BASE,
            counts=Counts(running=16),
            busy=True,
            waiting=16,
            paced=True,
            waiting_reason=Waiting.UNSCHEDULABLE,
            waiting_message="0/1 nodes: Insufficient cpu",
        )
    )
    waiting = next(c for c in verdict.conditions if c.type == st.TRIALS_WAITING)
    assert waiting.message.startswith("16 dispatched trial(s) have not started: 0/1 nodes: Insufficient cpu")
    assert "HPO_MAX_WAITING_TRIALS" in waiting.message


def test_an_unready_database_keeps_a_running_study_running_and_a_new_one_pending() -> None:
    assert st.database_unready(st.REASON_DATABASE_UNAVAILABLE, "down", "Running").phase is Phase.RUNNING
    assert st.database_unready(st.REASON_DATABASE_ERROR, "down", None).phase is Phase.PENDING
    assert st.database_unready(st.REASON_DATABASE_ERROR, "down", "Failed").phase is Phase.PENDING
    verdict = st.database_unready(st.REASON_DATABASE_UNAVAILABLE, "cannot connect", "Running")
    assert verdict.message == "waiting for the study's database: cannot connect"
    assert conditions(verdict)["DatabaseReady"] == (False, "DatabaseUnavailable")


def written(verdict: st.Verdict, old: list[dict[str, Any]] | None = None, **facts: Any) -> dict[str, Any]:
    return st.render(st.Facts(verdict, total=4, generation=2, **facts), old or [])


def test_the_status_written_is_the_status_model_and_only_what_was_observed() -> None:
    patch = written(
        st.decide(replace(BASE, counts=Counts(running=3, complete=1), busy=True, waiting=1)),
        counts=Counts(running=3, complete=1, preemptions=2),
        waiting=1,
        parallelism=3,
        best=FinishedTrial(0, (float("inf"),), {"x": 1}),
        running=[RunningTrial(11, 2, "/ckpt/2", 5)],
        attempts={2: 1},
        optuna_study="s",
        started_at="2026-12-01T11:00:00Z",
    )
    assert (
        HpoStudyStatus.model_validate(patch).model_dump(
            by_alias=True, exclude_none=True, exclude_unset=True, mode="json"
        )
        == patch
    )
    assert patch["trials"] == {"running": 2, "waiting": 1, "complete": 1, "pruned": 0, "failed": 0, "preemptions": 2}
    assert patch["progress"] == "1/4" and patch["parallelism"] == 3 and patch["startedAt"] == "2026-12-01T11:00:00Z"
    assert patch["bestTrial"] == {"number": 0, "params": {"x": 1}}, "an infinite value is left out, not written"
    assert patch["bestValue"] == "inf"
    assert patch["runningTrials"] == [{"number": 2, "attempt": 1, "checkpointPath": "/ckpt/2", "checkpointStep": 5}]
    rejected = written(st.rejected("spec.budget.trials: required"))
    assert set(rejected) == {"phase", "message", "observedGeneration", "conditions"}, (
        "a rejection leaves counts and startedAt as they were"
    )


def test_imported_counts_are_written_with_the_counts_and_read_back_from_the_status() -> None:
    patch = written(
        st.decide(replace(BASE, counts=Counts(complete=10, failed=2))),
        counts=Counts(complete=10, failed=2),
        imported=st.ImportedCounts(8, 1),
        snapshot={"claimName": "c", "path": "snapshots/s/s-5-x.db", "time": "t", "trials": 6, "finishedTrials": 5},
    )
    assert patch["trials"] == {
        "running": 0,
        "waiting": 0,
        "complete": 10,
        "pruned": 0,
        "failed": 2,
        "preemptions": 0,
        "imported": 8,
        "importedFailed": 1,
    }
    assert patch["snapshot"]["path"] == "snapshots/s/s-5-x.db"
    assert st.ImportedCounts.of(patch) == st.ImportedCounts(8, 1)
    assert st.ImportedCounts.of({"trials": {"complete": 3}}) is None
    assert "imported" not in written(st.decide(BASE), counts=Counts())["trials"]


def test_an_import_in_progress_runs_no_trial_and_a_failed_one_fails_the_study_naming_the_field() -> None:
    going = st.importing("importing: copying the source's trials")
    assert going.phase is Phase.RUNNING
    assert {c.type: (c.status, c.reason) for c in going.conditions}["Imported"] == (False, "Importing")
    failed = st.import_failed("spec.importFrom.path", "no file runs/x.db on claim slurm")
    assert failed.phase is Phase.FAILED
    conditions = {c.type: c for c in failed.conditions}
    assert (conditions["Imported"].status, conditions["Imported"].reason) == (False, "ImportFailed")
    assert conditions["Imported"].message == "spec.importFrom.path: no file runs/x.db on claim slurm"
    assert conditions["Finished"].status is True and conditions["Validated"].status is True
    done = st.imported(st.decide(BASE), "imported 3 trials")
    assert {c.type: c.status for c in done.conditions}["Imported"] is True


def test_a_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    old = [
        {
            "type": "Finished",
            "status": "False",
            "reason": "InProgress",
            "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
    ]
    kept = st.merge_conditions(old, [st.ConditionUpdate("Finished", False, "InProgress", "still")], 3)
    flipped = st.merge_conditions(old, [st.ConditionUpdate("Finished", True, "BudgetSpent")], 3)
    assert kept[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert flipped[0]["lastTransitionTime"] != "2026-01-01T00:00:00Z" and flipped[0]["observedGeneration"] == 3


def status(phase: str, message: str = "", **conditions: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "phase": phase,
        "message": message,
        "conditions": [
            {"type": kind, "status": s, "reason": r, "message": m} for kind, (s, r, m) in conditions.items()
        ],
    }


READY = ("True", "Provisioned", "Optuna study s in database hpo_x")
RUNNING = status(
    "Running", Validated=("True", "SpecValid", ""), DatabaseReady=READY, Finished=("False", "InProgress", "")
)
DONE_OK = status(
    "Succeeded",
    "all 4 trials finished",
    Validated=("True", "SpecValid", ""),
    DatabaseReady=READY,
    Finished=("True", "BudgetSpent", "all 4 trials finished"),
)

TRANSITIONS: list[tuple[str, dict[str, Any] | None, dict[str, Any], list[st.Note]]] = [
    ("first provisioning", status("Pending"), RUNNING, [st.Note("DatabaseReady", READY[2])]),
    ("again after a restart: nothing", RUNNING, RUNNING, []),
    ("finished: once", RUNNING, DONE_OK, [st.Note("StudyFinished", "all 4 trials finished")]),
    ("finished, written again: nothing", DONE_OK, DONE_OK, []),
    (
        "failed: a warning",
        RUNNING,
        status("Failed", "no trial completed", Finished=("True", "NoTrialCompleted", "x")),
        [st.Note("StudyFailed", "no trial completed", warning=True)],
    ),
    ("continued after a budget raise", DONE_OK, RUNNING, [st.Note("StudyContinued", "")]),
    (
        "invalid spec",
        None,
        status("Failed", Validated=("False", "SpecInvalid", "spec.x: bad")),
        [st.Note("InvalidSpec", "spec.x: bad", warning=True)],
    ),
    (
        "invalid spec, the same problem again: nothing",
        status("Failed", Validated=("False", "SpecInvalid", "spec.x: bad")),
        status("Failed", Validated=("False", "SpecInvalid", "spec.x: bad")),
        [],
    ),
    (
        "invalid spec, another problem",
        status("Failed", Validated=("False", "SpecInvalid", "spec.x: bad")),
        status("Failed", Validated=("False", "SpecInvalid", "spec.y: bad")),
        [st.Note("InvalidSpec", "spec.y: bad", warning=True)],
    ),
    (
        "a missing Secret",
        None,
        status("Failed", Validated=("False", "ReferenceNotFound", "spec.storage.adminSecret")),
        [st.Note("ReferenceNotFound", "spec.storage.adminSecret", warning=True)],
    ),
    (
        "fixed by an edit",
        status("Failed", Validated=("False", "SpecInvalid", "spec.x: bad")),
        RUNNING,
        [st.Note("SpecValid", "the spec is valid now"), st.Note("DatabaseReady", READY[2])],
    ),
    (
        "the database went away",
        RUNNING,
        status("Running", DatabaseReady=("False", "DatabaseUnavailable", "down")),
        [st.Note("DatabaseUnavailable", "down", warning=True)],
    ),
    (
        "still away: nothing",
        status("Running", DatabaseReady=("False", "DatabaseUnavailable", "down")),
        status("Running", DatabaseReady=("False", "DatabaseUnavailable", "down")),
        [],
    ),
    (
        "back",
        status("Running", DatabaseReady=("False", "DatabaseUnavailable", "down")),
        RUNNING,
        [st.Note("DatabaseReady", READY[2])],
    ),
    (
        "the sampler fails",
        RUNNING,
        status("Running", Progressing=("True", "SamplerError", "boom")),
        [st.Note("SamplerError", "boom", warning=True)],
    ),
    (
        "the API server refuses the Job",
        RUNNING,
        status("Running", Progressing=("True", "JobRefused", "quota")),
        [st.Note("JobRefused", "quota", warning=True)],
    ),
    (
        "still refused: nothing",
        status("Running", Progressing=("True", "JobRefused", "quota")),
        status("Running", Progressing=("True", "JobRefused", "quota")),
        [],
    ),
    (
        "importing: nothing (the operator posts ImportStarted as it creates the Job)",
        RUNNING,
        status("Running", Imported=("False", "Importing", "importing: copying")),
        [],
    ),
    (
        "imported",
        status("Running", Imported=("False", "Importing", "importing: copying")),
        status("Running", Imported=("True", "ImportSucceeded", "imported 12 trials")),
        [st.Note("Imported", "imported 12 trials")],
    ),
    (
        "still imported: nothing",
        status("Running", Imported=("True", "ImportSucceeded", "imported 12 trials")),
        status("Running", Imported=("True", "ImportSucceeded", "imported 12 trials")),
        [],
    ),
    (
        "the import failed",
        status("Running", Imported=("False", "Importing", "importing: copying")),
        status("Running", Imported=("False", "ImportFailed", "spec.importFrom.path: no file")),
        [st.Note("ImportFailed", "spec.importFrom.path: no file", warning=True)],
    ),
]


@pytest.mark.parametrize(("case", "old", "new", "expected"), TRANSITIONS, ids=[t[0] for t in TRANSITIONS])
def test_each_transition_is_posted_once(
    case: str, old: dict[str, Any] | None, new: dict[str, Any], expected: list[st.Note]
) -> None:
    assert st.transitions(old, new) == expected


@pytest.mark.parametrize(
    ("facts", "best_value"),
    [
        ({"best": FinishedTrial(3, (0.18706903248075285,), {"x": 1})}, "0.1871"),
        ({"best": FinishedTrial(3, (123456.789,), {})}, "1.235e+05"),
        ({"best": FinishedTrial(3, (2.0,), {})}, "2"),
        ({"pareto": [FinishedTrial(1, (0.1, 2.0), {}), FinishedTrial(4, (0.2, 1.0), {})]}, "pareto:2"),
        ({}, None),
    ],
)
def test_kubectl_get_shows_the_best_value_rounded_and_the_status_keeps_it_whole(
    facts: dict[str, Any], best_value: str | None
) -> None:
    patch = written(st.decide(replace(BASE, counts=Counts(complete=5))), counts=Counts(complete=5), **facts)
    assert patch.get("bestValue") == best_value
    if "best" in facts:
        assert patch["bestTrial"]["value"] == facts["best"].values[0], "the full value stays in bestTrial"


def test_the_sampler_in_force_is_written_for_kubectl_get_wide() -> None:
    patch = written(st.decide(replace(BASE, counts=Counts(complete=1))), counts=Counts(complete=1), sampler="tpe")
    assert patch["sampler"] == "tpe"
