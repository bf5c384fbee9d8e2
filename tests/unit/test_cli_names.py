"""The CLI repeats a few of the operator's names (it does not install the operator): they must agree."""

from __future__ import annotations

import pytest

from hpo_cli import names
from hpo_operator import contract, database, models, storage

pytestmark = pytest.mark.unit

SAME = [
    ("GROUP", models.GROUP),
    ("VERSION", models.VERSION),
    ("PLURAL", models.PLURAL),
    ("STUDY_LABEL", models.STUDY_LABEL),
    ("TRIAL_LABEL", models.TRIAL_LABEL),
    ("ATTEMPT_LABEL", models.ATTEMPT_LABEL),
    ("READONLY_SECRET_SUFFIX", models.READONLY_SECRET_SUFFIX),
    ("OUTCOMES_ATTR", storage.OUTCOMES_ATTR),
    ("FAIL_REASON_ATTR", contract.FAIL_REASON_ATTR),
    ("ATTEMPT_ATTR", contract.ATTEMPT_ATTR),
    ("TRIAL_CONTAINER", contract.TRIAL_CONTAINER),
    ("PLACEMENT_ATTR", contract.PLACEMENT_ATTR),
    ("TLS_CA_KEY", database.TLS_CA_KEY),
]


@pytest.mark.parametrize(("name", "operators"), SAME, ids=[n for n, _ in SAME])
def test_the_cli_and_the_operator_use_the_same_name(name: str, operators: str) -> None:
    assert getattr(names, name) == operators


def test_the_storage_secret_is_the_read_only_one_without_its_suffix() -> None:
    assert names.READONLY_SECRET_SUFFIX.startswith(names.SECRET_SUFFIX + "-")
