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
    return subprocess.run([str(layout.BIN / "kubectl"), "--kubeconfig", str(cluster.KUBECONFIG), *args],
                          check=True, capture_output=True, text=True).stdout


def main() -> None:
    print(kubectl("apply", "-f", str(QUICKSTART)), end="", flush=True)
    print("progress (kubectl get hpostudies quickstart):", flush=True)
    shown, deadline = "", time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        line = kubectl("get", "hpostudies", "quickstart", "--no-headers")
        if line != shown:
            if not shown:
                print("  " + kubectl("get", "hpostudies", "quickstart").splitlines()[0], flush=True)
            print("  " + line.strip(), flush=True)
            shown = line
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
    print("\nEverything keeps running: `source .testbed/env`, then e.g. `kubectl get hpostudies`, "
          "`kubectl describe hpostudy quickstart`, `kubectl logs -l hpo.dev/study=quickstart`.\n"
          "Stop it all with `make testbed-down`.")


if __name__ == "__main__":
    main()
