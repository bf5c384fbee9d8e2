"""The ``hpo-trial`` command: the entry point of every trial pod.

Reads the flags and the environment the operator set, runs the assigned trial
(:func:`hpo_trial.runtime.run`), writes the termination message and exits with the outcome's code.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys

from hpo_trial.contract import ASSIGNMENT_ENV, OBJECTIVE_ENV, QUICK_SCAN_ENV, STORAGE_URL_ENV, TERMINATION_LOG_ENV
from hpo_trial.interrupt import SignalGuard
from hpo_trial.logs import configure_logging
from hpo_trial.outcome import DEFAULT_TERMINATION_LOG, write_termination_message
from hpo_trial.runtime import Settings, run

__all__ = ["main"]

_logger = logging.getLogger("hpo_trial")


def main(argv: list[str] | None = None) -> None:
    """Run the trial the operator assigned to this pod and exit with its outcome's code."""
    parser = argparse.ArgumentParser(
        prog="hpo-trial",
        description="Run the objective for the trial the operator assigned (HPO_ASSIGNMENT, HPO_STORAGE_URL) "
        "and tell the study its outcome.",
    )
    parser.add_argument(
        "--objective",
        metavar="MODULE:FUNCTION",
        help=f"the objective to run (default: ${OBJECTIVE_ENV}, then the assignment's, then the digits workload)",
    )
    parser.add_argument(
        "--quick-scan",
        action="store_true",
        default=os.environ.get(QUICK_SCAN_ENV, "") not in {"", "0", "false", "False"},
        help=f"train the default workload on a small subset (also ${QUICK_SCAN_ENV}=1)",
    )
    parser.add_argument(
        "--termination-log",
        metavar="PATH",
        default=os.environ.get(TERMINATION_LOG_ENV, DEFAULT_TERMINATION_LOG),
        help=f"where to write the one-line outcome (default: ${TERMINATION_LOG_ENV} or {DEFAULT_TERMINATION_LOG})",
    )
    args = parser.parse_args(argv)
    storage_url = os.environ.get(STORAGE_URL_ENV)
    configure_logging(secret_urls=[storage_url] if storage_url else [])
    settings = Settings(
        storage_url=storage_url,
        assignment=os.environ.get(ASSIGNMENT_ENV),
        objective_flag=args.objective,
        objective_env=os.environ.get(OBJECTIVE_ENV),
        quick_scan=args.quick_scan,
    )
    with SignalGuard() as guard:
        outcome = run(settings, guard)
        guard.defer()
        write_termination_message(args.termination_log, outcome)
        if guard.received is not None and outcome.word != "INTERRUPTED":
            _logger.info("a stop signal arrived while the outcome was recorded; the trial is finished regardless")
    # The interpreter's last garbage collection walks every object Optuna, SQLAlchemy and NumPy made: 0.2 s
    # of CPU after the outcome is stored, and the operator refills the slot only when the pod has ended.
    # Frozen objects are left to the OS; atexit handlers and ordinary finalizers still run.
    gc.freeze()
    sys.exit(int(outcome.exit_code))


if __name__ == "__main__":
    main()
