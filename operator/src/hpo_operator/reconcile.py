"""One pass over one study: read what is, let the policies decide, write what they decided.

The study's daemon (handlers.py) runs a pass whenever one of its trial pods or Jobs changes, and
every few seconds regardless. A pass reads the state it needs afresh (RUNNING trials, counts and
heartbeats from the database, the study's live pods and Jobs from the operator's index), so a pass
can be repeated, or the operator killed between any two steps, without losing or duplicating a
trial: a RUNNING trial without a Job gets one, a Job whose name exists is found, not made twice.

The decisions are pure functions of what was read, each in the module that owns its concern:
`validation` (is the spec runnable), `importing.decide` (what the import Job's end means: no trial
is dispatched before an `importFrom` study is imported), `outcomes.decide` (what happened to each
trial's latest attempt and what to do next), `dispatch.plan` (how many trials to start),
`snapshots.decide` (when to snapshot the study, what a snapshot Job reported), `status.end_of_study`
and `status.decide` (has the study ended, its phase and conditions) and `status.transitions`
(which Events a change calls for). This module only reads, calls them, and carries out what they
say through `kube`, `storage` and `provisioning`.
"""

from __future__ import annotations

import datetime
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import optuna
import sqlalchemy.exc
from kubernetes.client import ApiException

from hpo_operator import (
    dispatch,
    events,
    importing,
    kube,
    metrics,
    outcomes,
    provisioning,
    queueing,
    search,
    snapshots,
    validation,
)
from hpo_operator import status as st
from hpo_operator.models import DISPATCHED_AT_ANNOTATION, EndPolicy, HpoStudySpec, Phase
from hpo_operator.outcomes import Action, Decision, JobSummary, PodSummary, TrialView
from hpo_operator.provisioning import Provisioned, ProvisioningProblem
from hpo_operator.redaction import redact
from hpo_operator.settings import Settings
from hpo_operator.storage import FinishedTrial, RunningTrial, StudyStore, pareto_front

_logger = logging.getLogger(__name__)

DATABASE_ERRORS = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    sqlalchemy.exc.DisconnectionError,
    optuna.exceptions.StorageInternalError,
)
"""What the study's database raises while it cannot be used (down, unreachable, timing out)."""
TERMINAL = (Phase.SUCCEEDED.value, Phase.FAILED.value)
STARTS = (Action.START, Action.REQUEUE, Action.RETRY)
WAITING_ORDER = [
    outcomes.Waiting.QUEUED,
    outcomes.Waiting.UNSCHEDULABLE,
    outcomes.Waiting.PAUSED,
    outcomes.Waiting.STARTING,
]
"""Which waiting trial's reason the TrialsWaiting condition gives: the most telling first."""


class StudyProblem(Exception):
    """A pass could not finish (database unreachable, ...); its status says so and the pass is retried."""


class JobRefused(Exception):
    """The API server refused a trial Job (a quota, an admission webhook, an invalid template)."""


@dataclass(frozen=True)
class Observed:
    """The study object as this pass sees it."""

    raw_spec: object
    generation: int | None
    status: dict[str, Any]
    uid: str

    @classmethod
    def of(cls, body: dict[str, Any]) -> Observed:
        metadata = body.get("metadata") or {}
        status = body.get("status")
        return cls(
            body.get("spec"),
            metadata.get("generation"),
            status if isinstance(status, dict) else {},
            str(metadata.get("uid") or ""),
        )


