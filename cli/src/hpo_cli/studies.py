"""Finding a study through the Kubernetes API, as the caller, and opening its Optuna database read-only.

Every call here uses the caller's kubeconfig and RBAC. A study's database URL comes from its
read-only Secret ``<study>-storage-readonly`` (key ``url``), or ``<study>-storage`` where a study
predates read-only users; never from the operator's admin. Each refusal becomes a
:class:`~hpo_cli.errors.CliError` that says what to do: the study does not exist, the caller may not
read its Secret, or its database cannot be reached from here (and how to reach it: a cluster
Service name is port-forwarded with ``kubectl port-forward`` automatically).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import optuna
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from optuna.storages import RDBStorage
from sqlalchemy.engine import make_url

from hpo_cli.errors import CliError
from hpo_cli.names import (
    ATTEMPT_LABEL,
    GROUP,
    PLURAL,
    READONLY_SECRET_SUFFIX,
    SECRET_SUFFIX,
    STUDY_LABEL,
    TLS_CA_KEY,
    TRIAL_LABEL,
    VERSION,
)
from hpo_cli.tables import Placement, placements
from hpo_trial.bulk import open_study_storage
from hpo_trial.errors import HpoTrialError, StorageUnavailableError

__all__ = ["Cluster", "Study", "service_of"]

_SERVICE_HOST = re.compile(r"(?P<service>[a-z0-9-]+)\.(?P<namespace>[a-z0-9-]+)\.svc(\.cluster\.local)?\.?")


def service_of(host: str) -> tuple[str, str] | None:
    """``(namespace, service)`` when ``host`` is a cluster Service DNS name (``mysql.db.svc[.cluster.local]``)."""
    match = _SERVICE_HOST.fullmatch(host)
    return (match["namespace"], match["service"]) if match else None


@dataclass(frozen=True)
class Study:
    """An HpoStudy as the caller may see it: its object, and the Optuna study name in its database."""

    namespace: str
    name: str
    body: dict[str, Any]

    @property
    def optuna_name(self) -> str:
        return str((self.body.get("status") or {}).get("optunaStudy") or self.name)


class Cluster:
    """The caller's view of the cluster: their kubeconfig, context and namespace."""

    def __init__(self, context: str | None = None, kubeconfig: str | None = None) -> None:
        try:
            config.load_kube_config(config_file=kubeconfig, context=context)  # type: ignore[no-untyped-call]
        except config.ConfigException as error:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                raise CliError(f"no usable kubeconfig: {error}") from None
        self.context = context
        self.kubeconfig = kubeconfig
        self.api = client.ApiClient()
        self.objects = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self._forwards = contextlib.ExitStack()

    def default_namespace(self) -> str:
        """The current context's namespace, as kubectl would use it (``default`` when it names none)."""
        try:
            contexts, current = config.list_kube_config_contexts(config_file=self.kubeconfig)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            return "default"
        if self.context:
            current = next((c for c in contexts if c["name"] == self.context), current)
        return str((current or {}).get("context", {}).get("namespace") or "default")

    def close(self) -> None:
        """Stop any port-forward this session started."""
        self._forwards.close()

    # -- studies ---------------------------------------------------------------------------------

    def study(self, namespace: str, name: str) -> Study:
        try:
            body = cast(
                dict[str, Any], self.objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            )
        except ApiException as error:
            if error.status == 404:
                raise CliError(
                    f'study "{name}" not found in namespace "{namespace}" (kubectl hpo list -A lists the studies '
                    "you can see)"
                ) from None
            raise _refused(error, f"get hpostudies/{name}", namespace) from None
        return Study(namespace, name, body)

    def studies(self, namespace: str | None) -> list[dict[str, Any]]:
        """Every study of ``namespace`` (None: of all namespaces), sorted by namespace and name."""
        found: dict[str, Any]
        try:
            if namespace is None:
                found = cast(dict[str, Any], self.objects.list_cluster_custom_object(GROUP, VERSION, PLURAL))
            else:
                found = cast(
                    dict[str, Any], self.objects.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
                )
        except ApiException as error:
            if error.status == 404:
                raise CliError(
                    f"this cluster serves no {PLURAL}.{GROUP} resource: hpo-operator's CRD is not installed "
                    "(kubectl apply --server-side -f crds/)"
                ) from None
            raise _refused(error, "list hpostudies", namespace) from None
        items = [dict(item) for item in found.get("items", [])]
        return sorted(items, key=lambda s: (s["metadata"].get("namespace", ""), s["metadata"]["name"]))

    # -- the study's database --------------------------------------------------------------------

    def storage_secret(self, study: Study) -> dict[str, str]:
        """The keys of the study's read-only storage Secret (or the read-write one where no read-only one exists)."""
        for suffix in (READONLY_SECRET_SUFFIX, SECRET_SUFFIX):
            secret_name = f"{study.name}{suffix}"
            try:
                secret = self.core.read_namespaced_secret(secret_name, study.namespace)
            except ApiException as error:
                if error.status == 404:
                    continue
                if error.status == 403:
                    raise CliError(
                        f'you may not read Secret "{secret_name}" in namespace "{study.namespace}", which holds '
                        f'study "{study.name}"\'s database URL: ask for "get" on secrets there (check with: '
                        f"kubectl auth can-i get secret/{secret_name} -n {study.namespace})"
                    ) from None
                raise _refused(error, f"get secret/{secret_name}", study.namespace) from None
            data = {key: base64.b64decode(value).decode() for key, value in (secret.data or {}).items()}
            if "url" not in data:
                raise CliError(f'Secret "{secret_name}" in namespace "{study.namespace}" has no key "url"')
            return data
        raise CliError(
            f'study "{study.name}" has no storage Secret yet ({study.name}{READONLY_SECRET_SUFFIX} or '
            f"{study.name}{SECRET_SUFFIX}): its database is not provisioned; see kubectl describe hpostudy "
            f"{study.name} -n {study.namespace}"
        )

    def storage(self, study: Study, address: str | None = None) -> RDBStorage:
        """The study's Optuna storage, reached from here.

        Args:
            study: The study.
            address: ``host:port`` to use instead of the URL's (a tunnel of the caller's own).
        """
        secret = self.storage_secret(study)
        url = make_url(secret["url"])
        where = f"{url.host}:{url.port or 3306}"
        ca_path = url.query.get("ssl_ca")
        if isinstance(ca_path, str) and not Path(ca_path).exists():  # the path trial pods mount it at
            if TLS_CA_KEY not in secret:
                raise CliError(
                    f"the study's database uses TLS with a CA at {ca_path}, and its Secret has no {TLS_CA_KEY}"
                )
            url = url.update_query_dict({"ssl_ca": self._local_file(secret[TLS_CA_KEY], ".crt")})
        if address:
            host, _, port = address.rpartition(":")
            url = url.set(host=host or address, port=int(port) if host and port else url.port)
        elif url.host and (service := service_of(url.host)) and not _resolves(url.host):
            url = url.set(host="127.0.0.1", port=self._port_forward(*service, url.port or 3306))
        try:
            return open_study_storage(url.render_as_string(hide_password=False))
        except StorageUnavailableError as error:
            if address:
                raise CliError(
                    f'cannot reach study "{study.name}"\'s database through --db-address {address} ({error}): is '
                    f"your tunnel to {where} up?"
                ) from None
            raise CliError(_unreachable(study, where, str(error))) from None
        except HpoTrialError as error:
            raise CliError(f'cannot open study "{study.name}"\'s database: {error}') from None

    def load(self, study: Study, address: str | None = None) -> optuna.Study:
        storage = self.storage(study, address)
        try:
            return optuna.load_study(study_name=study.optuna_name, storage=storage)
        except KeyError:
            raise CliError(
                f'the database of study "{study.name}" holds no Optuna study "{study.optuna_name}" yet'
            ) from None

    def _local_file(self, content: str, suffix: str) -> str:
        """``content`` in a private temporary file that lives as long as this session."""
        handle, name = tempfile.mkstemp(prefix="kubectl-hpo-", suffix=suffix)
        with os.fdopen(handle, "w") as file:
            file.write(content)
        self._forwards.callback(Path(name).unlink, missing_ok=True)
        return name

    def _port_forward(self, namespace: str, service: str, port: int) -> int:
        """``kubectl port-forward svc/<service> :<port>`` for this session; the local port it chose."""
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise CliError(
                f"the study's database is the cluster Service {service}.{namespace}, which this machine cannot "
                f"resolve, and kubectl is not on PATH to port-forward it: run kubectl port-forward -n {namespace} "
                f"svc/{service} 3306:{port} and pass --db-address 127.0.0.1:3306"
            )
        command = [kubectl, "port-forward", "-n", namespace, f"svc/{service}", f":{port}"]
        if self.kubeconfig:
            command += ["--kubeconfig", self.kubeconfig]
        if self.context:
            command += ["--context", self.context]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._forwards.callback(_stop, process)
        assert process.stdout is not None
        line = process.stdout.readline()  # "Forwarding from 127.0.0.1:41234 -> 3306", or EOF when it failed
        if match := re.search(r"127\.0\.0\.1:(\d+)", line):
            return int(match[1])
        assert process.stderr is not None
        raise CliError(
            f"could not port-forward to the study's database (Service {service} in namespace {namespace}): "
            f"{process.stderr.read().strip() or line.strip()}"
        )

    # -- trial pods ------------------------------------------------------------------------------

    def trial_pods(self, study: Study, trial: int | None = None) -> list[Any]:
        selector = f"{STUDY_LABEL}={study.name}" + (f",{TRIAL_LABEL}={trial}" if trial is not None else "")
        try:
            return list(self.core.list_namespaced_pod(study.namespace, label_selector=selector).items)
        except ApiException as error:
            raise _refused(error, "list pods", study.namespace) from None

    def placements(self, study: Study) -> dict[int, Placement]:
        """Where each trial's latest attempt ran: live pods, else the scheduler's Events (empty if not allowed)."""
        pods: list[tuple[str, dict[str, str], str]] = [
            (str(p.metadata.name), dict(p.metadata.labels or {}), str(p.spec.node_name or ""))
            for p in self.trial_pods(study)
        ]
        try:
            events = self.core.list_namespaced_event(study.namespace, field_selector="reason=Scheduled").items
        except ApiException:
            events = []  # Events are a convenience: without them, finished trials show no node
        messages = [e.message or "" for e in events if (e.involved_object.name or "").startswith(f"{study.name}-")]
        return placements(study.name, pods, messages, (STUDY_LABEL, TRIAL_LABEL, ATTEMPT_LABEL))


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
    except OSError:
        return False
    return True


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _unreachable(study: Study, where: str, reason: str) -> str:
    host = where.rsplit(":", 1)[0]
    service = service_of(host)
    if service:
        how = (
            f"kubectl port-forward -n {service[0]} svc/{service[1]} 3306:{where.rsplit(':', 1)[1]} "
            "and add --db-address 127.0.0.1:3306"
        )
    else:
        how = (
            "reach that address from here (a VPN, or kubectl port-forward to a pod or Service that forwards to "
            "it) and add --db-address <host:port> of your tunnel"
        )
    return f'cannot reach study "{study.name}"\'s database at {where} from this machine ({reason}). To reach it: {how}'


def _refused(error: ApiException, what: str, namespace: str | None) -> CliError:
    where = f' in namespace "{namespace}"' if namespace else " in all namespaces"
    scope = f"-n {namespace}" if namespace else "-A"
    if error.status == 403:
        return CliError(f"you may not {what}{where} (check with: kubectl auth can-i {what} {scope})")
    if error.status == 401:
        return CliError(f"the API server did not accept your credentials ({what}{where}): log in again")
    return CliError(f"the API server refused {what}{where}: {error.status} {error.reason}")


@contextlib.contextmanager
def cluster(context: str | None, kubeconfig: str | None) -> Iterator[Cluster]:
    """A :class:`Cluster` whose port-forwards stop when the command ends."""
    session = Cluster(context, kubeconfig)
    try:
        yield session
    finally:
        session.close()
