"""Time limits: stopping an attempt that runs past its job's timeout.

Python cannot kill a thread, so an attempt on a worker's job thread is
stopped by raising JobTimeout in that thread (``PyThreadState_SetAsyncExc``).
The exception arrives at the thread's next Python instruction: a call
blocked in C (a long ``time.sleep``, a socket read without a timeout)
finishes first. The attempt is recorded only once the thread has left the
job's code, and its lease is renewed until then, so the job never runs
twice at once. An ``async def`` job's task is cancelled at the limit
instead, and gets the exception in its thread only if it is still running
a moment later. A job in its own process is killed (see ``job_processes``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from collections.abc import Collection

from django.db import connections

from .cancellation import Stop
from .exceptions import JobTimeout

logger = logging.getLogger(__name__)

# How long an ``async def`` job has to end after its task was cancelled
# before the exception is raised in its thread as well.
ASYNC_GRACE_SECONDS = 2.0


def error_text(attempt: int, seconds: float) -> str:
    """Return the error recorded for an attempt stopped by its time limit."""
    return f"JobTimeout: attempt {attempt} ran past its {seconds:g} s time limit"


class ThreadLimit:
    """Raise JobTimeout in the current thread once ``seconds`` have passed.

    Used as a context manager around the job's code. Leaving it ends the
    limit: no exception is raised later, and one raised but not yet
    delivered is withdrawn, so it cannot strike the worker's own code.
    """

    def __init__(
        self, seconds: float, stop: Stop, grace: float = 0.0, job_id: int = 0
    ) -> None:
        self.seconds = seconds
        self.job_id = job_id
        self.stop = stop
        self.grace = grace
        self.thread_id = 0
        self.ended = False
        self.raised = False
        self.outer: set[str] = set()
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def __enter__(self) -> ThreadLimit:
        self.thread_id = threading.get_ident()
        # A transaction the caller holds, as a test calling run_jobs does,
        # is the caller's to end; a worker's job thread holds none.
        self.outer = {
            conn.alias
            for conn in connections.all(initialized_only=True)
            if conn.in_atomic_block
        }
        self._timer = threading.Timer(self.seconds + self.grace, self._expire)
        self._timer.daemon = True
        self._timer.name = "klerk-time-limit"
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._timer is not None:
                self._timer.cancel()
            with self._lock:
                self.ended = True
                if self.raised:
                    _raise_in(self.thread_id, None)
        finally:
            # Even an exception withdrawn here may have struck first.
            if self.raised:
                replace_connections(keep=self.outer)

    def _expire(self) -> None:
        with self._lock:
            # A job that returned just now ran within its limit.
            if self.ended:
                return
            self.stop.time_out()
            self.raised = True
            _raise_in(self.thread_id, JobTimeout)
        logger.warning(
            "attempt past its time limit, stopping its thread job_id=%s timeout_s=%s",
            self.job_id,
            self.seconds,
        )


def limit(
    seconds: float | None, stop: Stop, is_async: bool = False, job_id: int = 0
) -> contextlib.AbstractContextManager[object]:
    """Return the limit for an attempt on this thread; none if no timeout."""
    if seconds is None:
        return contextlib.nullcontext()
    grace = ASYNC_GRACE_SECONDS if is_async else 0.0
    return ThreadLimit(seconds, stop, grace, job_id)


def replace_connections(keep: Collection[str] = ()) -> None:
    """Close this thread's database connections; its next query opens anew.

    An exception raised in the thread may have struck inside a database
    driver or inside Django's transaction handling, leaving a connection
    half way through a command, or marked as inside a transaction that has
    ended. Neither the worker's outcome write nor the thread's next job
    may inherit it, and closing it in the ordinary way may fail on that
    very state, so the raw connection is closed and the wrapper dropped.
    Those of the aliases in ``keep`` are left alone.
    """
    for conn in connections.all(initialized_only=True):
        if conn.alias in keep:
            continue
        raw = conn.connection
        del connections[conn.alias]
        if raw is None:
            continue
        try:
            raw.close()
        except Exception:
            logger.debug("connection not closed cleanly alias=%s", conn.alias)


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    # None withdraws an exception raised but not yet delivered.
    value = ctypes.py_object(exc) if exc is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), value)
