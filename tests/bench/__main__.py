"""`make bench`: every benchmark item in one run, one table, and `.bench/latest.json`.

`make bench QUICK=1` (`--quick`) runs the reduced version (item 1 with N=48, item 2 with 20
completions, item 3 with 10 studies, item 4 with 10 seeds, item 6 with 12 trials). Item 6 installs Kueue
(`make kueue-up`) if it is missing, and removes it again after. The items that need no cluster run
first, while the machine is otherwise idle. The README's benchmark section says how to read them.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from tests.bench import growth, many, queue, report, search_quality, slots, workload
from tests.testbed import layout

LATEST = layout.ROOT / ".bench" / "latest.json"
ITEMS: dict[str, Callable[[bool], list[report.Figure]]] = {
    "workload": workload.run,
    "search": search_quality.run,
    "slots": slots.run,
    "growth": growth.run,
    "many": many.run,
    "queue": queue.run,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the reduced run (about 20 minutes)")
    parser.add_argument(
        "--only",
        choices=sorted(ITEMS),
        action="append",
        help="run only these items (repeatable); latest.json then holds only their keys",
    )
    args = parser.parse_args()
    began = time.monotonic()
    figures: list[report.Figure] = []
    for name, item in ITEMS.items():
        if args.only and name not in args.only:
            continue
        started = time.monotonic()
        figures += item(args.quick)
        report.progress(f"{name} done in {time.monotonic() - started:.0f}s")
    report.write(LATEST, figures, args.quick)
    print(report.table(figures))
    print(f"\n{len(figures)} figures in {time.monotonic() - began:.0f}s; written to {LATEST.relative_to(layout.ROOT)}")


if __name__ == "__main__":
    main()
