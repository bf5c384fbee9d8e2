"""``kubectl hpo``: the command line, one subcommand per question a person asks of a study.

Installed as ``kubectl-hpo`` on ``PATH``, kubectl runs it as ``kubectl hpo ...``. Every subcommand
accepts ``-n/--namespace``, ``--context`` and ``--kubeconfig`` after its name, as kubectl's own do;
errors are one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Sequence
from pathlib import Path

import optuna
import urllib3
import yaml
from optuna.trial import TrialState

from hpo_cli import dashboard, logs, plots
from hpo_cli.errors import CliError
from hpo_cli.export import export_study
from hpo_cli.studies import Cluster, Study, cluster
from hpo_cli.tables import (
    best_document,
    dumps,
    parse_states,
    render_csv,
    render_table,
    sort_rows,
    study_row,
    trial_json,
    trial_rows,
    trial_table,
)

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", help="the study's namespace (default: the current context's)")
    common.add_argument("--context", help="the kubeconfig context to use")
    common.add_argument("--kubeconfig", help="the kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--db-address",
        metavar="HOST:PORT",
        help="reach the study's database here instead of at its URL's address (a tunnel of your own)",
    )
    top = argparse.ArgumentParser(
        prog="kubectl hpo", description="Look at hpo-operator studies (HpoStudy) with your own kubeconfig and RBAC."
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = sub.add_parser("list", parents=[common], help="studies: phase, progress, best value, running, age")
    listing.add_argument("-A", "--all-namespaces", action="store_true", help="the studies of every namespace")

    trials = sub.add_parser("trials", parents=[common, database], help="one row per trial")
    trials.add_argument("study")
    trials.add_argument("--state", action="append", default=[], help="only these states (complete,pruned,fail,...)")
    trials.add_argument("--sort", choices=["number", "value"], default="number", help="row order (value: best first)")
    trials.add_argument("-o", "--output", choices=["table", "wide", "json", "csv"], default="table")

    best = sub.add_parser("best", parents=[common, database], help="the best trial, or the Pareto front")
    best.add_argument("study")
    best.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")

    plot = sub.add_parser("plot", parents=[common, database], help="one of Optuna's figures, to HTML or PNG")
    plot.add_argument("study")
    plot.add_argument("--kind", choices=list(plots.KINDS), default="history")
    plot.add_argument("-o", "--output", type=Path, help="file.html (default: <study>-<kind>.html) or file.png")
    plot.add_argument("--width", type=int, default=1200, help="pixels (default 1200)")
    plot.add_argument("--height", type=int, default=700, help="pixels (default 700)")
    plot.add_argument("--objective", type=int, default=0, help="multi-objective: which objective to show")

    export = sub.add_parser("export", parents=[common, database], help="the study as an SQLite file")
    export.add_argument("study")
    export.add_argument("-o", "--output", type=Path, required=True, help="the file to write (*.db)")

    log = sub.add_parser("logs", parents=[common], help="a trial pod's log")
    log.add_argument("study")
    log.add_argument("trial", type=int)
    log.add_argument("--attempt", type=int, help="which attempt (default: the latest with a pod)")
    log.add_argument("-f", "--follow", action="store_true", help="stream the log as it grows")

    board = sub.add_parser("dashboard", parents=[common, database], help="optuna-dashboard on localhost")
    board.add_argument("study")
    board.add_argument("--port", type=int, default=0, help="local port (default: a free one)")
    board.add_argument("--address", default="127.0.0.1", help="local address to bind (default 127.0.0.1)")
    return top


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the output is ours; Optuna's INFO lines are noise here
    try:
        with cluster(args.context, args.kubeconfig) as session:
            run(session, args)
    except CliError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except urllib3.exceptions.HTTPError as error:  # the API server, not the database (that is a CliError)
        reason = getattr(error, "reason", None) or error
        print(f"error: cannot reach the Kubernetes API server of your kubeconfig: {reason}", file=sys.stderr)
        sys.exit(1)
    except BrokenPipeError:  # `kubectl hpo trials x | head`
        sys.exit(0)


def run(session: Cluster, args: argparse.Namespace) -> None:
    """Carry out one subcommand (``args.command``) as the caller."""
    namespace = args.namespace or session.default_namespace()
    if args.command == "list":
        list_studies(session, namespace, bool(args.all_namespaces))
        return
    study = session.study(namespace, args.study)
    if args.command == "logs":
        logs.print_logs(session, study, args.trial, args.attempt, args.follow)
    elif args.command == "dashboard":
        storage = session.storage(study, args.db_address)
        try:
            study_id = storage.get_study_id_from_name(study.optuna_name)
        except KeyError:
            raise CliError(f'the database of study "{study.name}" holds no Optuna study yet') from None
        dashboard.serve(storage, study_id, args.address, args.port)
    elif args.command == "export":
        written = export_study(session.storage(study, args.db_address), study.optuna_name, args.output)
        print(f"wrote {written.trials} trials ({written.finished} finished) of study {study.name} to {written.path}")
        print(f'open it with: optuna.load_study(study_name="{study.optuna_name}", storage="sqlite:///{written.path}")')
    elif args.command == "trials":
        show_trials(session, study, session.load(study, args.db_address), args)
    elif args.command == "best":
        show_best(study, session.load(study, args.db_address), args.output)
    elif args.command == "plot":
        loaded = session.load(study, args.db_address)
        path = args.output or Path(f"{study.name}-{args.kind}.html")
        plots.plot(loaded, args.kind, path, args.width, args.height, args.objective)
        print(f"wrote {path} ({args.kind} of {len(loaded.trials)} trials of study {study.name})")


def list_studies(session: Cluster, namespace: str, everywhere: bool) -> None:
    found = session.studies(None if everywhere else namespace)
    if not found:
        where = "any namespace" if everywhere else f'namespace "{namespace}"'
        print(f"No studies found in {where}.", file=sys.stderr)
        return
    now = datetime.datetime.now(datetime.UTC)
    headers = ["NAME", "PHASE", "TRIALS", "RUNNING", "BEST", "AGE"]
    cells = [study_row(s, now, everywhere) for s in found]
    sys.stdout.write(render_table((["NAMESPACE"] if everywhere else []) + headers, cells))


def show_trials(session: Cluster, study: Study, loaded: optuna.Study, args: argparse.Namespace) -> None:
    try:
        states = parse_states(args.state)
    except ValueError as error:
        raise CliError(str(error)) from None
    chosen = loaded.get_trials(deepcopy=False, states=tuple(states) if states else None)
    now = datetime.datetime.now()  # Optuna's times are naive local times
    rows = sort_rows(trial_rows(chosen, session.placements(study), now), args.sort, loaded.directions)
    if args.output == "json":
        sys.stdout.write(dumps([trial_json(row) for row in rows]))
    elif args.output == "csv":
        sys.stdout.write(render_csv(rows))
    else:
        sys.stdout.write(render_table(*trial_table(rows, wide=args.output == "wide")))


def show_best(study: Study, loaded: optuna.Study, output: str) -> None:
    multi = len(loaded.directions) > 1
    if not loaded.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise CliError(f'study "{study.name}" has no COMPLETE trial yet')
    document = best_document(
        loaded.directions, None if multi else loaded.best_trial, loaded.best_trials if multi else []
    )
    sys.stdout.write(dumps(document) if output == "json" else yaml.safe_dump(document, sort_keys=False))


if __name__ == "__main__":
    main()
