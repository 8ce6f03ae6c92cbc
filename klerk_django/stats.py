"""Figures about jobs, queues and workers, aggregated in SQL.

The admin's overview and queues pages show these. Every function runs one
query that groups in the database (by queue and status, or by minute with
``TruncMinute``), so no figure loads rows into Python one by one.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from django.db.models import Count, IntegerField, Min, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce, TruncMinute
from django.utils import timezone

from . import database
from .conf import settings
from .models import Job, JobStatus, Worker

WINDOW_MINUTES = 60
LIVE_WORKERS_SHOWN = 50


@dataclass(frozen=True)
class QueueStats:
    """Jobs waiting in one queue and how long the longest has waited."""

    queue: str
    ready: int
    scheduled: int
    running: int
    oldest_due_at: datetime | None

    def lag(self, now: datetime) -> timedelta | None:
        """Return how long the longest-waiting due job has been due."""
        if self.oldest_due_at is None:
            return None
        return max(now - self.oldest_due_at, timedelta(0))


@dataclass(frozen=True)
class MinuteSeries:
    """Jobs started, succeeded and failed in each minute of a window."""

    start: datetime
    started: list[int]
    succeeded: list[int]
    failed: list[int]

    @property
    def failure_rate(self) -> float | None:
        """Return failed / (succeeded + failed), or None if none ended."""
        failed, ended = sum(self.failed), sum(self.failed) + sum(self.succeeded)
        return failed / ended if ended else None


def _jobs() -> Any:
    return Job.objects.using(database.alias())


def counts_by_queue_and_status() -> dict[str, dict[str, int]]:
    """Return ``{queue: {status: count}}`` for every job."""
    rows = _jobs().order_by().values("queue", "status").annotate(count=Count("pk"))
    table: dict[str, dict[str, int]] = defaultdict(dict)
    for row in rows:
        table[row["queue"]][row["status"]] = row["count"]
    return dict(sorted(table.items()))


def queue_stats() -> list[QueueStats]:
    """Return ready, scheduled and running counts of every busy queue.

    A job is ready when its ``run_after`` has passed in the jobs' clock;
    a ready job due later counts as scheduled.
    """
    now = database.now()
    due = Q(status=JobStatus.READY, run_after__lte=now)
    rows = (
        _jobs()
        .filter(status__in=[JobStatus.READY, JobStatus.RUNNING])
        .order_by()
        .values("queue")
        .annotate(
            ready=Count("pk", filter=due),
            scheduled=Count("pk", filter=Q(status=JobStatus.READY, run_after__gt=now)),
            running=Count("pk", filter=Q(status=JobStatus.RUNNING)),
            oldest_due_at=Min("run_after", filter=due),
        )
        .order_by("queue")
    )
    return [QueueStats(**row) for row in rows]


def minute_series(now: datetime | None = None) -> MinuteSeries:
    """Return per-minute counts over the last ``WINDOW_MINUTES`` minutes.

    A job counts as started in the minute of its latest start, and as
    succeeded or failed in the minute it ended for good: an attempt that
    fails and is retried is not a failed job.
    """
    now = now or timezone.now()
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=WINDOW_MINUTES - 1)
    series = MinuteSeries(
        start, [0] * WINDOW_MINUTES, [0] * WINDOW_MINUTES, [0] * WINDOW_MINUTES
    )

    started = _per_minute("started_at", Q(started_at__gte=start))
    for row in started:
        _add(series.started, start, row)
    ended = _per_minute(
        "finished_at",
        Q(
            finished_at__gte=start,
            status__in=[JobStatus.SUCCEEDED, JobStatus.FAILED],
        ),
        "status",
    )
    for row in ended:
        _add(getattr(series, row["status"]), start, row)
    return series


def _per_minute(field: str, where: Q, *group: str) -> Any:
    # Minutes are cut in UTC: every time zone's minutes line up with UTC's,
    # and MySQL then needs no time zone tables.
    minute = TruncMinute(field, tzinfo=dt_timezone.utc)
    return (
        _jobs()
        .filter(where)
        .order_by()
        .annotate(minute=minute)
        .values("minute", *group)
        .annotate(count=Count("pk"))
    )


def _add(counts: list[int], start: datetime, row: dict[str, Any]) -> None:
    minute = row["minute"]
    if minute is None:
        return
    if timezone.is_aware(start) and timezone.is_naive(minute):
        minute = timezone.make_aware(minute, dt_timezone.utc)
    index = int((minute - start).total_seconds() // 60)
    if 0 <= index < len(counts):
        counts[index] += row["count"]


def alive_since(now: datetime | None = None) -> datetime:
    """Return the oldest heartbeat time of a worker still counted alive."""
    now = now or timezone.now()
    return now - timedelta(seconds=3 * float(settings.HEARTBEAT_SECONDS))


def alive_workers() -> Q:
    """Return the condition of a live worker: not stopped, heartbeat recent."""
    return Q(stopped_at__isnull=True, last_heartbeat_at__gte=alive_since())


def running_jobs() -> Coalesce:
    """Return an expression: the running jobs of the worker in each row."""
    per_worker = (
        Job.objects.filter(status=JobStatus.RUNNING, worker_id=OuterRef("pk"))
        .order_by()
        .values("worker_id")
        .annotate(count=Count("pk"))
        .values("count")
    )
    return Coalesce(Subquery(per_worker, output_field=IntegerField()), 0)


def live_workers(limit: int = LIVE_WORKERS_SHOWN) -> list[Worker]:
    """Return live workers, newest first, each with ``running_jobs`` set."""
    workers = Worker.objects.using(database.alias()).filter(alive_workers())
    workers = workers.annotate(running_jobs=running_jobs()).order_by("-started_at")
    return list(workers[:limit])
