"""Database provisioning: each study gets its own MySQL database, a read-write and a read-only user.

Runs when a study is first validated (again, idempotently, after every operator start) and when it
is deleted under policy Delete. The admin credentials are used here and nowhere else, and only on
the server they belong to (the caller decides which server that is; see `policy.py`).

Which database belongs to which study is recorded on the server itself, in the admin-only table
`hpo_operator.studies`, when a study is first provisioned. Names are derived from namespace/name
with a 130-bit hash, so two studies cannot be made to share them; the record makes that a rule
rather than a probability: provisioning never touches a database, or the password of a user, that
the record gives to another study. Studies provisioned before the record existed used a 32-bit
hash (`legacy_database`); such a database is adopted only by the study that proves it owns it, by
logging in with the password in its own storage Secret.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import pymysql
import pymysql.cursors

REGISTRY = "hpo_operator"
"""The admin-only database where each server records which study owns which database."""
TLS_CA_DIR = "/var/run/hpo/storage-tls"
TLS_CA_KEY = "ca.crt"
TLS_CA_PATH = f"{TLS_CA_DIR}/{TLS_CA_KEY}"
"""Where trial pods (and the dashboard) find the CA of a TLS-enabled study server (key `ca.crt` of its Secret)."""
CONNECT_TIMEOUT_SECONDS = 10
READ_WRITE_TIMEOUT_SECONDS = 30
"""A hung server fails a statement after this long instead of stalling the study's pass forever.

It bounds each wait for the server's next bytes, not a whole query: the operator's statements are
small, and a large read (the sampler's history) keeps bytes flowing. A pass may make two attempts (the
pool's pre-ping, then the statement), so a frozen server shows as `DatabaseUnavailable` within a minute."""

# Optuna's storage reads and writes rows (SELECT ... FOR UPDATE needs UPDATE); the operator's admin
# creates the tables, so the study's own user needs no DDL at all.
WRITER_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
READER_PRIVILEGES = ("SELECT",)
# MySQL limits a database name, and the GRANT pattern naming it, to 64 characters; in the pattern every
# `_` is escaped (`\_`), so each counts twice. `hpo\_` + slug + `\_` + 26 hash characters leave the slug 31.
_SLUG_PATTERN_LENGTH = 31
_HASH_LENGTH = 26  # base32: 130 bits
_LEGACY_SLUG_LENGTH = 18


class DatabaseError(Exception):
    """The MySQL server refused or could not be reached; the message says which and what to do."""


class OwnershipConflict(DatabaseError):
    """The database a study's Secret names is not that study's; nothing was changed."""


class CleartextRefused(pymysql.err.OperationalError):
    """The server asked for the password in clear text, which the operator never sends."""


@dataclass(frozen=True)
class Tls:
    """TLS to a MySQL server: off (no CA), or verified against ``ca_pem`` and, by default, the host name."""

    ca_pem: str | None = field(default=None, repr=False)
    verify_identity: bool = True

    @property
    def enabled(self) -> bool:
        return self.ca_pem is not None

    def context(self) -> ssl.SSLContext | None:
        if self.ca_pem is None:
            return None
        context = ssl.create_default_context(cadata=self.ca_pem)
        context.check_hostname = self.verify_identity
        return context


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    admin_user: str
    admin_password: str = field(repr=False)  # never printed, even in a traceback
    tls: Tls = field(default_factory=Tls)


@dataclass(frozen=True)
class StudyNames:
    """A study's database and its two users (read-write for trial pods and the operator, read-only)."""

    database: str
    user: str
    reader: str


@dataclass(frozen=True)
class Credentials:
    """The passwords a study's Secrets hold, and the database its storage Secret claims (if any)."""

    password: str = field(repr=False)
    reader_password: str = field(repr=False)
    claimed_database: str | None = None


def _hash(namespace: str, name: str) -> str:
    # Kubernetes names cannot contain "/", so "namespace/name" is unambiguous.
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    return base64.b32encode(digest).decode().lower()[:_HASH_LENGTH]


def _slug(namespace: str, name: str, length: int, underscore_width: int = 1) -> str:
    """The readable part of a name: lower-case, `_` between words, at most ``length`` wide where each `_`
    is ``underscore_width`` wide."""
    slug = re.sub(r"[^a-z0-9]+", "_", f"{namespace}_{name}".lower()).strip("_")
    width, end = 0, 0
    while end < len(slug) and width + (underscore_width if slug[end] == "_" else 1) <= length:
        width += underscore_width if slug[end] == "_" else 1
        end += 1
    return slug[:end].strip("_")


def names_for(namespace: str, name: str) -> StudyNames:
    """A new study's names: `hpo_<slug>_<hash>` (database), `hpo_<hash>` and `hpo_<hash>_r` (users).

    The slug keeps a database recognisable to a DBA; the hash alone identifies it. User names stay
    within MySQL 8's 32 characters.
    """
    digest = _hash(namespace, name)
    return StudyNames(
        database=f"hpo_{_slug(namespace, name, _SLUG_PATTERN_LENGTH, underscore_width=2)}_{digest}",
        user=f"hpo_{digest}",
        reader=f"hpo_{digest}_r",
    )


def legacy_database(namespace: str, name: str) -> str:
    """The database (and user) name of a study provisioned before names were collision-proof."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:8]
    return f"hpo_{_slug(namespace, name, _LEGACY_SLUG_LENGTH)}_{digest}"


def storage_url(server: Server, user: str, database: str, password: str) -> str:
    """A study user's SQLAlchemy URL; the password is percent-encoded (Optuna passes the URL through
    str.format, so it must not contain raw braces). With TLS, pods find the CA at `TLS_CA_PATH`."""
    query: dict[str, str] = {"charset": "utf8mb4"}
    if server.tls.enabled:
        query |= {"ssl_ca": TLS_CA_PATH, "ssl_check_hostname": str(server.tls.verify_identity).lower()}
    return (
        f"mysql+pymysql://{user}:{quote(password, safe='')}@{server.host}:{server.port}/{database}?{urlencode(query)}"
    )


def new_password() -> str:
    """48 hexadecimal characters from the operating system's CSPRNG (URL-safe, 192 bits)."""
    return secrets.token_hex(24)


