"""Wake-ups: PostgreSQL notifications that tell idle workers to look now.

A trigger on the job table sends the queue name of inserted ready jobs on
the ``klerk_jobs`` channel when their transaction commits; the payload is
only the queue name, so job size never matters. Notifications are a
shortcut, never a promise: workers poll as well, so a lost notification,
or a pooler that drops LISTEN, only delays a job by the poll interval.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Sequence

from . import database
from .conf import settings

logger = logging.getLogger(__name__)

CHANNEL = "klerk_jobs"


def enabled() -> bool:
    return database.connection().vendor == "postgresql" and bool(settings.LISTEN)


def wake_workers(queue: str = "") -> None:
    """Notify listening workers, on commit of the current transaction."""
    if not enabled():
        return
    with database.connection().cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, queue])


class Listener(threading.Thread):
    """Call ``wake`` whenever a job for one of ``queues`` is committed."""

    def __init__(
        self,
        wake: Callable[[], None],
        queues: Sequence[str] | None,
        stopping: threading.Event,
    ) -> None:
        super().__init__(name="klerk-listener", daemon=True)
        self.wake = wake
        self.queues = set(queues or ())
        self.stopping = stopping

    def run(self) -> None:
        self.delay = 1.0
        while not self.stopping.is_set():
            try:
                self._listen()
            except NotifyTimeoutMissing:
                logger.error(
                    "listening needs psycopg 3.2 or later, polling only version=%s",
                    _psycopg_version(),
                )
                return
            except Exception as exc:
                logger.warning(
                    "listener lost its connection, polling meanwhile error=%s "
                    "delay_s=%.0f",
                    type(exc).__name__,
                    self.delay,
                )
                self.stopping.wait(self.delay)
                self.delay = min(self.delay * 2, 30.0)

    def _listen(self) -> None:
        wrapper = database.connection()
        conn = wrapper.get_new_connection(wrapper.get_connection_params())
        try:
            if "timeout" not in inspect.signature(conn.notifies).parameters:
                raise NotifyTimeoutMissing
            conn.autocommit = True
            conn.execute(f"LISTEN {CHANNEL}")
            logger.debug("listening channel=%s", CHANNEL)
            self.delay = 1.0

            # Wake once after (re)connecting: anything committed while the
            # listener was away produced no notification for it.
            self.wake()
            while not self.stopping.is_set():
                for note in conn.notifies(timeout=1.0):
                    if self._concerns_me(note.payload):
                        self.wake()
        finally:
            conn.close()

    def _concerns_me(self, queue: str) -> bool:
        return not queue or not self.queues or queue in self.queues


class NotifyTimeoutMissing(Exception):
    """The driver cannot wait for notifications with a timeout."""


def _psycopg_version() -> str:
    try:
        import psycopg
    except ImportError:
        return "none"
    return str(psycopg.__version__)
