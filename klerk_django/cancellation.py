"""Cancellation: ending jobs that wait, asking running ones to stop.

A ready job is cancelled at once. A running one gets a request: its
``cancel_requested_at`` is set, its worker reads the request with its next
heartbeat and sets the attempt's stop flag, which the job checks with
``cancel_requested()`` or ``raise_if_cancelled()`` without a query. A job
running in its own process is stopped by the worker, hard if need be. An
attempt that ends because of the request ends the job cancelled.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Q, QuerySet
from django.db.models.functions import Coalesce

from . import database
from .exceptions import JobCancelled
from .models import Job, JobStatus

logger = logging.getLogger(__name__)

CANCELLED = "cancelled"
TIMED_OUT = "timed out"
HANDED_BACK = "handed back"


class Stop:
    """Whether and why one running attempt was told to stop.

    The worker's heartbeat and the attempt's time limit set it from other
    threads; the job reads it. The first reason given is kept.
    """

    def __init__(self) -> None:
        self.reason = ""
        # Whether the job saw the cancellation, by checking or raising.
        self.noticed = False
        self._lock = threading.Lock()

    def cancel(self) -> bool:
        """Ask the attempt to stop because of a cancellation."""
        return self._give(CANCELLED)

    def time_out(self) -> bool:
        """Tell the attempt it ran past its time limit."""
        return self._give(TIMED_OUT)

    def hand_back(self) -> bool:
        """Tell the attempt that its stopping worker hands its job back."""
        return self._give(HANDED_BACK)

    def _give(self, reason: str) -> bool:
        with self._lock:
            if self.reason:
                return False
            self.reason = reason
        return True

    @property
    def cancelled(self) -> bool:
        return self.reason == CANCELLED

    @property
    def handed_back(self) -> bool:
        return self.reason == HANDED_BACK


_stop: contextvars.ContextVar[Stop | None] = contextvars.ContextVar(
    "klerk_job_stop", default=None
)


def current_stop() -> Stop | None:
    """Return the stop flag of the attempt running in this context."""
    return _stop.get()


def bind(stop: Stop) -> contextvars.Token[Stop | None]:
    """Make ``stop`` the flag that this context's job checks."""
    return _stop.set(stop)


def unbind(token: contextvars.Token[Stop | None]) -> None:
    _stop.reset(token)


def cancel_requested(refresh: bool = False) -> bool:
    """Return whether someone asked the running job to stop.

    Cheap enough to call in a tight loop: it reads a flag that the worker
    sets when its heartbeat finds the request (every few seconds, see
    ``KLERK_HEARTBEAT_SECONDS``). ``refresh=True`` asks the database now,
    at the cost of one query. Outside a running job it returns False, so
    a job function called directly runs to its end.
    """
    stop = _stop.get()
    if stop is None:
        return False
    if refresh and not stop.reason and _asked_in_database():
        stop.cancel()
    if stop.cancelled:
        stop.noticed = True
        return True
    return False


def raise_if_cancelled(refresh: bool = False) -> None:
    """Raise JobCancelled if someone asked the running job to stop.

    JobCancelled is a BaseException: a plain ``except Exception`` in the
    job lets it pass, and the attempt ends the job cancelled.
    """
    if cancel_requested(refresh):
        raise JobCancelled("cancelled while running")


def _asked_in_database() -> bool:
    from .attempts import current_job

    context = current_job()
    if context is None:
        return False
    held = Job.objects.using(database.alias()).filter(
        pk=context.job_id,
        status=JobStatus.RUNNING,
        worker_id=context.worker_id,
        attempts=context.attempt,
        cancel_requested_at__isnull=False,
    )
    return held.exists()


def requested_among(worker_id: uuid.UUID, job_ids: Iterable[int]) -> set[int]:
    """Return those of ``job_ids`` held by ``worker_id`` asked to stop."""
    ids = list(job_ids)
    if not ids:
        return set()
    asked = Job.objects.using(database.alias()).filter(
        pk__in=ids,
        status=JobStatus.RUNNING,
        worker_id=worker_id,
        cancel_requested_at__isnull=False,
    )
    return set(asked.values_list("pk", flat=True))


@dataclass(frozen=True)
class Cancelled:
    """What a cancellation did: jobs ended, and running jobs asked to stop."""

    ended: int
    asked: int


ELIGIBLE = Q(status__in=[JobStatus.READY, JobStatus.RUNNING])


def cancel(jobs: QuerySet[Job] | Iterable[int], batch_size: int = 1000) -> Cancelled:
    """Cancel ready jobs and ask running ones to stop, in batches.

    Each batch is one transaction that locks its rows first, so a job
    claimed or retried meanwhile is neither missed nor cancelled twice:
    the claim skips locked rows and an outcome write waits for them.
    """
    from .jobs import _batches

    ended = asked = 0
    for batch in _batches(jobs, ELIGIBLE, batch_size):
        batch_ended, batch_asked = _cancel_batch(batch)
        ended += batch_ended
        asked += batch_asked
    logger.info("jobs cancelled count=%s running_asked_to_stop=%s", ended, asked)
    return Cancelled(ended, asked)


def _cancel_batch(batch: list[int]) -> tuple[int, int]:
    db, conn = database.alias(), database.connection()
    with transaction.atomic(using=db):
        database.take_write_lock(conn)
        rows = Job.objects.using(db).select_for_update().filter(ELIGIBLE, pk__in=batch)
        by_status: dict[str, list[int]] = {}
        for pk, status in rows.values_list("pk", "status"):
            by_status.setdefault(status, []).append(pk)

        ready = Job.objects.using(db).filter(
            status=JobStatus.READY, pk__in=by_status.get(JobStatus.READY, [])
        )
        ended = ready.update(
            status=JobStatus.CANCELLED,
            finished_at=database.now(conn),
            active_unique_key=None,
        )
        running = Job.objects.using(db).filter(
            status=JobStatus.RUNNING, pk__in=by_status.get(JobStatus.RUNNING, [])
        )
        # The first request's time is kept: it is when the stop was asked.
        asked = running.update(
            cancel_requested_at=Coalesce("cancel_requested_at", database.now(conn))
        )
    return ended, asked