@dataclass
class StudyLoop:
    """State one study keeps between passes: only caches, all rebuilt from scratch after a restart."""

    namespace: str
    name: str
    settings: Settings
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = field(default_factory=lambda: _logger)
    store: StudyStore | None = None
    provisioned: Provisioned | None = None
    written: dict[str, Any] | None = None  # the status as this process last wrote it
    parsed: tuple[int | None, HpoStudySpec | None, list[validation.Problem]] | None = None  # validation of one
    # generation (a spec changes only with its generation; a grid sampler is built to check it)
    checked: tuple[int | None, list[validation.Problem], str] | None = None  # API checks of one generation
    idle_generation: int | None = None  # finished and idle at this generation: no pass until the spec changes
    best: FinishedTrial | None = None
    best_as_of: int | None = None  # the COMPLETE count `best` was read at: it changes only when that grows
    pareto: list[FinishedTrial] | None = None
    previous_running: set[int] = field(default_factory=set)
    events: events.Recorder | None = None
    dry_run_unavailable: bool = False
    refused: str = ""  # why the API server refused this pass's last trial Job
    snapshot_tried: int = 0  # the most finished trials a snapshot Job was made for (by this process)

    @property
    def secret_name(self) -> str:
        return provisioning.secret_names(self.name)[0]

    @property
    def ref(self) -> dispatch.TrialRef:
        """What the study's Jobs need to know of it: where it lives, its Secret, whether its server uses TLS."""
        tls = self.provisioned.tls if self.provisioned else False
        return dispatch.TrialRef(self.namespace, self.name, self.name, self.secret_name, tls)

    def close(self) -> None:
        """Let go of the study's database connections (a finished study keeps none)."""
        if self.store is not None:
            self.store.close()
            self.store = None

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        if self.events is not None:
            self.events(reason, message, warning)

    # -- one pass -----------------------------------------------------------------------------------

    def run(self, body: dict[str, Any], pods: list[PodSummary], jobs: list[JobSummary]) -> None:
        """One reconcile pass; raises StudyProblem when it must be retried later (its status says why)."""
        study = Observed.of(body)
        if self.events is None or self.events.study.uid != study.uid:
            self.events = events.Recorder(
                events.StudyRef(self.namespace, self.name, study.uid), kube.create_event, self.logger
            )
        previous = self.written if self.written is not None else study.status
        if self.idle(study, previous, pods, jobs):
            return
        spec, problems, reason = self.validate(body, study)
        if spec is None:
            self.close()
            self.write(
                study,
                previous,
                st.Facts(st.rejected(_listed(problems), reason), _total(study.raw_spec), study.generation),
            )
            return
        try:
            store = self.open(body, spec)
        except DATABASE_ERRORS as error:
            problem = ProvisioningProblem(
                f"cannot use the study's database: {_driver_message(error)}; retrying", st.REASON_DATABASE_UNAVAILABLE
            )
            self.write(
                study,
                previous,
                st.Facts(
                    st.database_unready(problem.reason, str(problem), previous.get("phase")),
                    spec.budget.trials,
                    study.generation,
                ),
            )
            raise StudyProblem(str(problem)) from error
        except ProvisioningProblem as problem:
            self.write(
                study,
                previous,
                st.Facts(
                    st.database_unready(problem.reason, str(problem), previous.get("phase")),
                    spec.budget.trials,
                    study.generation,
                ),
            )
            raise StudyProblem(str(problem)) from problem
        try:
            self.step(body, study, previous, spec, store, pods, jobs)
        except DATABASE_ERRORS as error:
            message = f"cannot use the study's database: {_driver_message(error)}; retrying"
            self.write(
                study,
                previous,
                st.Facts(
                    st.database_unready(st.REASON_DATABASE_UNAVAILABLE, message, previous.get("phase")),
                    spec.budget.trials,
                    study.generation,
                ),
            )
            raise StudyProblem(message) from error

    def idle(self, study: Observed, previous: dict[str, Any], pods: list[PodSummary], jobs: list[JobSummary]) -> bool:
        """A finished study costs nothing until its spec changes: no query, no connection, no API call.

        Its daemon stays (a coroutine that sleeps), so an edit (a larger budget) continues it at once.
        A snapshot Job still there keeps it awake until its result is recorded.
        """
        finished = (
            previous.get("phase") in TERMINAL
            and _condition(previous, st.FINISHED) == "True"
            and _condition(previous, st.VALIDATED) == "True"
        )
        now = datetime.datetime.now(datetime.UTC)
        if not finished or any(outcomes.holds_slot(pod, now) for pod in pods) or any(j.task for j in jobs):
            self.idle_generation = None
            return False
        if self.idle_generation is None and previous.get("observedGeneration") == study.generation:
            self.idle_generation = study.generation  # after a restart: the object says it is done
        if self.idle_generation == study.generation:
            self.close()
            return True
        return False

    def validate(
        self, body: dict[str, Any], study: Observed
    ) -> tuple[HpoStudySpec | None, list[validation.Problem], str]:
        """The spec if it may run; else every problem, and the Validated condition's reason."""
        if self.parsed is None or self.parsed[0] != study.generation or study.generation is None:
            spec, problems = validation.parse(study.raw_spec, validation.Limits(self.settings.max_grid_points))
            self.parsed = (study.generation, spec, problems)
        _, spec, problems = self.parsed
        if not self.settings.serves(self.namespace):
            problems = [
                validation.Problem(
                    "metadata.namespace",
                    f"the operator does not serve its own namespace "
                    f"{self.namespace}, where its admin credentials "
                    "live; create the study in another namespace",
                )
            ]
        elif spec is not None:
            problems = self.settings.policy.check(spec)
        if spec is None or problems:
            return None, problems, st.REASON_INVALID
        if (
            self.checked is None
            or self.checked[0] != study.generation
            or self.checked[2] == st.REASON_REFERENCE_MISSING
        ):  # until it exists, look again each pass
            found, reason = self.api_checks(body, spec)
            self.checked = (study.generation, found, reason)
        if self.checked[1]:
            return None, self.checked[1], self.checked[2]
        return spec, [], st.REASON_VALID

    def api_checks(self, body: dict[str, Any], spec: HpoStudySpec) -> tuple[list[validation.Problem], str]:
        """What only the API server knows: do the Secrets and claims the spec names exist, would it take the Job."""
        missing = []
        for reference in validation.references(spec):
            try:
                if reference.kind == "Secret":
                    keys = kube.secret_keys(self.namespace, reference.name)
                    problem = validation.missing_reference(
                        reference, self.namespace, keys is not None, keys or frozenset()
                    )
                elif reference.kind == "LocalQueue":
                    problem = validation.missing_reference(
                        reference, self.namespace, kube.local_queue_exists(self.namespace, reference.name)
                    )
                else:
                    problem = validation.missing_reference(
                        reference, self.namespace, kube.claim_exists(self.namespace, reference.name)
                    )
            except Exception as error:  # no permission (an older chart's RBAC), the API away: not checked
                self.logger.warning(
                    f"cannot check {reference.field} ({reference.kind} {reference.name}): "
                    f"{type(error).__name__}: {redact(str(error))[:300]}"
                )
                continue
            if problem is not None:
                missing.append(problem)
        if missing:
            return missing, st.REASON_REFERENCE_MISSING
        if self.dry_run_unavailable:
            return [], st.REASON_VALID
        ref = dispatch.TrialRef(self.namespace, self.name, self.name, self.secret_name)
        assignment = dispatch.assignment(spec, ref, 0, 0, search.sampler_config(spec, 0), search.pruner_config(spec))
        job = dispatch.build_job(spec, ref, 0, 0, assignment, self.settings.trial_image)
        try:
            refused = kube.dry_run_job(job)
        except Exception as error:  # the check is a courtesy: without it, the first real Job tells
            self.dry_run_unavailable = True
            self.logger.warning(
                f"cannot dry-run the trial Job, so the API server checks the template at the "
                f"first trial: {type(error).__name__}: {redact(str(error))[:300]}"
            )
            return [], st.REASON_VALID
        return (validation.api_problems(refused), st.REASON_INVALID) if refused is not None else ([], st.REASON_VALID)

    def open(self, body: dict[str, Any], spec: HpoStudySpec) -> StudyStore:
        """The study's storage: provisioned on the first pass after each operator start, then kept open."""
        if self.store is not None:
            return self.store
        if self.provisioned is None:
            self.provisioned = provisioning.provision(self.settings, self.namespace, self.name, spec, body)
        self.store = StudyStore(self.provisioned.url, self.provisioned.connect_args, self.name)
        return self.store

    def step(
        self,
        body: dict[str, Any],
        study: Observed,
        previous: dict[str, Any],
        spec: HpoStudySpec,
        store: StudyStore,
        pods: list[PodSummary],
        jobs: list[JobSummary],
    ) -> None:
        now = datetime.datetime.now(datetime.UTC)
        started_at = previous.get("startedAt") or st.now()
        parallelism = dispatch.parallelism(spec.budget.parallelism, spec.budget.trials, self.settings.max_parallelism)
        spec = spec.model_copy(update={"budget": spec.budget.model_copy(update={"parallelism": parallelism.value})})
        imported, just_imported = st.ImportedCounts.of(previous), ""
        if spec.import_from is not None and _condition(previous, st.IMPORTED) != "True":
            done = self.import_study(body, study, previous, spec, store, jobs, pods, started_at, now)
            if done is None:
                return  # no trial before the import has succeeded
            imported, just_imported = done
        tasks, pods_of_tasks = [j for j in jobs if j.task], [p for p in pods if p.task]  # import and snapshot Jobs
        jobs, pods = [j for j in jobs if not j.task], [p for p in pods if not p.task]  # only trials hold slots
        store.enqueue_warm_start(spec)
        counts = store.counts()
        end = st.end_of_study(
            counts.failed - (imported.failed if imported else 0),
            spec.budget.max_failed_trials,
            started_at,
            spec.budget.deadline_seconds,
            now,
        )
        rules = outcomes.Rules(
            retries=spec.budget.retries_per_trial,
            max_preemptions=spec.budget.max_preemptions_per_trial,
            start_timeout=spec.budget.start_timeout_seconds,
            lost_after=self.settings.trial_lost_seconds,
            ended=end is not None,
            stopping=spec.suspend or (end is not None and spec.end_policy is EndPolicy.KILL),
            end_reason=end.message if end else "",
        )

        latest = _latest_attempts(jobs, pods)
        self.refused = ""
        decisions: dict[int, Decision] = {}
        trials = store.running()
        for trial in trials:
            job, pod = latest.get(trial.number, (None, None))
            decision = outcomes.decide(
                TrialView(trial.number, trial.outcomes, trial.heartbeat_age, job, pod), rules, now
            )
            self.carry_out(body, spec, store, trial, job, decision)
            decisions[trial.number] = decision
        queue_messages = self.observe_queue(store, trials, latest)

        waiting = {n for n, d in decisions.items() if d.waiting is not None or d.action in STARTS}
        first_waiting = min(
            ((n, d) for n, d in decisions.items() if d.waiting is not None),
            key=lambda item: (WAITING_ORDER.index(item[1].waiting or outcomes.Waiting.STARTING), item[0]),
            default=None,
        )
        waiting_reason = first_waiting[1] if first_waiting else None
        waiting_message = waiting_reason.reason if waiting_reason else ""
        if first_waiting is not None and first_waiting[0] in queue_messages:
            waiting_message = f"trial {first_waiting[0]} {queue_messages[first_waiting[0]]}"
        live = {n for n, (_, pod) in latest.items() if pod is not None and outcomes.holds_slot(pod, now)}
        occupied = len(set(decisions) | live)
        plan = dispatch.Plan(0)
        blocked: tuple[str, str] | None = None
        if not (rules.stopping or rules.ended) and not self.refused:
            plan = dispatch.plan(
                parallelism.value,
                occupied,
                counts.created,
                spec.budget.trials,
                len(waiting),
                self.settings.max_waiting_trials,
            )
            started, sampler_error = self.dispatch(body, spec, store, plan.count, counts.created + counts.queued)
            waiting |= set(started)
            blocked = (st.REASON_SAMPLER_ERROR, sampler_error) if sampler_error else None
        if self.refused:
            blocked = (st.REASON_JOB_REFUSED, self.refused)
        self.clean_up(jobs, pods, set(decisions), live)  # after dispatch: a freed slot waits for nothing

        counts = store.counts()
        running = store.running()
        numbers = {r.number for r in running}
        waiting &= numbers
        verdict = st.decide(
            st.Progress(
                total=spec.budget.trials,
                counts=counts,
                busy=bool(numbers or live),
                waiting=len(waiting),
                suspend=spec.suspend,
                end=end,
                parallelism_capped=parallelism.capped,
                paced=plan.paced,
                waiting_reason=waiting_reason.waiting if waiting_reason else None,
                waiting_message=waiting_message,
                blocked=blocked,
                database_message=f"Optuna study {self.name} in database "
                f"{self.provisioned.database if self.provisioned else '?'}",
            )
        )
        attempts = {n: d.attempt for n, d in decisions.items()}
        checkpoint = self.checkpoint(spec, counts.finished, previous.get("checkpoint"))
        if just_imported:
            verdict = st.imported(verdict, just_imported)
        facts = st.Facts(
            verdict,
            spec.budget.trials,
            study.generation,
            counts=counts,
            waiting=len(waiting),
            parallelism=parallelism.value,
            running=running,
            attempts=attempts,
            optuna_study=self.name,
            started_at=started_at,
            checkpoint=checkpoint,
            imported=imported,
            snapshot=previous.get("snapshot"),
            sampler=spec.sampler.name.value,
        )
        pending = self.tasks(body, spec, facts, tasks, pods_of_tasks, previous)
        self.best_trials(spec, store, facts, previous)
        metrics.record_study(
            self.namespace,
            self.name,
            {
                "complete": counts.complete,
                "pruned": counts.pruned,
                "failed": counts.failed,
                "running": max(0, counts.running - len(waiting)),  # as status.trials counts them
                "waiting": len(waiting),
            },
            facts.best.values[0] if facts.best is not None else None,  # single-objective studies only
        )
        self.previous_running = numbers
        self.write(study, previous, facts)
        if verdict.phase.value in TERMINAL and not (numbers or live or pending) and _finished(verdict):
            self.idle_generation = study.generation
            self.close()

    # -- carrying out decisions ---------------------------------------------------------------------

    def carry_out(
        self,
        body: dict[str, Any],
        spec: HpoStudySpec,
        store: StudyStore,
        trial: RunningTrial,
        job: JobSummary | None,
        decision: Decision,
    ) -> None:
        number, action = trial.number, decision.action
        if action is Action.WAIT:
            return
        if decision.delete_job and job is not None:
            kube.delete_job(self.namespace, job.name)
        if action is Action.STOP:
            if decision.fail:
                store.fail(number, decision.reason)
            return
        if decision.record is not None:
            ended = decision.attempt - 1 if action in (Action.REQUEUE, Action.RETRY) else decision.attempt
            store.record_outcome(trial, ended, decision.record.value)
        if action is Action.FAIL:
            store.fail(number, decision.reason)
            metrics.TRIALS.labels(state="failed").inc()
            self.event("TrialFailed", f"trial {number}: {decision.reason}", warning=True)
            return
        if not self.start_attempt(body, spec, store, number, trial.trial_id, decision.attempt):
            return
        if action is Action.REQUEUE:
            self.event(
                "TrialRequeued",
                f"trial {number}: {decision.reason}; running it again (attempt {decision.attempt}) from its checkpoint",
            )
        elif action is Action.RETRY:
            self.event(
                "TrialRetried", f"trial {number} attempt {decision.attempt - 1}: {decision.reason}", warning=True
            )

    def start_attempt(
        self, body: dict[str, Any], spec: HpoStudySpec, store: StudyStore, number: int, trial_id: int, attempt: int
    ) -> bool:
        """Fence earlier attempts, then create this attempt's Job; False if the trial finished meanwhile."""
        if not store.begin_attempt(trial_id, number, attempt, check=attempt > 0):
            self.logger.info(f"trial {number} finished before its attempt {attempt} started")
            return False
        ref = self.ref
        assignment = dispatch.assignment(
            spec,
            ref,
            number,
            trial_id,
            search.sampler_config(spec, number),
            search.pruner_config(spec),
            attempt=attempt,
        )
        job = dispatch.build_job(spec, ref, number, attempt, assignment, self.settings.trial_image)
        job["metadata"]["annotations"] = {DISPATCHED_AT_ANNOTATION: st.now_precise()}
        try:
            kube.create_owned(job, owner=body)
        except ApiException as error:
            self.refused = (
                f"the API server refused trial {number}'s Job {job['metadata']['name']}: "
                f"{_api_message(error)}; retrying at the next pass"
            )
            self.logger.warning(self.refused)
            return False
        self.logger.info(f"trial {number} attempt {attempt}: created Job {job['metadata']['name']}")
        return True

    def dispatch(
        self, body: dict[str, Any], spec: HpoStudySpec, store: StudyStore, count: int, next_number: int
    ) -> tuple[list[int], str]:
        """Ask for and start ``count`` new trials; the trials started, and the sampler's error if it raised."""
        declared = search.distributions(spec)
        started: list[int] = []
        for _ in range(count):
            with metrics.dispatch_timer(self.namespace, self.name):
                try:
                    trial = store.ask(spec, declared)
                except DATABASE_ERRORS:
                    raise
                except Exception as error:  # the sampler, not the database: say so, and try again next pass
                    reason = f"the {spec.sampler.name.value} sampler raised {type(error).__name__}: {error}"
                    failed = store.fail_asked_from(next_number + len(started), reason)
                    self.logger.warning(f"{reason} (failed the half-made trial(s) {failed})")
                    return started, f"{reason}; retrying at the next pass"
                if not self.start_attempt(body, spec, store, trial.number, trial._trial_id, 0) and self.refused:
                    return started, ""  # it stays RUNNING without a Job: the next pass tries again
            started.append(trial.number)
            metrics.TRIALS.labels(state="started").inc()
            self.event("TrialStarted", f"trial {trial.number}: {trial.params}")
        return started, ""

    def observe_queue(
        self,
        store: StudyStore,
        trials: list[RunningTrial],
        latest: dict[int, tuple[JobSummary | None, PodSummary | None]],
    ) -> dict[int, str]:
        """Read the Workloads of the trial Jobs that go through a queue (one request): count each eviction
        Kueue made as a preemption, with an Event, and return why each suspended Job waits, by trial."""
        queued = {t.number: (t, job) for t in trials if (job := latest.get(t.number, (None, None))[0]) and job.queue}
        if not queued:
            return {}
        try:
            found = kube.workloads(self.namespace, [job.uid for _, job in queued.values()])
        except Exception as error:  # no permission (an older chart's RBAC), the API away: the Jobs still wait
            self.logger.warning(f"cannot read Kueue's Workloads: {type(error).__name__}: {redact(str(error))[:300]}")
            return {}
        workloads = {queueing.job_uid(w): w for w in found}
        messages = {}
        for number, (trial, job) in sorted(queued.items()):
            workload = workloads.get(job.uid)
            evictions = queueing.evictions(workload)
            known = trial.queue_evictions.get(str(job.attempt), 0)
            if evictions > known and store.record_queue_evictions(trial, job.attempt, evictions):
                step = f" (step {trial.checkpoint_step})" if trial.checkpoint_step is not None else ""
                self.event(
                    "TrialPreempted",
                    f"trial {number}: LocalQueue {job.queue} took its place back "
                    f"({queueing.eviction_reason(workload)}); it waits to be admitted again and then resumes "
                    f"from its checkpoint{step} as the same trial, not as a failure or a retry",
                )
            if job.suspended:
                messages[number] = queueing.pending_message(workload, job.queue)
        return messages

    def clean_up(self, jobs: list[JobSummary], pods: list[PodSummary], running: set[int], live: set[int]) -> None:
        """Delete Jobs of finished trials once their pods ended; keep the last few failed attempts."""
        for name in outcomes.jobs_to_delete(jobs, pods, running, live, self.settings.kept_failed_jobs):
            kube.delete_job(self.namespace, name)

    # -- writing -----------------------------------------------------------------------------------

    def write(self, study: Observed, previous: dict[str, Any], facts: st.Facts) -> None:
        """Write the status if it changed, and post the Events its transitions call for (each once)."""
        patch = st.render(facts, previous.get("conditions") or [])
        after = {**previous, **patch}
        if self.written is None or any(self.written.get(key) != value for key, value in patch.items()):
            kube.patch_status(self.namespace, self.name, patch)
        for note in st.transitions(previous, after):
            self.event(note.reason, note.message, note.warning)
        self.written = after

    def best_trials(self, spec: HpoStudySpec, store: StudyStore, facts: st.Facts, previous: dict[str, Any]) -> None:
        """The best trial (single objective) or the Pareto front, read again only when more trials are COMPLETE."""
        assert facts.counts is not None
        if len(spec.objective.directions) > 1:
            facts.pareto = self.update_pareto(spec, store, facts.running)
            return
        complete = facts.counts.complete
        if complete != self.best_as_of:
            best = store.best()
            known = self.best or _recorded_best(previous)
            if best is not None and (known is None or best.number != known.number):
                self.event("NewBest", f"trial {best.number}: value {best.values[0]!r} {best.params}")
            self.best, self.best_as_of = best, complete
        facts.best = self.best

    def update_pareto(self, spec: HpoStudySpec, store: StudyStore, running: list[RunningTrial]) -> list[FinishedTrial]:
        """Keep the Pareto front incrementally: read only the trials that finished since the last pass."""
        minimize = [d.value == "minimize" for d in spec.objective.directions]
        if self.pareto is None:
            candidates = store.complete_values()
        else:
            finished = self.previous_running - {r.number for r in running}
            candidates = self.pareto + [t for n in finished if (t := store.finished_trial(n)) is not None]
        front = pareto_front(candidates, minimize)
        self.pareto = [t if t.params else (store.finished_trial(t.number) or t) for t in front]
        return sorted(self.pareto, key=lambda t: t.number)

    # -- import and snapshots --------------------------------------------------------------------------

    def import_study(
        self,
        body: dict[str, Any],
        study: Observed,
        previous: dict[str, Any],
        spec: HpoStudySpec,
        store: StudyStore,
        jobs: list[JobSummary],
        pods: list[PodSummary],
        started_at: str,
        now: datetime.datetime,
    ) -> tuple[st.ImportedCounts, str] | None:
        """Run the import Job until it succeeds: then its counts and the Imported condition's message, else None."""
        database = f"Optuna study {self.name} in database {self.provisioned.database if self.provisioned else '?'}"
        source = importing.describe(spec)
        failed = _condition_entry(previous, st.IMPORTED)
        if failed.get("reason") == st.REASON_IMPORT_FAILED and failed.get("observedGeneration") == study.generation:
            field, _, message = str(failed.get("message", "")).partition(": ")
            verdict = st.import_failed(field, message, database)
            self.write(study, previous, st.Facts(verdict, spec.budget.trials, study.generation, started_at=started_at))
            return None  # fix the source, then edit the spec: the import runs again
        decision = importing.decide(spec, jobs, pods, now)
        action = decision.action
        if action is importing.Action.DONE:
            total, failed_count = store.imported_counts()
            result = decision.result
            message = f"imported {total} trials from {source}" + (
                f" ({result.failed_unfinished} unfinished there are FAIL, {result.enqueued} queued to run again; "
                f"best there {result.best!r})"
                if result is not None
                else ""
            )
            self.logger.info(message)
            return st.ImportedCounts(total, failed_count), message
        refused = ""
        if action in (importing.Action.CREATE, importing.Action.RERUN):
            for name in decision.jobs:
                kube.delete_job(self.namespace, name)
            refused = self.start_import(body, spec, decision, source)
        if refused:
            verdict = st.importing(refused, database)
        elif action is importing.Action.FAIL:
            for name in decision.jobs:
                kube.delete_job(self.namespace, name)
            verdict = st.import_failed(decision.field, decision.message, database)
        else:
            verdict = st.importing(f"{decision.message} ({source})", database)
        self.write(study, previous, st.Facts(verdict, spec.budget.trials, study.generation, started_at=started_at))
        return None

    def start_import(self, body: dict[str, Any], spec: HpoStudySpec, decision: importing.Decision, source: str) -> str:
        """Create the import run's Job; why the API server refused it, if it did (tried again next pass)."""
        ref = self.ref
        job = importing.build_import_job(spec, ref, decision.run, self.settings.trial_image)
        try:
            kube.create_owned(job, owner=body)
        except ApiException as error:
            refused = f"importing: the API server refused the import Job: {_api_message(error)}; retrying"
            self.logger.warning(refused)
            return refused
        self.logger.info(f"import run {decision.run}: created Job {job['metadata']['name']}")
        if decision.action is importing.Action.RERUN:
            self.event(st.EVENT_IMPORT_RETRIED, decision.message, warning=True)
        else:
            self.event(st.EVENT_IMPORT_STARTED, f"importing {source} (Job {job['metadata']['name']})")
        return ""

    def tasks(
        self,
        body: dict[str, Any],
        spec: HpoStudySpec,
        facts: st.Facts,
        jobs: list[JobSummary],
        pods: list[PodSummary],
        previous: dict[str, Any],
    ) -> bool:
        """Delete a finished import's Jobs, run snapshots, record the newest in facts; True while a Job remains."""
        done_imports = [j.name for j in jobs if j.task == importing.IMPORT_TASK]
        for name in done_imports:  # the import has succeeded (this pass or earlier): its Jobs are done
            kube.delete_job(self.namespace, name)
        snapshot_jobs = [j for j in jobs if j.task == importing.SNAPSHOT_TASK]
        if spec.checkpoints.claim_name is None and not snapshot_jobs:
            return False
        recorded = previous.get("snapshot") if isinstance(previous.get("snapshot"), dict) else {}
        done = max(self.snapshot_tried, int((recorded or {}).get("finishedTrials") or 0))
        due = int((facts.checkpoint or {}).get("finishedTrials") or 0) if spec.checkpoints.claim_name else 0
        decision = snapshots.decide(due, done, snapshot_jobs, pods)
        for name, why in decision.failed:
            self.event(st.EVENT_SNAPSHOT_FAILED, f"snapshot Job {name} failed: {why}", warning=True)
        if decision.taken is not None and spec.checkpoints.claim_name:
            facts.snapshot = decision.taken.status(spec)
            if facts.snapshot != recorded:
                self.event(
                    st.EVENT_SNAPSHOT_TAKEN,
                    f"{facts.snapshot['path']} on claim {spec.checkpoints.claim_name}: "
                    f"{decision.taken.trials} trials, {decision.taken.finished} finished",
                )
        for name in decision.delete:
            kube.delete_job(self.namespace, name)
        created = False
        if decision.create is not None:
            self.snapshot_tried = decision.create
            ref = self.ref
            readonly = provisioning.secret_names(self.name)[1]
            job = snapshots.build_snapshot_job(spec, ref, readonly, decision.create, self.settings.trial_image)
            try:
                kube.create_owned(job, owner=body)
                created = True
            except ApiException as error:
                self.event(
                    st.EVENT_SNAPSHOT_FAILED,
                    f"the API server refused snapshot Job {job['metadata']['name']}: {_api_message(error)}",
                    warning=True,
                )
        return created or len(decision.delete) < len(snapshot_jobs) or bool(done_imports)

    @staticmethod
    def checkpoint(spec: HpoStudySpec, finished: int, previous: dict[str, Any] | None) -> dict[str, Any] | None:
        """Record a study checkpoint every `spec.checkpoints.everyTrials` finished trials."""
        every = spec.checkpoints.every_trials
        recorded = int((previous or {}).get("finishedTrials", 0))
        if finished // every > recorded // every:
            return {"time": st.now(), "finishedTrials": finished - finished % every}
        return previous


