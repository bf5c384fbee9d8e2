"""One pass over one study: validate, provision, settle ended attempts, dispatch, write status.

The study's daemon (handlers.py) runs a pass whenever one of its trial pods or Jobs changes, and
every few seconds regardless. A pass reads the state it needs afresh (RUNNING trials and counts
from the database, the study's live pods and Jobs from the operator's index), so a pass can be
repeated, or the operator killed between any two steps, without losing or duplicating a trial:
a RUNNING trial without a Job gets one, a Job whose name exists is found, not made twice.
"""

from __future__ import annotations

import datetime
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any

from hpo_operator import database, dispatch, kube, metrics, redaction, search, validation
from hpo_operator import status as st
from hpo_operator.models import (
    DISPATCHED_AT_ANNOTATION,
    READONLY_SECRET_SUFFIX,
    DeletionPolicy,
    EndPolicy,
    HpoStudySpec,
    Phase,
    TlsMode,
)
from hpo_operator.outcomes import JobSummary, Outcome, PodSummary, Verdict, classify
from hpo_operator.settings import Settings
from hpo_operator.storage import FinishedTrial, RunningTrial, StudyStore, pareto_front

_logger = logging.getLogger(__name__)


class StudyProblem(Exception):
    """A pass could not finish (database unreachable, ...); the message says what to do."""


