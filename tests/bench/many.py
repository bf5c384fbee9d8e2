"""Item 3: many studies at once. S studies of 10 trials (a 2-s objective, parallelism 2) are applied
together; all must finish. Reports the total wall time and the operator's peak memory over it
(the kernel's VmHWM, reset before the studies are applied)."""

from __future__ import annotations

import time

from tests.bench import harness
from tests.bench.report import Figure, progress
from tests.studies import Studies

TRIALS = 10
PARALLELISM = 2
SLEEP_S = 2.0


def run(quick: bool) -> list[Figure]:
    count = 10 if quick else 20
    kube = harness.api()
    pid = harness.operator_pid()
    with harness.namespace(kube, "many") as namespace:
        studies = Studies(kube, namespace)
        names = [f"study-{i:02d}" for i in range(count)]
        progress(f"item 3: {count} studies of {TRIALS} trials ({SLEEP_S:g} s, parallelism {PARALLELISM}) at once")
        harness.reset_peak_memory(pid)
        started = time.time()
        for name in names:
            studies.create(name, harness.study_spec(TRIALS, PARALLELISM, SLEEP_S))
        finished = harness.await_studies(studies, names, timeout=count * TRIALS * SLEEP_S + 600)
        peak_mb = harness.peak_memory_mb(pid)
        succeeded = sum(studies.get(name)["status"]["phase"] == "Succeeded" for name in names)
    return [
        Figure("studies_n", succeeded, f"all {count} finish"),
        Figure("studies_wall_s", finished - started, "-"),
        Figure("operator_peak_rss_mb", peak_mb, "-"),
    ]
