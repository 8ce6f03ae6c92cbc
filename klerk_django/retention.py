"""Retention: delete finished jobs, their attempts and finished actions.

Only final rows go: succeeded, failed or cancelled jobs and succeeded or
failed actions whose ``finished_at`` is older than the cutoff. Ready and
running jobs, and pending or running actions, are never touched, however
old. Deletion runs in batches, each its own short transaction, so a large
backlog never holds locks for long. Starts recorded under rate limits go
once they are older than the longest limit's period, whatever the days.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import transaction

from . import database, limits
from .conf import settings
from .exceptions import SettingsError
from .models import FINAL_STATUSES, Action, ActionStatus, Attempt, Job

logger = logging.getLogger(__name__)

FINAL_ACTIONS = (ActionStatus.SUCCEEDED, ActionStatus.FAILED)
# A cutoff further back than any stored time; more days would overflow.
MAX_DAYS = 36500


@dataclass(frozen=True)
class Pruned:
    """How many rows one prune deleted."""

    jobs: int
    attempts: int
    actions: int
    # Rate limit starts older than every window, whatever the days.
    limit_starts: int = 0


def retention_days() -> float | None:
    """Return KLERK_RETENTION_DAYS, or raise SettingsError if unusable."""
    days = settings.RETENTION_DAYS
    if days is None:
        return None
    try:
        return check_days(days)
    except ValueError as error:
        raise SettingsError(f"KLERK_RETENTION_DAYS is unusable: {error}") from None


def check_days(days: Any) -> float:
    """Return ``days`` as a number of days, or raise ValueError."""
    if (
        isinstance(days, bool)
        or not isinstance(days, (int, float))
        or not 0 <= days <= MAX_DAYS
    ):
        raise ValueError(f"days must be a number from 0 to {MAX_DAYS}, got {days!r}.")
    return float(days)


def prune(older_than_days: float, batch_size: int = 1000) -> Pruned:
    """Delete final jobs and actions finished over ``older_than_days`` ago."""
    cutoff = database.python_now() - timedelta(days=check_days(older_than_days))
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size!r}.")

    jobs, attempts = _prune_jobs(cutoff, batch_size)
    actions = _prune_actions(cutoff, batch_size)
    starts = limits.prune_starts()

    pruned = Pruned(jobs, attempts, actions, starts)
    logger.info(
        "pruned jobs=%s attempts=%s actions=%s days=%s",
        jobs,
        attempts,
        actions,
        older_than_days,
    )
    return pruned


def _prune_jobs(cutoff: Any, batch_size: int) -> tuple[int, int]:
    db = database.alias()
    old = Job.objects.using(db).filter(
        status__in=FINAL_STATUSES, finished_at__lt=cutoff
    )
    jobs = attempts = 0
    while True:
        with transaction.atomic(using=db):
            batch = list(old.order_by("pk").values_list("pk", flat=True)[:batch_size])
            if not batch:
                return jobs, attempts
            _, counts = old.filter(pk__in=batch).delete()
            jobs += counts.get(Job._meta.label, 0)
            attempts += counts.get(Attempt._meta.label, 0)


def _prune_actions(cutoff: Any, batch_size: int) -> int:
    db = database.alias()
    old = Action.objects.using(db).filter(
        status__in=FINAL_ACTIONS, finished_at__lt=cutoff
    )
    deleted = 0
    while True:
        with transaction.atomic(using=db):
            batch = list(old.order_by("pk").values_list("pk", flat=True)[:batch_size])
            if not batch:
                return deleted
            deleted += old.filter(pk__in=batch).delete()[0]
