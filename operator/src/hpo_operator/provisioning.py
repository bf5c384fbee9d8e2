"""A study's storage: its server and admin, its database and users, its two Secrets and its Optuna study.

Runs on a study's first pass once its spec is valid (again, idempotently, after every operator
start) and when it is deleted. The database work itself is `database.py`'s; this module decides
which server and admin a study gets (the operator's admin on the operator's server only, see
`policy.py`), keeps the study's Secrets in step with its database, and creates the Optuna study.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

from hpo_operator import database, kube, metrics, redaction
from hpo_operator import status as st
from hpo_operator.models import READONLY_SECRET_SUFFIX, HpoStudySpec, TlsMode
from hpo_operator.settings import Settings
from hpo_operator.storage import StudyStore


class ProvisioningProblem(Exception):
    """The study's database cannot be made ready yet; `reason` is the DatabaseReady condition's reason."""

    def __init__(self, message: str, reason: str = st.REASON_DATABASE_ERROR) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Provisioned:
    """How the operator reaches a provisioned study's Optuna storage (as the study's own user)."""

    url: str = field(repr=False)
    connect_args: dict[str, Any] = field(repr=False)
    database: str
    tls: bool  # its server's connections use TLS (trial pods mount the CA)


def secret_names(name: str) -> tuple[str, str]:
    """The study's storage Secret (read-write, for trial pods) and its read-only twin."""
    return f"{name}-storage", f"{name}{READONLY_SECRET_SUFFIX}"


def server(settings: Settings, namespace: str, spec: HpoStudySpec) -> database.Server:
    """The study's server, with the admin that belongs to it (the policy has checked the pairing)."""
    default, storage = settings.default_server, spec.storage
    if storage.admin_secret is None:
        return default
    where = f"Secret {storage.admin_secret.name} (spec.storage.adminSecret)"
    secret = kube.read_secret(namespace, storage.admin_secret.name)
    if secret is None or not secret.get("username") or not secret.get("password"):
        found = "does not exist" if secret is None else "lacks the key username or password"
        raise ProvisioningProblem(
            f"{where} {found} in namespace {namespace}; create it with the keys username "
            "and password of an admin of the study's MySQL server",
            st.REASON_ADMIN_SECRET,
        )
    redaction.remember(secret["password"])
    default_server = settings.policy.uses_default_server(storage)
    tls = default.tls if default_server else _study_tls(namespace, spec)
    return database.Server(
        storage.host or default.host, storage.port or default.port, secret["username"], secret["password"], tls
    )


def _study_tls(namespace: str, spec: HpoStudySpec) -> database.Tls:
    tls = spec.storage.tls
    if tls is None:
        return database.Tls()
    ref = tls.ca_secret
    pem = (kube.read_secret(namespace, ref.name) or {}).get(ref.key, "")
    try:
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError):
        raise ProvisioningProblem(
            f"key {ref.key} of Secret {ref.name} (spec.storage.tls.caSecret) is missing or "
            "not a PEM certificate; put the CA that signed the server's certificate there",
            st.REASON_TLS_CA,
        ) from None
    return database.Tls(ca_pem=pem, verify_identity=tls.mode is TlsMode.VERIFY_IDENTITY)


def provision(settings: Settings, namespace: str, name: str, spec: HpoStudySpec, owner: dict[str, Any]) -> Provisioned:
    """Make the database, its users, the two storage Secrets and the Optuna study (all idempotent)."""
    study_server = server(settings, namespace, spec)
    writer_name, reader_name = secret_names(name)
    writer = kube.read_secret(namespace, writer_name) or {}
    reader = kube.read_secret(namespace, reader_name) or {}
    credentials = database.Credentials(
        password=writer.get("password") or database.new_password(),
        reader_password=reader.get("password") or database.new_password(),
        claimed_database=writer.get("database"),
    )
    redaction.remember(credentials.password, credentials.reader_password)
    try:
        with metrics.DATABASE_LATENCY.time():
            names = database.provision(study_server, namespace, name, credentials)
    except database.OwnershipConflict as error:
        raise ProvisioningProblem(str(error), st.REASON_DATABASE_CONFLICT) from error
    except database.DatabaseError as error:
        raise ProvisioningProblem(str(error)) from error
    tls = {database.TLS_CA_KEY: study_server.tls.ca_pem} if study_server.tls.ca_pem else {}
    urls = {}
    for secret, user, password in (
        (writer_name, names.user, credentials.password),
        (reader_name, names.reader, credentials.reader_password),
    ):
        urls[secret] = database.storage_url(study_server, user, names.database, password)
        kube.ensure_secret(
            namespace,
            secret,
            {"url": urls[secret], "username": user, "password": password, "database": names.database, **tls},
            owner=owner,
        )
    url, connect_args = urls[writer_name], database.connect_args(study_server.tls)
    try:
        StudyStore.create(url, connect_args, name, spec)
    except Exception as error:
        raise ProvisioningProblem(
            f"cannot create the Optuna study in database {names.database}: "
            f"{redaction.redact(str(error)).splitlines()[0]}"
        ) from error
    return Provisioned(url, connect_args, names.database, study_server.tls.enabled)


def drop(
    settings: Settings, namespace: str, name: str, spec: HpoStudySpec, timeout: float | None = None
) -> database.StudyNames | None:
    """Drop the study's database and users (only what the server records as the study's); idempotent.

    Raises:
        ProvisioningProblem: The server or the admin Secret cannot be used now (within ``timeout``).
    """
    try:
        return database.drop(server(settings, namespace, spec), namespace, name, timeout)
    except database.DatabaseError as error:
        raise ProvisioningProblem(str(error)) from error
