"""The operator's handle on one study's Optuna storage.

Optuna's own counting reads every trial (and its in-process cache keeps every finished trial it
has read), so everything the operator does per event — counts, running trials, the best trial —
is a small SQL query on Optuna's schema (unchanged since Optuna 3.2) whose cost does not grow with
finished trials. Only the sampler's `ask` reads the history, as it must.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from hpo_operator import metrics, search
from hpo_operator.contract import ATTEMPT_ATTR, CHECKPOINT_ATTR, FAIL_REASON_ATTR, IMPORTED_ATTR
from hpo_operator.models import HpoStudySpec

OUTCOMES_ATTR = "hpo:outcomes"  # per trial: the verdict of each attempt, so retries survive restarts
QUEUE_EVICTIONS_ATTR = "hpo:queue_evictions"  # per trial: {attempt: times its queue evicted that attempt's Job}
PREEMPTIONS_ATTR = "hpo:preemptions"  # per study: preemptions of running trials, by the cluster or a queue
PREEMPTION_OUTCOMES = ("preempted", "lost")  # the outcomes (outcomes.PREEMPTIONS) counted as preemptions
WARM_START_ATTR = "hpo:warm_start_enqueued"  # per study: how many warm-start sets are queued (True: all, formerly)


@dataclass(frozen=True)
class Counts:
    running: int = 0
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    queued: int = 0  # Optuna's WAITING: enqueued (warm start), not yet asked
    preemptions: int = 0  # running trials stopped from outside (the cluster, a queue) and resumed, in all

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed

    @property
    def created(self) -> int:
        """Trials that exist beyond the queue: the ones counted against the budget."""
        return self.running + self.finished


@dataclass(frozen=True)
class RunningTrial:
    trial_id: int
    number: int
    checkpoint_path: str | None = None
    checkpoint_step: int | None = None
    outcomes: tuple[str, ...] = ()  # the verdict of each earlier attempt
    heartbeat_age: float | None = None  # seconds since its pod last recorded a heartbeat (database clock)
    queue_evictions: dict[str, int] = field(default_factory=dict)  # per attempt: times its queue evicted it


@dataclass(frozen=True)
class FinishedTrial:
    number: int
    values: tuple[float, ...]
    params: dict[str, Any] = field(default_factory=dict)


def advance_attempt(storage: RDBStorage, trial_id: int, attempt: int) -> None:
    """Name ``attempt`` as the one that may report the trial (`ATTEMPT_ATTR`): the fence of earlier attempts.

    A pod tells its outcome holding this row locked (`hpo_trial.attach.fence`) and only if it still
    names its own attempt, so this write waits for a tell in progress and, once done, refuses every
    later one of an earlier attempt. It is a plain UPDATE of the row: Optuna's upsert would also
    share-lock the trial's row (a foreign-key check), which the pod's tell needs while it holds this
    one. The first write of a trial (its attempt 0, before any pod exists) inserts the row.
    """
    value = json.dumps(attempt)
    with storage.engine.begin() as connection:
        updated = connection.execute(
            sqlalchemy.text(
                "UPDATE trial_system_attributes SET value_json = :value WHERE trial_id = :trial_id AND `key` = :key"
            ),
            {"value": value, "trial_id": trial_id, "key": ATTEMPT_ATTR},
        ).rowcount
    if not updated:
        storage.set_trial_system_attr(trial_id, ATTEMPT_ATTR, attempt)


def open_storage(url: str, connect_args: dict[str, Any]) -> RDBStorage:
    """The study's storage as its own user (the admin made the tables: no DDL here).

    ``connect_args`` (`database.connect_args`) bound every statement's time, refuse clear-text
    passwords and carry the TLS context. Connections are recycled well below MySQL's wait_timeout;
    pre-ping survives server restarts.
    """
    storage = RDBStorage(
        url,
        engine_kwargs={
            "pool_pre_ping": True,
            "pool_recycle": 900,
            "pool_size": 2,
            "max_overflow": 4,
            "connect_args": connect_args,
        },
        skip_table_creation=True,
    )
    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", _count_statement)
    return storage


def _count_statement(*_: Any) -> None:
    metrics.SQL_STATEMENTS.inc()


class StudyStore:
    """One study's trials, read cheaply and written through Optuna."""

    def __init__(self, url: str, connect_args: dict[str, Any], study_name: str) -> None:
        self.storage = open_storage(url, connect_args)
        self.study_name = study_name
        self.study_id = self.storage.get_study_id_from_name(study_name)
        self._study: optuna.Study | None = None
        self._sampler_config: dict[str, Any] | None = None

    @staticmethod
    def create(url: str, connect_args: dict[str, Any], study_name: str, spec: HpoStudySpec) -> None:
        """Create the Optuna study (idempotent)."""
        storage = open_storage(url, connect_args)
        try:
            study = optuna.create_study(
                storage=storage,
                study_name=study_name,
                load_if_exists=True,
                directions=[d.value for d in spec.objective.directions],
            )
            if spec.objective.metrics and study.metric_names is None:
                study.set_metric_names(spec.objective.metrics)
        finally:
            storage.engine.dispose()

    def enqueue_warm_start(self, spec: HpoStudySpec) -> int:
        """Queue the warm-start sets the budget has room for, each once; how many are queued in all.

        Sets beyond `budget.trials` are not queued (they would stay WAITING for ever); raising the
        budget later queues them then.
        """
        wanted = min(len(spec.warm_start), spec.budget.trials)
        done = self.storage.get_study_system_attrs(self.study_id).get(WARM_START_ATTR, 0)
        done = len(spec.warm_start) if done is True else int(done or 0)
        if wanted > done:
            study = optuna.load_study(study_name=self.study_name, storage=self.storage)
            for params in spec.warm_start[done:wanted]:
                study.enqueue_trial(params, skip_if_exists=True)
            self.storage.set_study_system_attr(self.study_id, WARM_START_ATTR, wanted)
        return max(done, wanted)

    def study(self, spec: HpoStudySpec) -> optuna.Study:
        """The optuna.Study used to ask, rebuilt when the spec's sampler changes."""
        if self._study is None or self._sampler_config != search.sampler_config(spec):
            self._sampler_config = search.sampler_config(spec)
            self._study = optuna.load_study(
                study_name=self.study_name,
                storage=self.storage,
                sampler=search.sampler(spec),
                pruner=search.pruner(spec),
            )
        return self._study

    def close(self) -> None:
        self._study = None
        self.storage.engine.dispose()

    def _query(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        with self.storage.engine.connect() as connection:
            result = connection.execute(sqlalchemy.text(sql), {"study_id": self.study_id, **params})
            return [tuple(row) for row in result]

    def counts(self) -> Counts:
        rows = self._query("SELECT state, COUNT(*) FROM trials WHERE study_id = :study_id GROUP BY state")
        by_state = {str(state): int(n) for state, n in rows}
        return Counts(
            running=by_state.get("RUNNING", 0),
            complete=by_state.get("COMPLETE", 0),
            pruned=by_state.get("PRUNED", 0),
            failed=by_state.get("FAIL", 0),
            queued=by_state.get("WAITING", 0),
            preemptions=self.preemptions(),
        )

    def imported_counts(self) -> tuple[int, int]:
        """Imported trials (marked `IMPORTED_ATTR`), and how many of them are FAIL: read once, when an import ends."""
        rows = self._query(
            "SELECT COUNT(*), COALESCE(SUM(t.state = 'FAIL'), 0) FROM trials t "
            "JOIN trial_system_attributes a ON a.trial_id = t.trial_id AND a.`key` = :imported "
            "WHERE t.study_id = :study_id",
            imported=IMPORTED_ATTR,
        )
        total, failed = rows[0] if rows else (0, 0)
        return int(total or 0), int(failed or 0)

    def running(self) -> list[RunningTrial]:
        """RUNNING trials with the checkpoint each last reported and their attempts' outcomes (at most M rows)."""
        rows = self._query(
            "SELECT t.trial_id, t.number, a.value_json, o.value_json, TIMESTAMPDIFF(SECOND, h.heartbeat, NOW()), "
            "e.value_json FROM trials t "
            "LEFT JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.`key` = :checkpoint "
            "LEFT JOIN trial_system_attributes o ON o.trial_id = t.trial_id AND o.`key` = :outcomes "
            "LEFT JOIN trial_system_attributes e ON e.trial_id = t.trial_id AND e.`key` = :evictions "
            "LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
            "WHERE t.study_id = :study_id AND t.state = 'RUNNING' ORDER BY t.number",
            checkpoint=CHECKPOINT_ATTR,
            outcomes=OUTCOMES_ATTR,
            evictions=QUEUE_EVICTIONS_ATTR,
        )
        trials = []
        for trial_id, number, checkpoint_json, outcomes_json, heartbeat_age, evictions_json in rows:
            checkpoint = json.loads(checkpoint_json) if checkpoint_json else {}
            trials.append(
                RunningTrial(
                    trial_id=trial_id,
                    number=number,
                    checkpoint_path=checkpoint.get("path"),
                    checkpoint_step=checkpoint.get("step"),
                    outcomes=tuple(json.loads(outcomes_json)) if outcomes_json else (),
                    heartbeat_age=None if heartbeat_age is None else float(heartbeat_age),
                    queue_evictions=json.loads(evictions_json) if evictions_json else {},
                )
            )
        return trials

    def preemptions(self) -> int:
        """Preemptions of the study's running trials so far (one indexed row)."""
        rows = self._query(
            "SELECT value_json FROM study_system_attributes WHERE study_id = :study_id AND `key` = :key",
            key=PREEMPTIONS_ATTR,
        )
        return int(json.loads(rows[0][0])) if rows else 0

    def state_of(self, number: int) -> TrialState | None:
        rows = self._query("SELECT state FROM trials WHERE study_id = :study_id AND number = :number", number=number)
        return TrialState[str(rows[0][0])] if rows else None

    def best(self) -> FinishedTrial | None:
        """The best COMPLETE trial of a single-objective study (one indexed query and one trial read)."""
        try:
            trial = self.storage.get_best_trial(self.study_id)
        except ValueError:  # no complete trial yet
            return None
        return FinishedTrial(trial.number, tuple(trial.values or ()), dict(trial.params))

    def finished_trial(self, number: int) -> FinishedTrial | None:
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        trial = self.storage.get_trial(trial_id)
        if trial.state is not TrialState.COMPLETE or not trial.values:
            return None
        return FinishedTrial(trial.number, tuple(trial.values), dict(trial.params))

    def complete_values(self) -> list[FinishedTrial]:
        """Every COMPLETE trial's values (multi-objective start-up only: the Pareto front is then kept)."""
        rows = self._query(
            "SELECT t.number, v.objective, v.value FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id "
            "WHERE t.study_id = :study_id AND t.state = 'COMPLETE' ORDER BY t.number, v.objective"
        )
        values: dict[int, list[float]] = {}
        for number, _objective, value in rows:
            values.setdefault(number, []).append(float(value))
        return [FinishedTrial(number, tuple(v)) for number, v in values.items()]

    def ask(self, spec: HpoStudySpec, declared: dict[str, BaseDistribution]) -> optuna.Trial:
        """A new RUNNING trial: the next queued (warm-start) one first, else sampled by the sampler."""
        study = self.study(spec)
        cpu_start = time.thread_time()
        with metrics.ASK_LATENCY.time():
            trial = study.ask(declared)
        metrics.ASK_CPU.inc(time.thread_time() - cpu_start)
        return trial

    def begin_attempt(self, trial_id: int, number: int, attempt: int, check: bool = False) -> bool:
        """Name ``attempt`` the one that may report the trial (fencing earlier ones); False if the trial finished.

        With ``check``, the trial's state is read again after the fence: an earlier attempt that was
        thought lost may have told its outcome just before (the fence waits for a tell in progress).
        """
        try:
            advance_attempt(self.storage, trial_id, attempt)
        except RuntimeError:  # Optuna refuses to write a finished trial's attributes
            return False
        return not check or self.state_of(number) is TrialState.RUNNING

    def fail_asked_from(self, number: int, reason: str) -> list[int]:
        """Fail the RUNNING trials numbered ``number`` and above: an ask that raised left them half made."""
        rows = self._query(
            "SELECT number FROM trials WHERE study_id = :study_id AND state = 'RUNNING' AND number >= :number",
            number=number,
        )
        for (found,) in rows:
            self.fail(int(found), reason)
        return [int(found) for (found,) in rows]

    def record_outcome(self, trial: RunningTrial, attempt: int, outcome: str) -> list[str]:
        """Record attempt `attempt`'s outcome (idempotent: a repeated pass rewrites the same slot).

        A preemption is also counted in the study's preemptions, once: in the same transaction as
        the slot's first write of it.
        """
        with self.storage.engine.begin() as connection:
            stored = self._trial_attr(connection, trial.trial_id, OUTCOMES_ATTR)
            outcomes = list(stored if isinstance(stored, list) else trial.outcomes)
            outcomes += [""] * (attempt + 1 - len(outcomes))
            counted = outcome in PREEMPTION_OUTCOMES and outcomes[attempt] not in PREEMPTION_OUTCOMES
            outcomes[attempt] = outcome
            self._write_trial_attr(connection, trial.trial_id, OUTCOMES_ATTR, outcomes)
            if counted:
                self._add_preemptions(connection, 1)
        return outcomes

    def record_queue_evictions(self, trial: RunningTrial, attempt: int, evictions: int) -> int:
        """Record that the queue has evicted attempt ``attempt``'s Job ``evictions`` times in all (Kueue's own
        count, kept for the Job's life); return how many of them are new, each counted once as a preemption."""
        with self.storage.engine.begin() as connection:
            stored = self._trial_attr(connection, trial.trial_id, QUEUE_EVICTIONS_ATTR)
            per_attempt = dict(stored) if isinstance(stored, dict) else {}
            new = evictions - int(per_attempt.get(str(attempt), 0))
            if new <= 0:
                return 0
            per_attempt[str(attempt)] = evictions
            self._write_trial_attr(connection, trial.trial_id, QUEUE_EVICTIONS_ATTR, per_attempt)
            self._add_preemptions(connection, new)
        return new

    @staticmethod
    def _trial_attr(connection: sqlalchemy.Connection, trial_id: int, key: str) -> Any:
        """A trial's system attribute, its row locked until the transaction ends (None when unset)."""
        value = connection.execute(
            sqlalchemy.text(
                "SELECT value_json FROM trial_system_attributes WHERE trial_id = :trial_id AND `key` = :key FOR UPDATE"
            ),
            {"trial_id": trial_id, "key": key},
        ).scalar()
        return json.loads(value) if value else None

    @staticmethod
    def _write_trial_attr(connection: sqlalchemy.Connection, trial_id: int, key: str, value: Any) -> None:
        connection.execute(
            sqlalchemy.text(
                "INSERT INTO trial_system_attributes (trial_id, `key`, value_json) VALUES (:trial_id, :key, :value) "
                "ON DUPLICATE KEY UPDATE value_json = VALUES(value_json)"
            ),
            {"trial_id": trial_id, "key": key, "value": json.dumps(value)},
        )

    def _add_preemptions(self, connection: sqlalchemy.Connection, count: int) -> None:
        connection.execute(
            sqlalchemy.text(
                "INSERT INTO study_system_attributes (study_id, `key`, value_json) VALUES (:study_id, :key, :count) "
                "ON DUPLICATE KEY UPDATE value_json = CAST(value_json AS UNSIGNED) + :count"
            ),
            {"study_id": self.study_id, "key": PREEMPTIONS_ATTR, "count": count},
        )

    def fail(self, number: int, reason: str) -> None:
        """Mark a trial FAIL with its reason, unless its pod already told a result."""
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        with contextlib.suppress(RuntimeError):  # already finished: the pod's own result stands
            self.storage.set_trial_system_attr(trial_id, FAIL_REASON_ATTR, reason[:1000])
            self.storage.set_trial_state_values(trial_id, TrialState.FAIL)


def is_better(values: tuple[float, ...], than: tuple[float, ...], minimize: list[bool]) -> bool:
    """Pareto dominance: at least as good in every objective and better in one."""
    pairs = list(zip(values, than, minimize, strict=True))
    as_good = all((a <= b) if lower else (a >= b) for a, b, lower in pairs)
    return as_good and any((a < b) if lower else (a > b) for a, b, lower in pairs)


def pareto_front(trials: list[FinishedTrial], minimize: list[bool]) -> list[FinishedTrial]:
    finite = [t for t in trials if all(math.isfinite(v) for v in t.values)]
    return [t for t in finite if not any(is_better(o.values, t.values, minimize) for o in finite)]
