"""Connection faults for worker tests: end sessions, stop a whole server.

Only sessions on this run's test database are ever touched, never the
test's own; the server that gets stopped is a throwaway one started here.
"""

from __future__ import annotations

import copy
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.db import DatabaseError, connection

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")


def database_settings(**changes: Any) -> dict[str, Any]:
    """Return a ``DATABASES`` override: the test database with ``changes``."""
    entry = copy.deepcopy(connection.settings_dict)
    options = dict(entry.get("OPTIONS") or {})
    options.update(changes.pop("OPTIONS", {}))
    entry.update(changes, OPTIONS=options)
    return {"DATABASES": {"default": entry}}


def labelled(label: str, **changes: Any) -> dict[str, Any]:
    """Return a ``DATABASES`` override whose sessions carry ``label``.

    PostgreSQL shows the label as the application name, so a test ends
    only the sessions of the worker it started. Other databases get the
    changes alone.
    """
    if connection.vendor == "postgresql":
        changes["OPTIONS"] = {"application_name": label}
    return database_settings(**changes)


def new_label() -> str:
    return f"klerk-test-{uuid.uuid4().hex[:12]}"


def sessions(label: str = "") -> list[int]:
    """Return the ids of other sessions on the test database."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                " AND (%s = '' OR application_name = %s)",
                [label, label],
            )
        else:
            cursor.execute(
                "SELECT id FROM information_schema.processlist"
                " WHERE db = DATABASE() AND id <> CONNECTION_ID()"
            )
        return [row[0] for row in cursor.fetchall()]


def listener_sessions(label: str = "") -> list[int]:
    """Return the PostgreSQL sessions that are listening for wake-ups."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND query = 'LISTEN klerk_jobs'"
            " AND (%s = '' OR application_name = %s)",
            [label, label],
        )
        return [row[0] for row in cursor.fetchall()]


def end_sessions(ids: list[int]) -> None:
    """Make the server drop the sessions ``ids``, as a restart would."""
    with connection.cursor() as cursor:
        for session in ids:
            if connection.vendor == "postgresql":
                cursor.execute("SELECT pg_terminate_backend(%s)", [session])
                continue
            try:
                cursor.execute(f"KILL CONNECTION {int(session)}")
            except DatabaseError:
                pass  # it ended on its own meanwhile


def postgres_binaries_missing() -> str:
    """Return why no throwaway PostgreSQL server can start, or ''."""
    if not (POSTGRES_BIN / "pg_ctl").exists():
        return f"no PostgreSQL server binaries in {POSTGRES_BIN}"
    if shutil.which("runuser") is None or os.geteuid() != 0:
        return "starting a PostgreSQL server needs root and runuser"
    return ""


class ThrowawayPostgres:
    """A PostgreSQL server of its own, in a temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = _free_port()

    def _run(self, *command: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *command],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )

    def init(self) -> None:
        shutil.chown(self.root, "postgres")
        self._run(
            str(POSTGRES_BIN / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run(
            str(POSTGRES_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._run(
            str(POSTGRES_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-m",
            "fast",
            "-w",
            "stop",
        )

    def connect(self, name: str = "postgres") -> Any:
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            dbname=name,
            autocommit=True,
        )

    def create_database(self, name: str) -> dict[str, Any]:
        """Create database ``name``; return the settings that point at it."""
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return database_settings(
            HOST="127.0.0.1",
            PORT=str(self.port),
            NAME=name,
            USER="postgres",
            PASSWORD="",
        )

    def fetch_one(self, name: str, sql: str, params: list[Any]) -> Any:
        with self.connect(name) as conn:
            row = conn.execute(sql, params).fetchone()
        return row[0] if row else None


@contextmanager
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    """Start a PostgreSQL server on a free port; remove it afterwards."""
    root = Path(tempfile.mkdtemp(prefix="klerk-pg-"))
    server = ThrowawayPostgres(root)
    try:
        server.init()
        server.start()
        yield server
    finally:
        try:
            server.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped by the test
        shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
