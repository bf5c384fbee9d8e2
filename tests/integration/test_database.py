"""Provisioning on the testbed's MariaDB: each study's users reach their own database and nothing else.

These tests play the tenant: they connect with what a study's Secrets hold and try to read or
change what is not theirs, and they craft the claims a hostile study could make (another study's
database, a name that collided under the former 32-bit naming, a server that asks for the password
in clear text).
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import optuna
import pymysql
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy.engine import make_url

from hpo_operator import database
from tests import mysql
from tests.conftest import TESTBED
from tests.fake_mysql import FakeMySQL
from tests.legacy_names import colliding_studies

pytestmark = pytest.mark.integration

Provision = Callable[..., tuple[database.StudyNames, database.Credentials]]


@pytest.fixture
def server(testbed_env: dict[str, str]) -> database.Server:
    return database.Server(
        testbed_env["HPO_MYSQL_HOST"],
        int(testbed_env["HPO_MYSQL_PORT"]),
        testbed_env["HPO_MYSQL_USER"],
        testbed_env["HPO_MYSQL_PASSWORD"],
    )


@pytest.fixture
def provision(server: database.Server) -> Iterator[Provision]:
    """Provision studies as the operator does; drop everything they got afterwards."""
    made: list[tuple[str, str]] = []

    def make(
        namespace: str, name: str, claimed: str | None = None, password: str | None = None
    ) -> tuple[database.StudyNames, database.Credentials]:
        credentials = database.Credentials(password or database.new_password(), database.new_password(), claimed)
        made.append((namespace, name))
        return database.provision(server, namespace, name, credentials), credentials

    yield make
    for namespace, name in made:
        database.drop(server, namespace, name)


def connect(server: database.Server, user: str, password: str, db: str | None = None) -> pymysql.Connection[Any]:
    return pymysql.connect(
        host=server.host, port=server.port, user=user, password=password, database=db, autocommit=True
    )


def refused(connection: pymysql.Connection[Any], statement: str) -> bool:
    """True when the server denies ``statement`` to this user (an access error, not a typo)."""
    with connection.cursor() as cursor:
        try:
            cursor.execute(statement)
        except pymysql.err.MySQLError as error:
            code = error.args[0]
            assert code in (1044, 1142, 1143, 1227, 1045, 1370), f"{statement}: not an access error: {error}"
            return True
    return False


def namespace() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def test_a_studys_user_reads_and_writes_its_own_database_and_nothing_else(
    server: database.Server, provision: Provision
) -> None:
    ns = namespace()
    mine, credentials = provision(ns, "mine")
    theirs, _ = provision(ns, "theirs")
    url = database.storage_url(server, mine.user, mine.database, credentials.password)
    study = optuna.create_study(storage=url, study_name="mine")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)  # Optuna's storage needs no more

    with connect(server, mine.user, credentials.password, mine.database) as own:
        with own.cursor() as cursor:
            cursor.execute("SHOW DATABASES")
            assert {row[0] for row in cursor.fetchall()} == {mine.database, "information_schema"}
        assert refused(own, f"SELECT * FROM `{theirs.database}`.trials")
        assert refused(own, "SELECT * FROM mysql.user")
        assert refused(own, f"SELECT * FROM `{database.REGISTRY}`.studies")
        assert refused(own, "CREATE DATABASE anything")
        assert refused(own, f"CREATE DATABASE `{mine.database.replace('_', 'x')}`")
        assert refused(own, "CREATE TABLE own_table (x INT)")
        assert refused(own, "DROP TABLE trials")
        assert refused(own, f"GRANT SELECT ON `{mine.database}`.* TO '{theirs.user}'@'%'")


def test_underscores_in_a_study_database_name_are_not_wildcards_of_its_grant(
    server: database.Server, provision: Provision
) -> None:
    names, credentials = provision(namespace(), "wild")
    lookalike = names.database.replace("_", "x")  # what `hpo_..._...` matches when `_` is a wildcard
    with connect(server, server.admin_user, server.admin_password) as admin, admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{lookalike}`")
        cursor.execute(f"CREATE TABLE `{lookalike}`.payroll (salary INT)")
    try:
        with connect(server, names.user, credentials.password, names.database) as own:
            assert refused(own, f"SELECT * FROM `{lookalike}`.payroll")
            assert refused(own, f"INSERT INTO `{lookalike}`.payroll VALUES (1)")
    finally:
        with connect(server, server.admin_user, server.admin_password) as admin, admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE `{lookalike}`")


@pytest.mark.parametrize("name", ["sampler-cmaes", "a-b" * 84 + "a"], ids=["short", "253 characters, 168 dashes"])
def test_a_long_namespace_and_name_with_many_separators_is_provisioned(
    server: database.Server, provision: Provision, name: str
) -> None:
    names, credentials = provision(f"t-chart-{uuid.uuid4().hex[:6]}-{'x-' * 12}x", name)
    url = database.storage_url(server, names.user, names.database, credentials.password)
    optuna.create_study(storage=url, study_name=name[:64]).optimize(lambda t: t.suggest_int("n", 0, 9), n_trials=1)


def test_the_read_only_user_reads_its_study_and_writes_nothing(server: database.Server, provision: Provision) -> None:
    names, credentials = provision(namespace(), "study")
    writer = database.storage_url(server, names.user, names.database, credentials.password)
    optuna.create_study(storage=writer, study_name="study").optimize(lambda t: t.suggest_int("n", 0, 9), n_trials=3)
    reader = database.storage_url(server, names.reader, names.database, credentials.reader_password)
    assert len(optuna.load_study(storage=reader, study_name="study").trials) == 3
    with connect(server, names.reader, credentials.reader_password, names.database) as own:
        assert refused(own, "DELETE FROM trials")
        assert refused(own, "UPDATE trials SET state = 'FAIL'")


def test_provisioning_again_is_harmless_and_keeps_the_password(server: database.Server, provision: Provision) -> None:
    ns = namespace()
    first, credentials = provision(ns, "again")
    second = database.provision(server, ns, "again", credentials)
    assert second == first
    connect(server, first.user, credentials.password, first.database).close()


def test_a_crafted_claim_on_another_studys_database_is_refused_and_changes_nothing(
    server: database.Server, provision: Provision
) -> None:
    victim, victim_credentials = provision(namespace(), "victim")
    attacker_ns = namespace()
    with pytest.raises(database.OwnershipConflict, match=f"names database {victim.database}"):
        provision(attacker_ns, "attacker", claimed=victim.database)
    connect(server, victim.user, victim_credentials.password, victim.database).close()  # password untouched
    with connect(server, server.admin_user, server.admin_password) as admin, admin.cursor() as cursor:
        cursor.execute(
            "SELECT COUNT(*) FROM mysql.user WHERE user = %s", (database.names_for(attacker_ns, "attacker").user,)
        )
        assert cursor.fetchone() == (0,), "nothing was created for the refused claim"


@pytest.fixture
def legacy_study(server: database.Server) -> Iterator[Callable[[str, str], str]]:
    """Studies as the former operator provisioned them (see `tests.mysql.legacy_study`); dropped after."""
    made: list[tuple[str, str]] = []

    def make(ns: str, name: str) -> str:
        made.append((ns, name))
        return mysql.legacy_study(server, ns, name)[1]

    yield make
    for ns, name in made:
        mysql.drop_legacy(server, ns, name)


def test_a_study_provisioned_before_the_upgrade_keeps_its_data_with_least_privilege(
    server: database.Server, provision: Provision, legacy_study: Callable[[str, str], str]
) -> None:
    ns = f"t-{uuid.uuid4().hex[:8]}-victim"
    victim, attacker = colliding_studies(ns, ns + "-x")
    password = legacy_study(ns, victim)
    legacy = database.legacy_database(ns, victim)

    # The colliding study claims the victim's database with a guessed password: refused.
    with pytest.raises(database.OwnershipConflict):
        provision(ns + "-x", attacker, claimed=legacy, password=database.new_password())
    # Without a claim it gets a database of its own, and dropping it leaves the victim's alone.
    theirs, _ = provision(ns + "-x", attacker)
    assert theirs.database != legacy
    database.drop(server, ns + "-x", attacker)

    # The victim's study, with the password its Secret holds, keeps its database and trials.
    names, credentials = provision(ns, victim, claimed=legacy, password=password)
    assert (names.database, names.user) == (legacy, legacy)
    url = database.storage_url(server, names.user, names.database, credentials.password)
    assert len(optuna.load_study(storage=url, study_name=victim).trials) == 2
    with connect(server, names.user, password, names.database) as own:
        assert refused(own, "CREATE DATABASE anything_at_all")
        assert refused(own, "DROP TABLE trials")


def test_drop_removes_only_what_the_record_gives_the_study(server: database.Server, provision: Provision) -> None:
    ns = namespace()
    kept, _ = provision(ns, "kept")
    assert database.drop(server, ns, "never-provisioned") is None
    dropped, _ = provision(ns, "dropped")
    assert database.drop(server, ns, "dropped") == dropped
    with connect(server, server.admin_user, server.admin_password) as admin, admin.cursor() as cursor:
        cursor.execute(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name IN (%s, %s)",
            (kept.database, dropped.database),
        )
        assert cursor.fetchall() == ((kept.database,),)
        cursor.execute("SELECT user FROM mysql.user WHERE user IN (%s, %s)", (dropped.user, dropped.reader))
        assert cursor.fetchall() == ()


def test_the_admin_password_is_never_sent_in_clear_text() -> None:
    hostile = FakeMySQL()
    try:
        with pytest.raises(database.DatabaseError, match="clear text"):
            database.provision(
                database.Server(hostile.host, hostile.port, "hpo_admin", "admin-password-1"),
                "team",
                "study",
                database.Credentials("p" * 12, "r" * 12),
            )
        assert hostile.users() == ["hpo_admin"] and hostile.passwords() == []
    finally:
        hostile.close()


def test_a_storage_url_the_operator_writes_is_one_sqlalchemy_reads_back(server: database.Server) -> None:
    url = make_url(database.storage_url(server, "hpo_u", "hpo_d", "p@ss/w{or}d"))
    assert (url.username, url.password, url.database) == ("hpo_u", "p@ss/w{or}d", "hpo_d")


def _other_ca() -> str:
    """A CA that signed nothing the testbed runs."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone else's CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_with_tls_the_server_must_prove_itself_and_the_studys_users_require_tls(server: database.Server) -> None:
    tls = dataclasses.replace(server, tls=database.Tls(ca_pem=(TESTBED / "pki" / "ca.crt").read_text()))
    ns, credentials = namespace(), database.Credentials(database.new_password(), database.new_password())
    names = database.provision(tls, ns, "tls", credentials)
    try:
        pymysql.connect(
            host=server.host,
            port=server.port,
            user=names.user,
            password=credentials.password,
            **database.connect_args(tls.tls),
        ).close()
        with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
            pymysql.connect(
                host=server.host, port=server.port, user=names.user, password=credentials.password, ssl_disabled=True
            )
        impostor = dataclasses.replace(server, tls=database.Tls(ca_pem=_other_ca()))
        with pytest.raises(database.DatabaseError, match="certificate verify failed"):
            database.provision(impostor, ns, "tls", credentials)
    finally:
        database.drop(tls, ns, "tls")
