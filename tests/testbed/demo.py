"""`make demo`: the quickstart study on the testbed, with progress, ending with the best parameters.

Leaves the testbed, the operator and the study running so the user can look around.
"""

from __future__ import annotations

import json
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


def main() -> None:
    print(kubectl("apply", "-f", str(QUICKSTART)), end="", flush=True)
    print("progress (kubectl get hpostudies quickstart):", flush=True)
    shown, deadline = "", time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        line = kubectl("get", "hpostudies", "quickstart", "--no-headers").strip()
        progress = line.rsplit(None, 1)[0]  # everything but AGE, which changes every second
        if progress != shown:
            if not shown:
                print("  " + kubectl("get", "hpostudies", "quickstart").splitlines()[0], flush=True)
            print("  " + line, flush=True)
            shown = progress
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
    print(
        "\nEverything keeps running: `source .testbed/env`, then e.g. `kubectl get hpostudies`, "
        "`kubectl describe hpostudy quickstart`, `kubectl logs -l hpo.dev/study=quickstart`.\n"
        "Stop it all with `make testbed-down`."
    )


if __name__ == "__main__":
    main()
