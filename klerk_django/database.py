"""What the job tables need from each database: its clock and write lock.

Run times are compared in one clock. On PostgreSQL, and on MySQL or MariaDB
storing UTC (``USE_TZ = True`` and no ``TIME_ZONE`` for the database), that
is the database server's clock, so workers on machines with skewed clocks
agree. SQLite is embedded, so the machine's clock is the database's; MySQL
storing local wall time (``USE_TZ = False``, or a database ``TIME_ZONE``)
keeps a zone the server cannot know, so Django's clock is used there too.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from django.conf import settings
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import DateTimeField, Func, Value
from django.utils import timezone

from .conf import settings as klerk_settings


def alias() -> str:
    """Return the database alias that holds the job tables."""
    return str(klerk_settings.DATABASE)


def connection() -> BaseDatabaseWrapper:
    """Return the connection for the job tables in this thread."""
    return connections[alias()]


class DatabaseNow(Func):
    """The database server's current time, for comparisons in SQL."""

    output_field = DateTimeField()
    template = "CURRENT_TIMESTAMP"

    def as_postgresql(self, compiler: Any, conn: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, conn, template="STATEMENT_TIMESTAMP()", **extra)

    def as_mysql(self, compiler: Any, conn: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, conn, template="UTC_TIMESTAMP(6)", **extra)


def uses_database_clock(conn: BaseDatabaseWrapper) -> bool:
    """Return whether run times are compared with the server's clock."""
    if conn.vendor == "postgresql":
        return True
    # UTC_TIMESTAMP() matches stored times only when they are stored in UTC.
    return (
        conn.vendor == "mysql" and bool(settings.USE_TZ) and conn.timezone_name == "UTC"
    )


def now(conn: BaseDatabaseWrapper | None = None) -> Any:
    """Return an expression for the current time in the jobs' clock."""
    conn = conn or connection()
    if uses_database_clock(conn):
        return DatabaseNow()
    return Value(timezone.now(), output_field=DateTimeField())


def later(seconds: float, conn: BaseDatabaseWrapper | None = None) -> Any:
    """Return an expression for ``seconds`` from now in the jobs' clock."""
    conn = conn or connection()
    delta = timedelta(seconds=seconds)
    if uses_database_clock(conn):
        return DatabaseNow() + Value(delta)
    return Value(timezone.now() + delta, output_field=DateTimeField())


def python_now() -> datetime:
    """Return Django's current time, aware or naive as USE_TZ says."""
    return timezone.now()


def current_time(conn: BaseDatabaseWrapper | None = None) -> datetime:
    """Return the current time in the jobs' clock, as a value.

    For a time that several statements must share: asks the server when
    it keeps the clock, as ``now`` does in SQL.
    """
    conn = conn or connection()
    if not uses_database_clock(conn):
        return timezone.now()
    query = "SELECT STATEMENT_TIMESTAMP()"
    if conn.vendor != "postgresql":
        query = "SELECT UTC_TIMESTAMP(6)"
    with conn.cursor() as cursor:
        cursor.execute(query)
        value = cursor.fetchone()[0]
    if timezone.is_naive(value):
        return timezone.make_aware(value, dt_timezone.utc)
    return value


def take_write_lock(conn: BaseDatabaseWrapper) -> None:
    """Make SQLite take its write lock now, at the start of a transaction.

    SQLite starts transactions deferred: one that reads first and writes
    later can fail at once with "database is locked" when another writer got
    in between, whatever the busy timeout. A write as the first statement
    waits for the lock instead. Other databases lock rows and need nothing.
    """
    if conn.vendor != "sqlite":
        return
    with conn.cursor() as cursor:
        cursor.execute("UPDATE klerk_command_lock SET key = key WHERE 0 = 1")
