"""What the admin's overview and queues pages show, and links between pages.

The views themselves belong to the job admin (``JobAdmin.get_urls``), so
they live under the admin site with its login and permission checks; here
are only the figures they show, gathered by ``stats``, and the URLs.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.contrib.admin.utils import quote
from django.db import models
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from . import display, limits, queues, stats
from .conf import settings
from .exceptions import SettingsError
from .jobs import registry
from .models import Job, JobStatus, Worker

STATUSES = [status.value for status in JobStatus]
# The overview's columns: its ready jobs split, as on the queues page, into
# those due now and those due later.
SCHEDULED = "scheduled"
COLUMNS = [
    name
    for status in STATUSES
    for name in ([status, SCHEDULED] if status == JobStatus.READY else [status])
]


def admin_url(model: type[models.Model], view: str, *args: Any) -> str:
    """Return the URL of ``view`` ("change", "changelist") for ``model``."""
    opts = model._meta
    name = f"admin:{opts.app_label}_{opts.model_name}_{view}"
    return reverse(name, args=[quote(arg) for arg in args])


def job_list_url(**filters: Any) -> str:
    """Return the URL of the job list with ``filters`` applied."""
    query = f"?{urlencode(filters)}" if filters else ""
    return admin_url(Job, "changelist") + query


def overview_context() -> dict[str, Any]:
    """Return jobs by queue and status, the last hour, lag and live workers."""
    now = timezone.now()
    counts = stats.counts_by_queue_and_status()
    queues = {row.queue: row for row in stats.queue_stats()}
    series = stats.minute_series(now)
    workers = stats.live_workers()

    rows = [
        _overview_row(queue, _split(counts.get(queue, {}), queues.get(queue)), now)
        for queue in sorted(set(counts) | set(queues))
    ]
    lags = [row["lag"] for row in rows if row["lag"] is not None]
    rate = series.failure_rate
    return {
        "title": "Jobs overview",
        "rows": rows,
        "totals": _totals(row["counts"] for row in rows),
        "columns": COLUMNS,
        "chart": display.minute_chart(series),
        "failure_rate": display.EMPTY if rate is None else f"{rate:.1%}",
        "ended": sum(series.succeeded) + sum(series.failed),
        "failed": sum(series.failed),
        "ready_now": sum(row.ready for row in queues.values()),
        "running_now": sum(row.running for row in queues.values()),
        "longest_lag": _lag_text(max(lags) if lags else None),
        "workers": [_worker_row(worker) for worker in workers],
        "workers_url": admin_url(Worker, "changelist") + "?state=alive",
        "failed_url": job_list_url(status__exact="failed"),
        "running_url": job_list_url(status__exact="running"),
    }


def queues_context() -> dict[str, Any]:
    """Return ready, scheduled and running jobs and the lag of every queue."""
    now = timezone.now()
    paused = set(queues.paused_queues())
    limited = _queue_limits()
    rows = [
        {
            "queue": row.queue,
            "paused": row.queue in paused,
            "limits": limits.describe(limited.get(row.queue)) or display.EMPTY,
            "ready": row.ready,
            "scheduled": row.scheduled,
            "running": row.running,
            "lag": _lag_text(row.lag(now)),
            "ready_url": job_list_url(queue=row.queue, status__exact="ready"),
            "running_url": job_list_url(queue=row.queue, status__exact="running"),
        }
        for row in _with_idle_queues(stats.queue_stats(), paused | set(limited))
    ]
    return {"title": "Queues", "rows": rows}


def _queue_limits() -> dict[str, limits.Limits]:
    # An unusable KLERK_QUEUES is reported by system check E014; the page
    # still shows the jobs.
    try:
        return limits.queue_limits()
    except SettingsError:
        return {}


def _with_idle_queues(
    busy: list[stats.QueueStats], switched: set[str]
) -> list[stats.QueueStats]:
    # Queues are names, not rows: an idle queue is known only from the job
    # functions that use it, a pause or its limits.
    known = {row.queue for row in busy}
    idle = [
        stats.QueueStats(queue, 0, 0, 0, None)
        for queue in sorted((set(registered_queues()) | switched) - known)
    ]
    return sorted(busy + idle, key=lambda row: row.queue)


def registered_queues() -> list[str]:
    """Return the queues of every registered job function."""
    # A job function that names no queue uses the default queue.
    default = str(settings.DEFAULT_QUEUE)
    queues = (registry.get(name).options.queue for name in registry.names())
    return [default if queue is None else queue for queue in queues]


def _split(
    counts: dict[str, int], waiting: stats.QueueStats | None
) -> tuple[dict[str, int], stats.QueueStats | None]:
    """Return ``counts`` with ready jobs due later counted as scheduled."""
    # Both figures come from queries already made, so the split costs none.
    ready, scheduled = (waiting.ready, waiting.scheduled) if waiting else (0, 0)
    return {**counts, JobStatus.READY.value: ready, SCHEDULED: scheduled}, waiting


def _overview_row(
    queue: str,
    split: tuple[dict[str, int], stats.QueueStats | None],
    now: datetime,
) -> dict[str, Any]:
    counts, waiting = split
    cells = [
        (counts.get(column, 0), _column_url(column, queue=queue)) for column in COLUMNS
    ]
    lag = waiting.lag(now) if waiting else None
    return {
        "queue": queue,
        "url": job_list_url(queue=queue),
        "counts": counts,
        "cells": cells,
        "total": sum(counts.values()),
        "lag": lag,
        "lag_text": _lag_text(lag),
    }


def _column_url(column: str, **filters: Any) -> str:
    # The job list has no filter on due time: scheduled jobs are among the
    # ready ones there.
    status = JobStatus.READY.value if column == SCHEDULED else column
    return job_list_url(**filters, status__exact=status)


def _lag_text(lag: timedelta | None) -> str:
    return display.EMPTY if lag is None else display.span(lag)


def _totals(counts: Iterable[dict[str, int]]) -> list[tuple[int, str]]:
    rows = list(counts)
    return [
        (sum(row.get(column, 0) for row in rows), _column_url(column))
        for column in COLUMNS
    ]


def _worker_row(worker: Worker) -> dict[str, Any]:
    return {
        "name": worker.name or str(worker.pk)[:8],
        "url": admin_url(Worker, "change", worker.pk),
        "host": f"{worker.hostname}:{worker.pid}",
        "queues": ", ".join(map(str, worker.queues)) or "all",
        # Annotated by WorkerAdmin.get_queryset, not a model field.
        "running": getattr(worker, "running_jobs", 0),
        "running_url": job_list_url(worker_id=worker.pk, status__exact="running"),
        "concurrency": worker.concurrency,
        "heartbeat": display.relative_html(worker.last_heartbeat_at),
    }