class _RefuseCleartext:
    """A PyMySQL auth-plugin handler that refuses to send the password in clear text.

    PyMySQL answers a server's `mysql_clear_password` (or `dialog`) request with the bare password,
    so a hostile server — or anyone on the path — would simply be handed it.
    """

    def __init__(self, connection: pymysql.connections.Connection) -> None:
        self.server = f"{connection.host}:{connection.port}"

    def authenticate(self, _packet: object) -> None:
        raise CleartextRefused(
            2059,
            f"{self.server} asked for the password in clear text (mysql_clear_password "
            "or dialog authentication); refused: use a password plugin that does not "
            "send it, such as mysql_native_password or caching_sha2_password",
        )


REFUSED_PLUGINS: dict[str, type] = {"mysql_clear_password": _RefuseCleartext, "dialog": _RefuseCleartext}


def connect_args(tls: Tls, timeout: float | None = None) -> dict[str, Any]:
    """PyMySQL arguments for every connection the operator makes: timeouts (each at most ``timeout``),
    no cleartext, TLS if set."""
    wait = READ_WRITE_TIMEOUT_SECONDS if timeout is None else max(1, min(READ_WRITE_TIMEOUT_SECONDS, round(timeout)))
    args: dict[str, Any] = {
        "connect_timeout": min(CONNECT_TIMEOUT_SECONDS, wait),
        "read_timeout": wait,
        "write_timeout": wait,
        "auth_plugin_map": REFUSED_PLUGINS,
    }
    context = tls.context()
    if context is not None:
        args["ssl"] = context
    return args


def _refusal(error: pymysql.MySQLError) -> str:
    return str(error.args[-1]) if error.args else type(error).__name__


