"""Leases: how a worker claims jobs, keeps them, and how lost ones return.

A claim is one atomic step: on PostgreSQL and SQLite a single ``UPDATE ...
RETURNING`` whose subquery skips rows locked by other workers (PostgreSQL)
or runs under SQLite's single write lock; on MariaDB and MySQL a ``SELECT
... FOR UPDATE SKIP LOCKED`` and the ``UPDATE`` in one short transaction.
A claimed job carries its worker's id and a lease expiry that heartbeats
push forward. Every later change of that job checks the worker id and the
attempt number it expects, so a worker that lost its lease cannot overwrite
what happened since.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from django.conf import settings as django_settings
from django.db import transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import F
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from . import database, limits, retry
from .conf import settings
from .models import Attempt, Job, JobStatus, Queue

logger = logging.getLogger(__name__)

RETURNED = (
    "id",
    "name",
    "queue",
    "arguments",
    "attempts",
    "max_attempts",
    "backoff_base_seconds",
    "backoff_max_seconds",
    "started_at",
    "timeout_seconds",
)


# Names of limited job functions and queues: the single claim statement
# leaves their jobs to ``limits.claim``.
Excluded = tuple[Sequence[str], Sequence[str]]


@dataclass(frozen=True)
class ClaimedJob:
    """A job a worker holds the lease on, for one attempt."""

    id: int
    name: str
    queue: str
    arguments: Any
    attempt: int
    max_attempts: int
    backoff_base_seconds: float
    backoff_max_seconds: float
    started_at: datetime
    timeout_seconds: float | None = None


def claim(
    worker_id: uuid.UUID,
    queues: Sequence[str] | None,
    limit: int,
    lease_seconds: float | None = None,
) -> list[ClaimedJob]:
    """Claim up to ``limit`` ready jobs, highest priority first.

    Runs in its own short transaction (autocommit for the single-statement
    forms). Raises the database's errors. Jobs under a rate or concurrency
    limit are offered the free slots first, by ``limits.claim``, unless
    this worker found none to start within the poll interval; the single
    statement then fills the rest with jobs under no limit. With no limit
    configured anywhere, that statement is the whole claim.
    """
    if limit < 1:
        return []
    lease_seconds = float(lease_seconds or settings.LEASE_SECONDS)
    plan = limits.current_plan()
    first = bool(plan) and limits.due(worker_id)
    rows: list[tuple[Any, ...]] = []
    if first:
        rows = limits.claim(worker_id, queues, limit, lease_seconds, plan, RETURNED)

    rows += _claim_unlimited(worker_id, queues, limit - len(rows), lease_seconds, plan)
    if plan and not first and len(rows) < limit:
        # No other job wants the slots left: limited jobs may have them.
        free = limit - len(rows)
        rows += limits.claim(worker_id, queues, free, lease_seconds, plan, RETURNED)

    claimed = [_claimed(row) for row in rows]
    claimed.sort(key=lambda job: job.id)
    return claimed


def _claim_unlimited(
    worker_id: uuid.UUID,
    queues: Sequence[str] | None,
    free: int,
    lease_seconds: float,
    plan: limits.Plan,
) -> list[tuple[Any, ...]]:
    if free < 1:
        return []
    conn = database.connection()
    excluded = (sorted(plan.functions), sorted(plan.queues))
    if conn.vendor in ("postgresql", "sqlite"):
        return _claim_returning(conn, worker_id, queues, free, lease_seconds, excluded)
    return _claim_locking(conn, worker_id, queues, free, lease_seconds, excluded)


CLAIM_SQL = """
    UPDATE klerk_job
    SET status = 'running', attempts = attempts + 1, worker_id = %s,
        started_at = {now}, lease_expires_at = {lease}
    WHERE id IN (
        SELECT id FROM klerk_job
        WHERE status = 'ready' {queue_filter} AND run_after <= {now}
            {limited_filter}
            AND queue NOT IN (SELECT name FROM klerk_queue WHERE paused)
        ORDER BY priority DESC, run_after, id
        LIMIT %s {lock}
    )
    RETURNING {returned}
