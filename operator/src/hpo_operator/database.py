"""Database provisioning: each study gets its own MySQL database and a user limited to it.

Runs when a study is first validated and when it is deleted under policy Delete. Names are derived
from namespace/name (safe characters, a hash against collisions, within MySQL's length limits), so a
re-run finds what an earlier run made; the admin credentials are used here and nowhere else.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from urllib.parse import quote

import pymysql

# MySQL 8 limits user names to 32 characters (databases to 64); one name fits both.
_SLUG_LENGTH = 18


class DatabaseError(Exception):
    """The MySQL server refused or could not be reached; the message says which and what to do."""


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    admin_user: str
    admin_password: str

    def __repr__(self) -> str:  # never print the password, even in a traceback
        return f"Server(host={self.host!r}, port={self.port}, admin_user={self.admin_user!r})"


def names_for(namespace: str, name: str) -> str:
    """Database and user name of a study: `hpo_<slug>_<hash>`, at most 31 characters of [a-z0-9_].

    The slug keeps names readable; the hash of the exact namespace/name keeps `a-b` and `a_b` apart.
    """
    slug = re.sub(r"[^a-z0-9]+", "_", f"{namespace}_{name}".lower()).strip("_")[:_SLUG_LENGTH].strip("_")
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:8]
    return f"hpo_{slug}_{digest}"


def storage_url(server: Server, database: str, password: str) -> str:
    """The study user's SQLAlchemy URL; the password is percent-encoded (Optuna passes the URL through
    str.format, so it must not contain raw braces)."""
    secret = quote(password, safe="")
    return f"mysql+pymysql://{database}:{secret}@{server.host}:{server.port}/{database}?charset=utf8mb4"


def new_password() -> str:
    return secrets.token_hex(24)


def _connect(server: Server) -> pymysql.connections.Connection:
    try:
        return pymysql.connect(host=server.host, port=server.port, user=server.admin_user,
                               password=server.admin_password, connect_timeout=10, autocommit=True)
    except pymysql.MySQLError as error:
        raise DatabaseError(
            f"cannot connect to MySQL at {server.host}:{server.port} as {server.admin_user}: {error.args[-1]}; "
            "check spec.storage (or the operator's default server) and the admin Secret"
        ) from error


def provision(server: Server, database: str, password: str) -> None:
    """Create the database and its user with privileges on it alone; idempotent.

    utf8mb4_bin makes names case-sensitive, so parameters `a` and `A` do not collide.
    """
    with _connect(server) as connection, connection.cursor() as cursor:
        try:
            cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            cursor.execute("CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s", (database, password))
            cursor.execute("ALTER USER %s@'%%' IDENTIFIED BY %s", (database, password))
            cursor.execute(f"GRANT ALL PRIVILEGES ON `{database}`.* TO %s@'%%'", (database,))
        except pymysql.MySQLError as error:
            raise DatabaseError(f"MySQL refused to provision {database}: {error.args[-1]}; "
                                "the admin user needs CREATE USER and GRANT OPTION") from error


def drop(server: Server, database: str) -> None:
    """Drop the study's database and user (deletion policy Delete); idempotent."""
    with _connect(server) as connection, connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{database}`")
        cursor.execute("DROP USER IF EXISTS %s@'%%'", (database,))


def exists(server: Server, database: str) -> bool:
    with _connect(server) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = %s", (database,))
        row = cursor.fetchone()
        return bool(row and row[0])
