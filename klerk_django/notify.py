"""Wake-ups: PostgreSQL notifications that tell idle workers to look now.

A trigger on the job table sends the queue name of inserted ready jobs on
the ``klerk_jobs`` channel when their transaction commits; the payload is
only the queue name, so job size never matters. Notifications are a
shortcut, never a promise: workers poll as well, so a lost notification,
or a pooler that drops LISTEN, only delays a job by the poll interval.
"""

from __future__ import annotations

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
        delay = 1.0
        while not self.stopping.is_set():
            try:
                self._listen()
                delay = 1.0
            except Exception as exc:
                logger.warning(
                    "listener lost its connection, polling meanwhile error=%s",
                    type(exc).__name__,
                )
                self.stopping.wait(delay)
                delay = min(delay * 2, 30.0)

    def _listen(self) -> None:
        wrapper = database.connection()
        conn = wrapper.get_new_connection(wrapper.get_connection_params())
        try:
            conn.autocommit = True
            conn.execute(f"LISTEN {CHANNEL}")
            logger.debug("listening channel=%s", CHANNEL)
            # Wake once after (re)connecting: anything committed while the
            # listener was away produced no notification for it.
            self.wake()
            while not self.stopping.is_set():
                for note in conn.notifies(timeout=1.0):
                    if not self.queues or note.payload in self.queues or not note.payload:
                        self.wake()
        finally:
            conn.close()