@contextmanager
def _admin(server: Server, timeout: float | None = None) -> Iterator[pymysql.cursors.Cursor]:
    try:
        connection = pymysql.connect(
            host=server.host,
            port=server.port,
            user=server.admin_user,
            password=server.admin_password,
            autocommit=True,
            **connect_args(server.tls, timeout),
        )
    except pymysql.MySQLError as error:
        raise DatabaseError(
            f"cannot connect to MySQL at {server.host}:{server.port} as {server.admin_user}: {_refusal(error)}; "
            "check spec.storage (or the operator's default server) and the admin Secret"
        ) from error
    try:
        with connection.cursor() as cursor:
            yield cursor
    except pymysql.MySQLError as error:
        raise DatabaseError(
            f"MySQL at {server.host}:{server.port} refused: {_refusal(error)}; the admin user "
            "needs CREATE, DROP, CREATE USER and GRANT OPTION"
        ) from error
    finally:
        connection.close()


def _can_log_in(server: Server, user: str, password: str, database: str) -> bool:
    try:
        pymysql.connect(
            host=server.host,
            port=server.port,
            user=user,
            password=password,
            database=database,
            **connect_args(server.tls),
        ).close()
    except pymysql.MySQLError:
        return False
    return True


def _ensure_registry(cursor: pymysql.cursors.Cursor) -> None:
    cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{REGISTRY}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS `{REGISTRY}`.studies ("
        " namespace VARCHAR(63) NOT NULL, name VARCHAR(253) NOT NULL,"
        " database_name VARCHAR(64) NOT NULL, user_name VARCHAR(80) NOT NULL, reader_name VARCHAR(80) NOT NULL,"
        " created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,"
        " PRIMARY KEY (namespace, name), UNIQUE (database_name), UNIQUE (user_name), UNIQUE (reader_name)"
        ") ENGINE=InnoDB CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    )


def _registered(cursor: pymysql.cursors.Cursor, namespace: str, name: str) -> StudyNames | None:
    cursor.execute(
        f"SELECT database_name, user_name, reader_name FROM `{REGISTRY}`.studies WHERE namespace = %s AND name = %s",
        (namespace, name),
    )
    row = cursor.fetchone()
    return StudyNames(*row) if row else None


def _database_exists(cursor: pymysql.cursors.Cursor, database: str) -> bool:
    cursor.execute("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = %s", (database,))
    row = cursor.fetchone()
    return bool(row and row[0])


def _claim(
    cursor: pymysql.cursors.Cursor, server: Server, namespace: str, name: str, credentials: Credentials
) -> StudyNames:
    """Decide the study's names on its first provisioning and record them; refuse a foreign claim."""
    new = names_for(namespace, name)
    claimed = credentials.claimed_database
    legacy = legacy_database(namespace, name)
    if claimed in (None, new.database):
        names = new
    elif (
        claimed == legacy
        and _database_exists(cursor, legacy)
        and _can_log_in(server, legacy, credentials.password, legacy)
    ):
        names = StudyNames(database=legacy, user=legacy, reader=new.reader)  # provisioned before the record
    else:
        raise OwnershipConflict(
            f"the study's storage Secret names database {claimed}, which this study does not own (it is not the "
            "study's own name, or the Secret's password does not open it); nothing was changed. Delete the "
            "Secret to provision the study's own database"
        )
    try:
        cursor.execute(
            f"INSERT INTO `{REGISTRY}`.studies (namespace, name, database_name, user_name, reader_name) "
            "VALUES (%s, %s, %s, %s, %s)",
            (namespace, name, names.database, names.user, names.reader),
        )
    except pymysql.err.IntegrityError as error:
        if _registered(cursor, namespace, name) == names:  # a concurrent pass of the same study won
            return names
        raise OwnershipConflict(
            f"database {names.database} is recorded for another study; nothing was changed"
        ) from error
    return names


def _grant_pattern(database: str) -> str:
    """`database` quoted for GRANT, where `_` and `%` are wildcards unless escaped."""
    return "`" + database.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "`"


def _set_user(
    cursor: pymysql.cursors.Cursor, user: str, password: str, database: str, privileges: tuple[str, ...], tls: bool
) -> None:
    """Create or update one user: this password, exactly these privileges on this database alone."""
    require = "REQUIRE SSL" if tls else "REQUIRE NONE"
    cursor.execute(f"CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s {require}", (user, password))
    cursor.execute(f"ALTER USER %s@'%%' IDENTIFIED BY %s {require}", (user, password))
    grantee = f"'{user}'@'%'"
    cursor.execute(
        "SELECT privilege_type FROM information_schema.user_privileges WHERE grantee = %s "
        "AND privilege_type <> 'USAGE'",
        (grantee,),
    )
    extra = bool(cursor.fetchall())
    cursor.execute(
        "SELECT table_schema, privilege_type, is_grantable FROM information_schema.schema_privileges "
        "WHERE grantee = %s",
        (grantee,),
    )
    for schema, privilege, grantable in cursor.fetchall():
        # A legacy grant is on the unescaped pattern; anything else than exactly ours is revoked.
        pattern = schema.replace("\\_", "_").replace("\\%", "%")
        extra |= pattern != database or privilege not in privileges or grantable == "YES"
    if extra:  # e.g. a study provisioned with ALL PRIVILEGES before least privilege
        cursor.execute("REVOKE ALL PRIVILEGES, GRANT OPTION FROM %s@'%%'", (user,))
    cursor.execute(f"GRANT {', '.join(privileges)} ON {_grant_pattern(database)}.* TO %s@'%%'", (user,))


def provision(server: Server, namespace: str, name: str, credentials: Credentials) -> StudyNames:
    """Create (or check) the study's database and users; idempotent.

    utf8mb4_bin makes names case-sensitive, so parameters `a` and `A` do not collide. Users require
    TLS when the server's connections use it.

    Raises:
        OwnershipConflict: The study's Secret claims a database that is not the study's.
        DatabaseError: The server cannot be reached or refuses.
    """
    with _admin(server) as cursor:
        _ensure_registry(cursor)
        names = _registered(cursor, namespace, name)
        if names is None:
            names = _claim(cursor, server, namespace, name, credentials)
        elif credentials.claimed_database not in (None, names.database):
            raise OwnershipConflict(
                f"the study's storage Secret names database {credentials.claimed_database}, "
                f"but the study's database is {names.database}; nothing was changed. Delete "
                "the Secret and the operator writes it again"
            )
        cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{names.database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        _set_user(cursor, names.user, credentials.password, names.database, WRITER_PRIVILEGES, server.tls.enabled)
        _set_user(
            cursor, names.reader, credentials.reader_password, names.database, READER_PRIVILEGES, server.tls.enabled
        )
    create_schema(server, names.database)
    return names


def create_schema(server: Server, database: str) -> None:
    """Create Optuna's tables as the admin (idempotent): the study's users may not run DDL."""
    import optuna  # deferred: provisioning is the operator's only use of Optuna's schema code

    engine_kwargs = {
        "connect_args": {"user": server.admin_user, "password": server.admin_password, **connect_args(server.tls)}
    }
    try:
        storage = optuna.storages.RDBStorage(
            f"mysql+pymysql://{server.host}:{server.port}/{database}?charset=utf8mb4", engine_kwargs=engine_kwargs
        )
    except Exception as error:
        raise DatabaseError(
            f"cannot create Optuna's tables in {database} on {server.host}:{server.port}: {type(error).__name__}"
        ) from error
    storage.engine.dispose()


def drop(server: Server, namespace: str, name: str, timeout: float | None = None) -> StudyNames | None:
    """Drop the study's database and users (deletion policy Delete); idempotent.

    Only what the record gives to this study is dropped; None when it holds nothing for it. Each
    statement waits at most ``timeout`` seconds (a hung server must not hold a deletion forever).
    """
    with _admin(server, timeout) as cursor:
        _ensure_registry(cursor)
        names = _registered(cursor, namespace, name)
        if names is None:
            return None
        cursor.execute(f"DROP DATABASE IF EXISTS `{names.database}`")
        cursor.execute("DROP USER IF EXISTS %s@'%%', %s@'%%'", (names.user, names.reader))
        cursor.execute(f"DELETE FROM `{REGISTRY}`.studies WHERE namespace = %s AND name = %s", (namespace, name))
    return names