class ProvisioningProblem(StudyProblem):
    """The study's database cannot be made ready yet; `reason` is the DatabaseReady condition's reason."""

    def __init__(self, message: str, reason: str = st.REASON_DATABASE_ERROR) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class StudyLoop:
    """State one study keeps between passes: only caches, all rebuilt from scratch after a restart."""

    namespace: str
    name: str
    settings: Settings
    store: StudyStore | None = None
    best: FinishedTrial | None = None
    best_as_of: int | None = None  # the COMPLETE count `best` was read at: it changes only when that grows
    pareto: list[FinishedTrial] | None = None
    previous_running: set[int] = field(default_factory=set)
    reported_problems: str = ""
    database_name: str = ""  # the study's database, once provisioned
    storage_tls: bool = False  # its server's connections use TLS (trial pods mount the CA)
    last_status: dict[str, Any] | None = None
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = field(default_factory=lambda: _logger)

    @property
    def secret_name(self) -> str:
        return f"{self.name}-storage"

    @property
    def reader_secret_name(self) -> str:
        return f"{self.name}{READONLY_SECRET_SUFFIX}"

    # -- provisioning -------------------------------------------------------------------------

    def server(self, spec: HpoStudySpec) -> database.Server:
        """The study's server, with the admin that belongs to it (the policy has checked the pairing)."""
        default, storage = self.settings.default_server, spec.storage
        if storage.admin_secret is None:
            return default
        where = f"Secret {storage.admin_secret.name} (spec.storage.adminSecret)"
        secret = kube.read_secret(self.namespace, storage.admin_secret.name)
        if secret is None or not secret.get("username") or not secret.get("password"):
            found = "does not exist" if secret is None else "lacks the key username or password"
            raise ProvisioningProblem(f"{where} {found} in namespace {self.namespace}; create it with the keys "
                                      "username and password of an admin of the study's MySQL server",
                                      st.REASON_ADMIN_SECRET)
        redaction.remember(secret["password"])
        default_server = self.settings.policy.uses_default_server(storage)
        tls = default.tls if default_server else self.study_tls(spec)
        return database.Server(storage.host or default.host, storage.port or default.port, secret["username"],
                               secret["password"], tls)

    def study_tls(self, spec: HpoStudySpec) -> database.Tls:
        tls = spec.storage.tls
        if tls is None:
            return database.Tls()
        ref = tls.ca_secret
        pem = (kube.read_secret(self.namespace, ref.name) or {}).get(ref.key, "")
        try:
            ssl.create_default_context(cadata=pem)
        except (ssl.SSLError, ValueError):
            raise ProvisioningProblem(f"key {ref.key} of Secret {ref.name} (spec.storage.tls.caSecret) is missing or "
                                      "not a PEM certificate; put the CA that signed the server's certificate there",
                                      st.REASON_TLS_CA) from None
        return database.Tls(ca_pem=pem, verify_identity=tls.mode is TlsMode.VERIFY_IDENTITY)

    def provision(self, body: dict[str, Any], spec: HpoStudySpec) -> StudyStore:
        """Make the database, its users, the two storage Secrets and the Optuna study (all idempotent)."""
        server = self.server(spec)
        writer = kube.read_secret(self.namespace, self.secret_name) or {}
        reader = kube.read_secret(self.namespace, self.reader_secret_name) or {}
        credentials = database.Credentials(password=writer.get("password") or database.new_password(),
                                           reader_password=reader.get("password") or database.new_password(),
                                           claimed_database=writer.get("database"))
        redaction.remember(credentials.password, credentials.reader_password)
        try:
            with metrics.DATABASE_LATENCY.time():
                names = database.provision(server, self.namespace, self.name, credentials)
        except database.OwnershipConflict as error:
            raise ProvisioningProblem(str(error), st.REASON_DATABASE_CONFLICT) from error
        except database.DatabaseError as error:
            raise ProvisioningProblem(str(error)) from error
        tls = {database.TLS_CA_KEY: server.tls.ca_pem} if server.tls.ca_pem else {}
        urls = {}
        for secret, user, password in ((self.secret_name, names.user, credentials.password),
                                       (self.reader_secret_name, names.reader, credentials.reader_password)):
            urls[secret] = database.storage_url(server, user, names.database, password)
            kube.ensure_secret(self.namespace, secret, {"url": urls[secret], "username": user, "password": password,
                                                        "database": names.database, **tls}, owner=body)
        url, connect_args = urls[self.secret_name], database.connect_args(server.tls)
        StudyStore.create(url, connect_args, self.name, spec)
        self.database_name, self.storage_tls = names.database, server.tls.enabled
        return StudyStore(url, connect_args, self.name)

    def deprovision(self, spec: HpoStudySpec) -> None:
        """Drop the study's database under policy Delete (only what the server records as the study's)."""
        self.close()
        if spec.storage.deletion_policy is not DeletionPolicy.DELETE:
            return
        if self.settings.policy.storage_problems(spec.storage):
            self.logger.warning("the study's spec.storage breaks the operator's policy: its database is not dropped")
            return
        dropped = database.drop(self.server(spec), self.namespace, self.name)
        self.logger.info(f"dropped database {dropped.database}" if dropped else "no database recorded to drop")

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    # -- one pass -----------------------------------------------------------------------------

    def run(self, body: dict[str, Any], pods: list[PodSummary], jobs: list[JobSummary]) -> None:
        """One reconcile pass; raises StudyProblem when it must be retried later."""
        raw_status = body.get("status") or {}
        generation = body["metadata"].get("generation")
        spec, problems = validation.parse(body.get("spec") or {})
        if not self.settings.serves(self.namespace):
            problems.insert(0, validation.Problem(
                "metadata.namespace", f"the operator does not serve its own namespace {self.namespace}, where its "
                                      "admin credentials live; create the study in another namespace"))
        elif spec is not None:
            problems = self.settings.policy.check(spec)
        if spec is None or problems:
            self.reject(body, problems, generation, raw_status)
            return
        if self.store is None:
            try:
                self.store = self.provision(body, spec)
            except ProvisioningProblem as problem:
                self.report_unready(body, spec, problem, generation, raw_status)
                raise
            was_ready = any(c.get("type") == st.DATABASE_READY and c.get("status") == "True"
                            for c in raw_status.get("conditions", []))
            if not was_ready:
                kube.event(body, reason="DatabaseReady", message=f"Optuna study ready in database {self.database_name}")
            self.reported_problems = ""
        self.step(body, spec, pods, jobs, generation, raw_status)

    def report_unready(self, body: dict[str, Any], spec: HpoStudySpec, problem: ProvisioningProblem,
                       generation: int | None, raw_status: dict[str, Any]) -> None:
        """Pending with DatabaseReady=False and why; one Event per distinct problem, not one per retry."""
        message = str(problem)
        kube.patch_status(self.namespace, self.name, st.render(st.Facts(
            Phase.PENDING, message, spec.budget.trials, generation,
            conditions=[st.ConditionUpdate(st.VALIDATED, True, st.REASON_VALID),
                        st.ConditionUpdate(st.DATABASE_READY, False, problem.reason, message)],
        ), raw_status.get("conditions", [])))
        if message != self.reported_problems:
            kube.event(body, reason=problem.reason, message=message, warning=True)
            self.reported_problems = message

    def reject(self, body: dict[str, Any], problems: list[validation.Problem], generation: int | None,
               raw_status: dict[str, Any]) -> None:
        message = "; ".join(str(p) for p in problems)
        if message != self.reported_problems:
            kube.event(body, reason="InvalidSpec", message=message, warning=True)
            self.reported_problems = message
        budget = (body.get("spec") or {}).get("budget")
        total = budget.get("trials") if isinstance(budget, dict) else None
        kube.patch_status(self.namespace, self.name, st.render(st.Facts(
            Phase.FAILED, f"invalid spec: {message}", total if isinstance(total, int) else 0, generation,
            conditions=[st.ConditionUpdate(st.VALIDATED, False, st.REASON_INVALID, message)],
        ), raw_status.get("conditions", [])))

    def step(self, body: dict[str, Any], spec: HpoStudySpec, pods: list[PodSummary], jobs: list[JobSummary],
             generation: int | None, raw_status: dict[str, Any]) -> None:
        assert self.store is not None
        store = self.store
        now = datetime.datetime.now(datetime.UTC)
        started_at = raw_status.get("startedAt") or st.now()
        live = {p.trial for p in pods if not p.terminal}
        running = store.running()
        counts = store.counts()
        ended, end_reason = self.ended(spec, counts.failed, started_at, now)
        stopping = spec.suspend or (ended and spec.end_policy is EndPolicy.KILL)

        latest_jobs = _latest(jobs)
        latest_pods = _latest_pods(pods)
        attempts: dict[int, int] = {}
        for trial in running:
            job = latest_jobs.get(trial.number)
            attempts[trial.number] = job.attempt if job else len(trial.outcomes)
            if stopping:
                if job is not None:
                    kube.delete_job(self.namespace, job.name)
                if ended and trial.number not in live:
                    store.fail(trial.number, f"stopped: the study ended ({end_reason})")
                continue
            self.settle(body, spec, store, trial, job, latest_pods.get(trial.number), live, ended, now)

        if not (stopping or ended or self.stalled(spec, counts.failed)):
            self.dispatch(body, spec, store, len({r.number for r in running} | live), counts.created)
        self.clean_up(jobs, {r.number for r in running}, live)  # after dispatch: a freed slot waits for nothing

        counts = store.counts()
        running = store.running()
        phase, message, conditions = self.phase(spec, counts, ended, end_reason, bool(live), bool(running))
        self.write_status(body, spec, raw_status, st.Facts(
            phase, message, spec.budget.trials, generation, counts=counts, running=running, attempts=attempts,
            conditions=conditions, optuna_study=self.name, started_at=started_at))

    def ended(self, spec: HpoStudySpec, failed: int, started_at: str, now: datetime.datetime) -> tuple[bool, str]:
        if self.stalled(spec, failed):
            return True, "too many failed trials"
        if spec.budget.deadline_seconds:
            started = datetime.datetime.fromisoformat(started_at.replace("Z", "+00:00"))
            if (now - started).total_seconds() > spec.budget.deadline_seconds:
                return True, "spec.budget.deadlineSeconds reached"
        return False, ""

    @staticmethod
    def stalled(spec: HpoStudySpec, failed: int) -> bool:
        limit = spec.budget.max_failed_trials
        return limit is not None and failed > limit

    def settle(self, body: dict[str, Any], spec: HpoStudySpec, store: StudyStore, trial: RunningTrial,
               job: JobSummary | None, pod: PodSummary | None, live: set[int], ended: bool,
               now: datetime.datetime) -> None:
        """Decide about a RUNNING trial whose latest attempt may have ended."""
        if job is None:
            if trial.number not in live:  # asked but never given a Job, or its Job went away: run it
                self.start_attempt(body, spec, store, trial.number, trial.trial_id, len(trial.outcomes))
            return
        verdict = self.verdict(spec, job, pod, now)
        if verdict.outcome is Outcome.ACTIVE:
            return
        if verdict.outcome is Outcome.SUCCEEDED:  # exited 0 yet the trial is still RUNNING
            verdict = Verdict(Outcome.CRASHED, "the trial pod exited 0 without reporting a result to Optuna")
        outcomes = store.record_outcome(trial, job.attempt, verdict.outcome.value)
        crashes = outcomes.count(Outcome.CRASHED.value)
        if verdict.outcome is Outcome.PREEMPTED and not ended:
            kube.delete_job(self.namespace, job.name)
            kube.event(body, reason="TrialRequeued", message=f"trial {trial.number}: {verdict.reason}; "
                                                           "running it again from its checkpoint")
            self.start_attempt(body, spec, store, trial.number, trial.trial_id, job.attempt + 1)
        elif verdict.outcome is Outcome.CRASHED and crashes <= spec.budget.retries_per_trial and not ended:
            kube.event(body, reason="TrialRetried", warning=True,
                       message=f"trial {trial.number} attempt {job.attempt}: {verdict.reason}; "
                               f"retry {crashes} of {spec.budget.retries_per_trial}")
            self.start_attempt(body, spec, store, trial.number, trial.trial_id, job.attempt + 1)
        else:
            if verdict.outcome is Outcome.NEVER_STARTED:
                kube.delete_job(self.namespace, job.name)
            store.fail(trial.number, verdict.reason)
            metrics.TRIALS.labels(state="failed").inc()
            kube.event(body, reason="TrialFailed", message=f"trial {trial.number}: {verdict.reason}", warning=True)

    def verdict(self, spec: HpoStudySpec, job: JobSummary, pod: PodSummary | None,
                now: datetime.datetime) -> Verdict:
        if pod is not None and pod.attempt == job.attempt:
            return classify(pod, now, spec.budget.start_timeout_seconds)
        if job.failed:
            return Verdict(Outcome.PREEMPTED, "the trial pod was removed")
        timeout = spec.budget.start_timeout_seconds
        if (now - job.created).total_seconds() > timeout:
            why = job.message or "see the Job's events"
            return Verdict(Outcome.NEVER_STARTED, f"the Job made no pod within {timeout}s: {why}")
        return Verdict(Outcome.ACTIVE)

    def start_attempt(self, body: dict[str, Any], spec: HpoStudySpec, store: StudyStore, number: int,
                      trial_id: int, attempt: int) -> None:
        ref = dispatch.TrialRef(self.namespace, self.name, self.name, self.secret_name, self.storage_tls)
        assignment = dispatch.assignment(spec, ref, number, trial_id, search.sampler_config(spec),
                                         search.pruner_config(spec))
        job = dispatch.build_job(spec, ref, number, attempt, assignment, self.settings.trial_image)
        job["metadata"]["annotations"] = {DISPATCHED_AT_ANNOTATION: st.now_precise()}
        kube.create_owned(job, owner=body)
        self.logger.info(f"trial {number} attempt {attempt}: created Job {job['metadata']['name']}")

    def dispatch(self, body: dict[str, Any], spec: HpoStudySpec, store: StudyStore, occupied: int,
                 created: int) -> None:
        declared = search.distributions(spec)
        for _ in range(dispatch.free_slots(spec.budget.parallelism, occupied, created, spec.budget.trials)):
            with metrics.DISPATCH_LATENCY.time():
                trial = store.ask(spec, declared)
                self.start_attempt(body, spec, store, trial.number, trial._trial_id, 0)
            metrics.TRIALS.labels(state="started").inc()
            kube.event(body, reason="TrialStarted", message=f"trial {trial.number}: {trial.params}")

    def clean_up(self, jobs: list[JobSummary], running: set[int], live: set[int]) -> None:
        """Delete Jobs of finished trials once their pods ended; keep the last few failed attempts."""
        done = [j for j in jobs if j.trial not in running and j.trial not in live]
        failed = sorted((j for j in done if j.failed), key=lambda j: j.created)
        keep = {j.name for j in failed[-self.settings.kept_failed_jobs:]} if self.settings.kept_failed_jobs else set()
        for job in done:
            if job.name not in keep:
                kube.delete_job(self.namespace, job.name)

    def phase(self, spec: HpoStudySpec, counts: Any, ended: bool, end_reason: str, live: bool,
              running: bool) -> tuple[Phase, str, list[st.ConditionUpdate]]:
        conditions = [st.ConditionUpdate(st.VALIDATED, True, st.REASON_VALID),
                      st.ConditionUpdate(st.DATABASE_READY, True, st.REASON_PROVISIONED)]
        busy = live or running
        if self.stalled(spec, counts.failed):  # counts are fresh: this pass may have failed the last straw
            reason = f"{counts.failed} trials failed, more than spec.budget.maxFailedTrials"
            conditions.append(st.ConditionUpdate(st.PROGRESSING, busy, st.REASON_TOO_MANY_FAILURES, reason))
            return Phase.FAILED, reason, conditions
        if spec.suspend:
            conditions.append(st.ConditionUpdate(st.PROGRESSING, False, st.REASON_SUSPENDED, "spec.suspend is true"))
            return Phase.SUSPENDED, "suspended" + (": stopping running trials" if live else ""), conditions
        if busy or (counts.created < spec.budget.trials and not ended):
            reason = st.REASON_DRAINING if ended else st.REASON_DISPATCHING
            conditions.append(st.ConditionUpdate(st.PROGRESSING, True, reason, end_reason))
            return Phase.RUNNING, end_reason or f"{counts.finished} of {spec.budget.trials} trials finished", conditions
        reason = st.REASON_DEADLINE if ended else st.REASON_BUDGET_SPENT
        conditions.append(st.ConditionUpdate(st.PROGRESSING, False, reason, end_reason))
        conditions.append(st.ConditionUpdate(st.FINISHED, True, reason, end_reason))
        return Phase.SUCCEEDED, end_reason or f"all {spec.budget.trials} trials finished", conditions

    def write_status(self, body: dict[str, Any], spec: HpoStudySpec, raw_status: dict[str, Any],
                     facts: st.Facts) -> None:
        """Add the best trial (or Pareto front) and checkpoint record, post Events, write if changed."""
        assert self.store is not None
        counts, running, phase, message = facts.counts, facts.running, facts.phase, facts.message
        multi = len(spec.objective.directions) > 1
        if multi:
            facts.pareto = self.update_pareto(spec, running)
        else:
            facts.best = self.update_best(body, counts.complete, raw_status.get("bestTrial") is None)
        facts.checkpoint = self.checkpoint(spec, counts.finished, raw_status.get("checkpoint"))
        if phase is Phase.SUCCEEDED and raw_status.get("phase") != Phase.SUCCEEDED.value:
            kube.event(body, reason="StudyFinished", message=message)
        metrics.STUDY_TRIALS.labels(self.namespace, self.name, "complete").set(counts.complete)
        metrics.STUDY_TRIALS.labels(self.namespace, self.name, "pruned").set(counts.pruned)
        metrics.STUDY_TRIALS.labels(self.namespace, self.name, "failed").set(counts.failed)
        metrics.STUDY_TRIALS.labels(self.namespace, self.name, "running").set(counts.running)
        self.previous_running = {r.number for r in running}
        patch = st.render(facts, raw_status.get("conditions", []))
        if patch != self.last_status:
            kube.patch_status(self.namespace, self.name, patch)
            self.last_status = patch

    def update_best(self, body: dict[str, Any], complete: int, unrecorded: bool) -> FinishedTrial | None:
        """The best trial, read again only when more trials are COMPLETE; a NewBest Event when it changes."""
        assert self.store is not None
        if complete == self.best_as_of:
            return self.best
        best = self.store.best()
        changed = best is not None and (self.best is None or best.number != self.best.number)
        if best is not None and changed and (self.best is not None or unrecorded):  # not again after a restart
            kube.event(body, reason="NewBest", message=f"trial {best.number}: value {best.values[0]!r} {best.params}")
        self.best, self.best_as_of = best, complete
        return best

    def update_pareto(self, spec: HpoStudySpec, running: list[RunningTrial]) -> list[FinishedTrial]:
        """Keep the Pareto front incrementally: read only the trials that finished since the last pass."""
        assert self.store is not None
        minimize = [d.value == "minimize" for d in spec.objective.directions]
        if self.pareto is None:
            candidates = self.store.complete_values()
        else:
            finished = self.previous_running - {r.number for r in running}
            candidates = self.pareto + [t for n in finished if (t := self.store.finished_trial(n)) is not None]
        front = pareto_front(candidates, minimize)
        self.pareto = [t if t.params else (self.store.finished_trial(t.number) or t) for t in front]
        return sorted(self.pareto, key=lambda t: t.number)

    @staticmethod
    def checkpoint(spec: HpoStudySpec, finished: int, previous: dict[str, Any] | None) -> dict[str, Any] | None:
        """Record a study checkpoint every `spec.checkpoints.everyTrials` finished trials."""
        every = spec.checkpoints.every_trials
        recorded = int((previous or {}).get("finishedTrials", 0))
        if finished // every > recorded // every:
            return {"time": st.now(), "finishedTrials": finished - finished % every}
        return previous


def _latest(jobs: list[JobSummary]) -> dict[int, JobSummary]:
    latest: dict[int, JobSummary] = {}
    for job in jobs:
        if job.trial not in latest or job.attempt > latest[job.trial].attempt:
            latest[job.trial] = job
    return latest


def _latest_pods(pods: list[PodSummary]) -> dict[int, PodSummary]:
    latest: dict[int, PodSummary] = {}
    for pod in pods:
        current = latest.get(pod.trial)
        if current is None or (pod.attempt, pod.created) > (current.attempt, current.created):
            latest[pod.trial] = pod
    return latest
