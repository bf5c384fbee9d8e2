"""The testbed's MariaDB as its admin sees it, for tests that check what the operator made there."""

from __future__ import annotations

from typing import Any

import pymysql

from hpo_operator import database


def admin_server(env: dict[str, str]) -> database.Server:
    """The operator's default server and admin, from `.testbed/env`."""
    return database.Server(
        env["HPO_MYSQL_HOST"], int(env["HPO_MYSQL_PORT"]), env["HPO_MYSQL_USER"], env["HPO_MYSQL_PASSWORD"]
    )


def admin(server: database.Server) -> pymysql.Connection[Any]:
    return pymysql.connect(
        host=server.host, port=server.port, user=server.admin_user, password=server.admin_password, autocommit=True
    )


def exists(server: database.Server, name: str) -> bool:
    with admin(server) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = %s", (name,))
        return bool(cursor.fetchone() == (1,))


def users(server: database.Server, *names: str) -> set[str]:
    """Which of these MySQL users exist."""
    with admin(server) as connection, connection.cursor() as cursor:
        cursor.execute(f"SELECT user FROM mysql.user WHERE user IN ({', '.join(['%s'] * len(names))})", names)
        return {row[0] for row in cursor.fetchall()}


def recorded(server: database.Server, namespace: str, name: str) -> database.StudyNames | None:
    """The names the server's record gives a study (what the operator provisioned for it)."""
    with admin(server) as connection, connection.cursor() as cursor:
        cursor.execute(
            f"SELECT database_name, user_name, reader_name FROM `{database.REGISTRY}`.studies "
            "WHERE namespace = %s AND name = %s",
            (namespace, name),
        )
        row = cursor.fetchone()
        return database.StudyNames(*row) if row else None


def legacy_study(server: database.Server, namespace: str, name: str, trials: int = 2) -> tuple[str, str]:
    """A study as the operator provisioned it before names were collision-proof: a database with the
    32-bit name, one user of the same name with ALL PRIVILEGES, and ``trials`` complete trials.
    Returns the study's storage URL and password (what its Secret `<name>-storage` held)."""
    import optuna

    legacy, password = database.legacy_database(namespace, name), database.new_password()
    with admin(server) as connection, connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{legacy}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        cursor.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (legacy, password))
        cursor.execute(f"GRANT ALL PRIVILEGES ON `{legacy}`.* TO %s@'%%'", (legacy,))
    url = f"mysql+pymysql://{legacy}:{password}@{server.host}:{server.port}/{legacy}?charset=utf8mb4"
    study = optuna.create_study(storage=url, study_name=name)
    study.optimize(lambda t: (t.suggest_float("x", -5, 5) - 2) ** 2, n_trials=trials)
    return url, password


def drop_legacy(server: database.Server, namespace: str, name: str) -> None:
    legacy = database.legacy_database(namespace, name)
    with admin(server) as connection, connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{legacy}`")
        cursor.execute("DROP USER IF EXISTS %s@'%%'", (legacy,))
