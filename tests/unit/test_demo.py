"""make demo's progress lines, printed one at a time, line up as one `kubectl get` table."""

from __future__ import annotations

import pytest

from tests.testbed.demo import WIDEST, aligned, columns

pytestmark = pytest.mark.unit


def test_progress_lines_printed_apart_share_the_headers_columns() -> None:
    headers = ["NAME", "PHASE", "TRIALS", "RUNNING", "WAITING", "BEST", "AGE"]
    widths = [max(len(h), len("quickstart") if h == "NAME" else WIDEST.get(h, 0)) for h in headers]
    lines = [
        aligned(headers, widths),
        aligned(["quickstart", "Pending", "<none>", "0", "0", "<none>", "2s"], widths),
        aligned(["quickstart", "Running", "2/8", "2", "0", "0.3557", "77s"], widths),
        aligned(["quickstart", "Succeeded", "8/8", "0", "0", "-1.235e+06", "3m33s"], widths),
    ]
    for column in ("PHASE", "TRIALS", "BEST", "AGE"):
        start = lines[0].index(column)
        assert all(line[start - 3 : start] == "   " and line[start] != " " for line in lines), (column, lines)


def test_a_blank_column_of_kubectl_get_stays_in_its_place() -> None:
    table = (
        "NAME         PHASE     TRIALS   RUNNING   WAITING   BEST     AGE\n"
        "quickstart   Running   0/8      2         0                  4s\n"
    )
    headers, cells = columns(table)
    assert dict(zip(headers, cells, strict=True)) == {
        "NAME": "quickstart",
        "PHASE": "Running",
        "TRIALS": "0/8",
        "RUNNING": "2",
        "WAITING": "0",
        "BEST": "",
        "AGE": "4s",
    }