"""


def _claim_returning(
    conn: BaseDatabaseWrapper,
    worker_id: uuid.UUID,
    queues: Sequence[str] | None,
    limit: int,
    lease_seconds: float,
    excluded: Excluded,
) -> list[tuple[Any, ...]]:
    worker = _prep_uuid(worker_id, conn)
    limited_filter, limited_params = _limited_filter(conn, excluded)
    if conn.vendor == "postgresql":
        sql = CLAIM_SQL.format(
            now="STATEMENT_TIMESTAMP()",
            lease="STATEMENT_TIMESTAMP() + make_interval(secs => %s)",
            queue_filter="AND queue = ANY(%s)" if queues else "",
            limited_filter=limited_filter,
            lock="FOR UPDATE SKIP LOCKED",
            returned=", ".join(RETURNED),
        )
        queue_params = [list(queues)] if queues else []
        params = [worker, lease_seconds, *queue_params, *limited_params, limit]
    else:
        # SQLite runs one writer at a time, so the statement is atomic by
        # itself; its clock is this machine's.
        current = timezone.now()
        stamp = conn.ops.adapt_datetimefield_value(current)
        expiry = conn.ops.adapt_datetimefield_value(
            current + timedelta(seconds=lease_seconds)
        )
        marks = ", ".join(["%s"] * len(queues or ()))
        sql = CLAIM_SQL.format(
            now="%s",
            lease="%s",
            queue_filter=f"AND queue IN ({marks})" if queues else "",
            limited_filter=limited_filter,
            lock="",
            returned=", ".join(RETURNED),
        )
        params = [
            worker,
            stamp,
            expiry,
            *(queues or ()),
            stamp,
            *limited_params,
            limit,
        ]

    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


def _claim_locking(
    conn: BaseDatabaseWrapper,
    worker_id: uuid.UUID,
    queues: Sequence[str] | None,
    limit: int,
    lease_seconds: float,
    excluded: Excluded,
) -> list[tuple[Any, ...]]:
    db = database.alias()
    with transaction.atomic(using=db):
        ready = Job.objects.using(db).filter(
            status=JobStatus.READY, run_after__lte=database.now(conn)
        )
        if queues:
            ready = ready.filter(queue__in=list(queues))
        names, limited_queues = excluded
        if names:
            ready = ready.exclude(name__in=names)
        if limited_queues:
            ready = ready.exclude(queue__in=limited_queues)
        paused = Queue.objects.using(db).filter(paused=True).values("name")
        ready = ready.exclude(queue__in=paused).select_for_update(skip_locked=True)
        ids = list(
            ready.order_by("-priority", "run_after", "id").values_list("id", flat=True)[
                :limit
            ]
        )
        if not ids:
            return []

        Job.objects.using(db).filter(id__in=ids).update(
            status=JobStatus.RUNNING,
            attempts=F("attempts") + 1,
            worker_id=worker_id,
            started_at=database.now(conn),
            lease_expires_at=database.later(lease_seconds, conn),
        )
        return list(Job.objects.using(db).filter(id__in=ids).values_list(*RETURNED))


def _limited_filter(
    conn: BaseDatabaseWrapper, excluded: Excluded
) -> tuple[str, list[Any]]:
    """Return SQL that leaves out jobs under a limit, and its parameters."""
    sql = ""
    params: list[Any] = []
    for column, values in zip(("name", "queue"), excluded, strict=True):
        if not values:
            continue
        if conn.vendor == "postgresql":
            sql += f" AND {column} <> ALL(%s)"
            params.append(list(values))
        else:
            marks = ", ".join(["%s"] * len(values))
            sql += f" AND {column} NOT IN ({marks})"
            params.extend(values)
    return sql, params


def _claimed(row: tuple[Any, ...]) -> ClaimedJob:
    values = dict(zip(RETURNED, row, strict=True))
    arguments = values["arguments"]
    if isinstance(arguments, (str, bytes)):
        arguments = json.loads(arguments)
    return ClaimedJob(
        id=int(values["id"]),
        name=values["name"],
        queue=values["queue"],
        arguments=arguments,
        attempt=int(values["attempts"]),
        max_attempts=int(values["max_attempts"]),
        backoff_base_seconds=float(values["backoff_base_seconds"]),
        backoff_max_seconds=float(values["backoff_max_seconds"]),
        started_at=_as_datetime(values["started_at"]),
        timeout_seconds=_as_seconds(values["timeout_seconds"]),
    )


def renew(
    worker_id: uuid.UUID, job_ids: Iterable[int], lease_seconds: float | None = None
) -> set[int]:
    """Push the leases of ``job_ids`` forward; return those no longer held."""
    ids = set(job_ids)
    if not ids:
        return set()
    db = database.alias()
    held = Job.objects.using(db).filter(
        pk__in=ids, status=JobStatus.RUNNING, worker_id=worker_id
    )

    lease = float(lease_seconds or settings.LEASE_SECONDS)
    renewed = held.update(lease_expires_at=database.later(lease))
    if renewed == len(ids):
        return set()
    still_held = set(held.values_list("pk", flat=True))
    return ids - still_held


def recover_expired(limit: int = 100) -> int:
    """Return jobs whose lease expired to the queue, or fail them.

    The attempt that was cut short counts: it is recorded as interrupted,
    and a job out of attempts ends failed with an error that says its
    worker was lost. Runs in one transaction; returns how many were
    recovered.
    """
    db = database.alias()
    conn = database.connection()
    with transaction.atomic(using=db):
        database.take_write_lock(conn)
        expired = list(
            Job.objects.using(db)
            .select_for_update(skip_locked=True)
            .filter(status=JobStatus.RUNNING, lease_expires_at__lt=database.now(conn))
            .order_by("pk")[:limit]
        )
        for job in expired:
            _interrupt(job, "the worker was lost: its lease expired", conn)
    return len(expired)


def interrupt(worker_id: uuid.UUID, job_ids: Iterable[int], reason: str) -> int:
    """End the current attempts of ``job_ids`` held by ``worker_id``.

    Used when a worker stops before its jobs finish: they return to the
    queue at once, with no retry delay, instead of waiting for their leases
    to expire. The attempt still counts.
    """
    db = database.alias()
    conn = database.connection()
    with transaction.atomic(using=db):
        database.take_write_lock(conn)
        held = list(
            Job.objects.using(db)
            .select_for_update()
            .filter(pk__in=list(job_ids), status=JobStatus.RUNNING, worker_id=worker_id)
        )
        for job in held:
            _interrupt(job, reason, conn, back_off=False)
    return len(held)


def _interrupt(
    job: Job, reason: str, conn: BaseDatabaseWrapper, back_off: bool = True
) -> None:
    db = database.alias()
    error = f"Attempt {job.attempts} interrupted: {reason} (worker {job.worker_id})."
    if job.cancel_requested_at is not None:
        # Someone asked it to stop: running it again would undo that.
        changes: dict[str, Any] = {
            "status": JobStatus.CANCELLED,
            "finished_at": database.now(conn),
            "active_unique_key": None,
        }
        level, outcome = logging.WARNING, "cancelled"
    elif job.attempts >= job.max_attempts:
        changes = {
            "status": JobStatus.FAILED,
            "finished_at": database.now(conn),
            "active_unique_key": None,
        }
        level, outcome = logging.ERROR, "failed"
    else:
        # A lost lease may be the job's own doing (it killed its process),
        # so it backs off like a failure; a stopping worker is not.
        delay = 0.0
        if back_off:
            delay = next_delay(
                job.attempts, job.backoff_base_seconds, job.backoff_max_seconds
            )
        changes = {"status": JobStatus.READY, "run_after": database.later(delay, conn)}
        level, outcome = logging.WARNING, "requeued"

    held = Job.objects.using(db).filter(
        pk=job.pk,
        status=JobStatus.RUNNING,
        attempts=job.attempts,
        worker_id=job.worker_id,
    )
    if not held.update(lease_expires_at=None, last_error=error, **changes):
        return  # the attempt ended meanwhile and recorded itself
    Attempt.objects.using(db).create(
        job_id=job.pk,
        number=job.attempts,
        worker_id=job.worker_id,
        started_at=job.started_at,
        finished_at=database.now(conn),
        outcome=Attempt.Outcome.INTERRUPTED,
        error=error,
    )
    logger.log(
        level,
        "attempt interrupted, job %s job_id=%s job=%s attempt=%s worker=%s",
        outcome,
        job.pk,
        job.name,
        job.attempts,
        job.worker_id,
    )


def next_delay(attempt: int, base_seconds: float, max_seconds: float) -> float:
    """Return the retry delay after ``attempt`` with the configured shape."""
    return retry.backoff_seconds(
        attempt,
        base_seconds,
        max_seconds,
        factor=float(settings.BACKOFF_FACTOR),
        jitter=float(settings.BACKOFF_JITTER),
    )


def _as_seconds(value: Any) -> float | None:
    return None if value is None else float(value)


def _prep_uuid(value: uuid.UUID, conn: BaseDatabaseWrapper) -> Any:
    return Job._meta.get_field("worker_id").get_db_prep_value(value, conn)


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        moment = value
    else:
        moment = parse_datetime(str(value)) or timezone.now()
    if django_settings.USE_TZ and timezone.is_naive(moment):
        return timezone.make_aware(moment, dt_timezone.utc)
    if not django_settings.USE_TZ and timezone.is_aware(moment):
        return timezone.make_naive(moment)
    return moment
