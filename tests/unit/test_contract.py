"""The operator and the trial runtime share no code: these tests hold their two halves of the contract together."""

from __future__ import annotations

import json

import pytest

from hpo_operator import contract as operator_side
from hpo_operator import dispatch
from hpo_operator.validation import parse
from hpo_trial import contract as runtime_side
from hpo_trial.assignment import parse_assignment
from hpo_trial.outcome import ExitCode

pytestmark = pytest.mark.unit

SAME_NAMES = [
    ("PROTOCOL", "PROTOCOL_VERSION"),
    ("TRIAL_CONTAINER", "TRIAL_CONTAINER"),
    ("ASSIGNMENT_ENV", "ASSIGNMENT_ENV"),
    ("STORAGE_URL_ENV", "STORAGE_URL_ENV"),
    ("QUICK_SCAN_ENV", "QUICK_SCAN_ENV"),
    ("FAIL_REASON_ATTR", "FAIL_REASON_ATTR"),
    ("ATTEMPT_ATTR", "ATTEMPT_ATTR"),
    ("CHECKPOINT_ATTR", "CHECKPOINT_ATTR"),
    ("PLACEMENT_ATTR", "PLACEMENT_ATTR"),
    ("POD_NAME_ENV", "POD_NAME_ENV"),
    ("NODE_NAME_ENV", "NODE_NAME_ENV"),
    ("IMPORT_URL_ENV", "IMPORT_URL_ENV"),
    ("IMPORTED_ATTR", "IMPORTED_ATTR"),
    ("EXIT_FINISHED", "EXIT_FINISHED"),
    ("EXIT_OBJECTIVE_FAILED", "EXIT_OBJECTIVE_FAILED"),
    ("EXIT_CONFIGURATION", "EXIT_CONFIGURATION"),
    ("EXIT_DATABASE_UNAVAILABLE", "EXIT_STORAGE_UNAVAILABLE"),
    ("EXIT_SUPERSEDED", "EXIT_SUPERSEDED"),
    ("EXIT_INTERRUPTED", "EXIT_INTERRUPTED"),
]


@pytest.mark.parametrize(("ours", "theirs"), SAME_NAMES, ids=[o for o, _ in SAME_NAMES])
def test_both_sides_define_the_same_value(ours: str, theirs: str) -> None:
    assert getattr(operator_side, ours) == getattr(runtime_side, theirs)


def test_the_runtimes_exit_codes_are_the_ones_the_operator_reads() -> None:
    assert {code.value for code in ExitCode} == {
        operator_side.EXIT_FINISHED,
        operator_side.EXIT_OBJECTIVE_FAILED,
        operator_side.EXIT_CONFIGURATION,
        operator_side.EXIT_DATABASE_UNAVAILABLE,
        operator_side.EXIT_SUPERSEDED,
        operator_side.EXIT_INTERRUPTED,
    }


def test_a_trial_job_built_by_the_operator_is_what_the_runtime_reads() -> None:
    spec, problems = parse(
        {
            "budget": {"trials": 4, "parallelism": 2, "trialTimeoutSeconds": 600},
            "trial": {"objective": "pkg.mod:fn", "quickScan": True},
            "checkpoints": {"claimName": "ckpt"},
        }
    )
    assert spec is not None, problems
    ref = dispatch.TrialRef("team", "mnist", "mnist", "mnist-storage")
    assignment = dispatch.assignment(spec, ref, 3, 17, {"class": "TPESampler", "kwargs": {"seed": 1}}, None, attempt=2)
    job = dispatch.build_job(spec, ref, 3, 2, assignment, "trial:1")

    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["name"] == runtime_side.TRIAL_CONTAINER
    assert container["command"] == ["hpo-trial"]
    env = {e["name"]: e for e in container["env"]}
    assert env[runtime_side.STORAGE_URL_ENV]["valueFrom"]["secretKeyRef"]["key"] == "url"
    assert env[runtime_side.QUICK_SCAN_ENV]["value"] == "1"
    parsed = parse_assignment(env[runtime_side.ASSIGNMENT_ENV]["value"])
    assert (parsed.trial.study, parsed.trial.number, parsed.trial.id) == ("mnist", 3, 17)
    assert parsed.attempt == 2 and parsed.deadline_seconds == 600
    assert parsed.sampler is not None and parsed.sampler.kwargs == {"seed": 1}
    assert parsed.checkpoint_root == "/checkpoints" and parsed.objective == "pkg.mod:fn"
    assert json.loads(env[runtime_side.ASSIGNMENT_ENV]["value"])["protocol"] == runtime_side.PROTOCOL_VERSION


def test_the_transfer_messages_the_runtime_writes_are_the_ones_the_operator_parses() -> None:
    import datetime
    from pathlib import Path

    from hpo_operator import importing, snapshots
    from hpo_trial.errors import SpecError
    from hpo_trial.outcome import Outcome
    from hpo_trial.transfer import ImportResult

    result = ImportResult(total=12, copied=9, skipped=3, failed_unfinished=1, enqueued=1, best_value=0.25)
    message = Outcome(operator_side.IMPORTED_WORD, result.summary, ExitCode.FINISHED).message
    assert importing.parse_imported(message) == importing.Imported(9, 3, 1, 1, 12, 0.25)
    none = ImportResult(total=0, copied=0, skipped=0, failed_unfinished=0, enqueued=0, best_value=None)
    assert importing.parse_imported(Outcome("IMPORTED", none.summary, ExitCode.FINISHED).message) is not None

    at = datetime.datetime(2026, 12, 1, 12, 0, 0, 5, tzinfo=datetime.UTC)
    path = Path("/checkpoints/snapshots/s/s-5-20261201T120000Z.db")
    detail = f"path={path} trials=6 finished=5 at={at.isoformat()}"  # as hpo_trial.transfer writes it
    taken = snapshots.parse_snapshot(Outcome(operator_side.SNAPSHOT_WORD, detail, ExitCode.FINISHED).message)
    assert taken == snapshots.Taken(str(path), 6, 5, "2026-12-01T12:00:00Z")

    failed = Outcome.from_error(SpecError("spec.importFrom.studyName", "no study 'x'"))
    assert int(failed.exit_code) == operator_side.EXIT_CONFIGURATION
    assert importing.failure(failed.message, "spec.importFrom.path") == ("spec.importFrom.studyName", "no study 'x'")