def _latest_attempts(
    jobs: list[JobSummary], pods: list[PodSummary]
) -> dict[int, tuple[JobSummary | None, PodSummary | None]]:
    """Per trial, its latest attempt's Job and pod (the newest pod of that attempt); either may be missing."""
    attempt: dict[int, int] = {}
    for trial, number in [(j.trial, j.attempt) for j in jobs] + [(p.trial, p.attempt) for p in pods]:
        attempt[trial] = max(attempt.get(trial, -1), number)
    job_of = {(j.trial, j.attempt): j for j in jobs}
    pod_of: dict[tuple[int, int], PodSummary] = {}
    for pod in pods:
        current = pod_of.get((pod.trial, pod.attempt))
        if current is None or pod.created > current.created:
            pod_of[(pod.trial, pod.attempt)] = pod
    return {trial: (job_of.get((trial, number)), pod_of.get((trial, number))) for trial, number in attempt.items()}


def _listed(problems: list[validation.Problem], most: int = 10) -> str:
    """The problems in one message, the first ``most`` of them (a condition and an Event stay readable)."""
    shown = "; ".join(map(str, problems[:most]))
    return shown + (f"; and {len(problems) - most} more" if len(problems) > most else "")


def _total(raw_spec: object) -> int:
    budget = raw_spec.get("budget") if isinstance(raw_spec, dict) else None
    total = budget.get("trials") if isinstance(budget, dict) else None
    return total if isinstance(total, int) and not isinstance(total, bool) else 0


def _condition(status: dict[str, Any], kind: str) -> str | None:
    found = _condition_entry(status, kind)
    return str(found["status"]) if "status" in found else None


def _condition_entry(status: dict[str, Any], kind: str) -> dict[str, Any]:
    for condition in status.get("conditions") or []:
        if isinstance(condition, dict) and condition.get("type") == kind:
            return condition
    return {}


def _finished(verdict: st.Verdict) -> bool:
    return any(c.type == st.FINISHED and c.status for c in verdict.conditions)


def _recorded_best(status: dict[str, Any]) -> FinishedTrial | None:
    best = status.get("bestTrial")
    if isinstance(best, dict) and isinstance(best.get("number"), int):
        return FinishedTrial(best["number"], ())
    return None


def _api_message(error: ApiException) -> str:
    """The API server's own words for a refusal (its Status message), else the HTTP reason."""
    try:
        message = json.loads(error.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return redact(str(message or f"{error.status} {error.reason}"))[:500]


def _driver_message(error: BaseException) -> str:
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.orig is not None:
            return redact(" ".join(str(arg) for arg in current.orig.args) or type(current.orig).__name__)
        current = current.__cause__ or current.__context__
    return redact(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
