"""Run test code in another thread, on that thread's own connection."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import connection, connections

JOIN_TIMEOUT_SECONDS = 60.0


class Background(threading.Thread):
    """Run ``target`` in a thread; ``join`` re-raises what it raised."""

    def __init__(self, target: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.value: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.value = self.target()
        except BaseException as exc:
            self.error = exc
        finally:
            connections.close_all()

    def join(self, timeout: float | None = JOIN_TIMEOUT_SECONDS) -> None:
        super().join(timeout)
        if self.is_alive():
            raise AssertionError(f"thread still running after {timeout}s")
        if self.error is not None:
            raise self.error


def start(target: Callable[[], Any]) -> Background:
    thread = Background(target)
    thread.start()
    return thread


def session_id() -> int:
    """Return the server's id of this thread's database session."""
    sql = {
        "postgresql": "SELECT pg_backend_pid()",
        "mysql": "SELECT CONNECTION_ID()",
    }[connection.vendor]
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return int(cursor.fetchone()[0])


def waits_for_lock(session: int) -> bool:
    """Return whether the session ``session`` is waiting for a row lock."""
    sql = {
        "postgresql": "SELECT count(*) FROM pg_stat_activity "
        "WHERE pid = %s AND wait_event_type = 'Lock'",
        "mysql": "SELECT count(*) FROM information_schema.INNODB_TRX "
        "WHERE trx_mysql_thread_id = %s AND trx_state = 'LOCK WAIT'",
    }[connection.vendor]
    with connection.cursor() as cursor:
        cursor.execute(sql, [session])
        return bool(cursor.fetchone()[0])
