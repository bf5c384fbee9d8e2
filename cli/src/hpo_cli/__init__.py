"""``kubectl hpo``: look at hpo-operator studies from a terminal, as the person running ``kubectl``.

A kubectl plugin (the console script ``kubectl-hpo`` on ``PATH``). It uses the caller's own
kubeconfig and RBAC, reads a study's storage URL from its read-only Secret
(``<study>-storage-readonly``, else ``<study>-storage``; never the operator's admin) and then talks
to the study's Optuna database directly, as Optuna itself would.

Why it depends on the trial runtime (``hpo-trial``) and not on the operator (``hpo-operator``):
the export must be the very code path that snapshots use (:func:`hpo_trial.snapshots.export`),
and the runtime already owns the storage opener (bounded timeouts, no clear-text password) and the
contract names (``fail_reason``, ``hpo:attempt``). The operator distribution would bring Kopf and
its whole control loop into a user's laptop for a handful of label names, so those names are
repeated in :mod:`hpo_cli.names` and ``tests/unit/test_cli_names.py`` checks them against
``hpo_operator.models``, as ``tests/unit/test_contract.py`` does for the runtime and the operator.

Modules, one per concern: :mod:`~hpo_cli.studies` (finding a study, its URL and its database
through the Kubernetes API), :mod:`~hpo_cli.tables` (trial and study rows as pure functions),
:mod:`~hpo_cli.plots`, :mod:`~hpo_cli.export`, :mod:`~hpo_cli.logs`, :mod:`~hpo_cli.dashboard`,
and :mod:`~hpo_cli.__main__` (the argument parser).
"""
