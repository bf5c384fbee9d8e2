"""`make demo`: the quickstart study on the testbed, with progress, ending with the best parameters.

Leaves the testbed, the operator and the study running so the user can look around.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

from tests.testbed import cluster, layout

QUICKSTART = layout.ROOT / "examples" / "quickstart.yaml"
TIMEOUT = 900


def kubectl(*args: str) -> str:
    result = subprocess.run(
        [str(layout.BIN / "kubectl"), "--kubeconfig", str(cluster.KUBECONFIG), *args], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(
            f"kubectl {' '.join(args)} failed: {result.stderr.strip()}\n"
            "Is the testbed still up? `make testbed-status` tells; `make demo` picks up where it was."
        )
    return result.stdout


# The widest value each column of `kubectl get hpostudies` takes (Best is rounded to 4 significant
# digits, at most `-1.235e+06`), so that lines printed one at a time line up as one table would.
WIDEST = {"PHASE": len("Succeeded"), "TRIALS": len("100/100"), "BEST": len("-1.235e+06"), "AGE": len("10m10s")}
EXPLORE = """
Explore the study with the kubectl plugin (`source .testbed/env` puts `kubectl` and `kubectl-hpo` on PATH):
  kubectl hpo list                                      # phase, progress, best value, running, age
  kubectl hpo trials quickstart --sort value            # one row per trial: state, value, params, node, reason
  kubectl hpo best quickstart -o json                   # the best parameters at full precision
  kubectl hpo plot quickstart --kind history -o quickstart.png
  kubectl hpo export quickstart -o quickstart.db        # open offline with optuna.load_study
  kubectl hpo logs quickstart 0                         # a trial pod's log (while its pod is kept)
  kubectl hpo dashboard quickstart                      # optuna-dashboard on localhost, read-only"""


def aligned(cells: list[str], widths: list[int]) -> str:
    """One line of a table as `kubectl get` prints it: columns padded to ``widths``, three spaces apart."""
    return "   ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()


def columns(table: str) -> tuple[list[str], list[str]]:
    """The headers and the first row of `kubectl get` output, cut where the headers start.

    A column with no value yet (no best value while the first trials run) is blank in kubectl's
    output, so splitting the row on spaces would shift every column after it.
    """
    header, row = table.splitlines()[:2]
    starts = [match.start() for match in re.finditer(r"\S+", header)]
    ends = [*starts[1:], None]
    return header.split(), [row[start:end].strip() for start, end in zip(starts, ends, strict=True)]


def install_plugin() -> None:
    """Put `kubectl-hpo` (installed in .venv by `make venv`) beside the testbed's kubectl, where kubectl finds it."""
    link = layout.BIN / "kubectl-hpo"
    if not link.exists() and (layout.VENV_BIN / "kubectl-hpo").exists():
        link.symlink_to(layout.VENV_BIN / "kubectl-hpo")


def main() -> None:
    print(kubectl("apply", "-f", str(QUICKSTART)), end="", flush=True)
    print("progress (kubectl get hpostudies quickstart):", flush=True)
    shown: list[str] = []
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        headers, cells = columns(kubectl("get", "hpostudies", "quickstart"))
        if cells[:-1] != shown:  # everything but AGE, which changes every second
            widths = [max(len(h), len("quickstart") if h == "NAME" else WIDEST.get(h, 0)) for h in headers]
            if not shown:
                print("  " + aligned(headers, widths), flush=True)
            print("  " + aligned(cells, widths), flush=True)
            shown = cells[:-1]
        status = json.loads(kubectl("get", "hpostudies", "quickstart", "-o", "json")).get("status", {})
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        time.sleep(2)
    else:
        raise SystemExit(f"the quickstart did not finish within {TIMEOUT}s; see .testbed/logs/operator.log")
    best = status.get("bestTrial")
    print(f"\nstudy {status['phase']}: {status.get('message', '')}")
    if best:
        print(f"best value (val_loss): {best['value']}  (trial {best['number']})")
        for name, value in best["params"].items():
            print(f"  {name} = {value}")
    install_plugin()
    print(EXPLORE)
    print(
        "\nEverything keeps running: `source .testbed/env`, then e.g. `kubectl get hpostudies -o wide`, "
        "`kubectl describe hpostudy quickstart`.\n"
        "Stop it all with `make testbed-down`."
    )


if __name__ == "__main__":
    main()
