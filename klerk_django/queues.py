"""Queues: pause and resume a queue for every worker at once.

A paused queue is a row in ``klerk_queue``; the claim statement skips the
jobs of paused queues, so pausing takes effect at every worker's next
claim. Jobs already running are left to finish. Enqueueing into a paused
queue still works: the jobs wait, ready, until it is resumed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import IntegrityError, transaction

from . import database, notify, stats
from .exceptions import EnqueueOptionError, QueueNameError
from .jobs import JobOptions, validate_options
from .models import Queue

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueState:
    """A queue's switch and how many of its jobs wait or run.

    ``ready`` jobs are due now; ``scheduled`` ones are ready but due later,
    as on the admin's queues page.
    """

    name: str
    paused: bool
    ready: int
    running: int
    scheduled: int = 0


def pause_queue(name: str) -> None:
    """Stop every worker from claiming jobs of queue ``name``."""
    _store_pause(name)
    logger.info("queue paused queue=%s", name)


def resume_queue(name: str) -> bool:
    """Let workers claim jobs of queue ``name`` again, and wake them.

    Return False, changing nothing, if the queue was not paused.
    """
    _check_name(name)
    db = database.alias()
    switch = Queue.objects.using(db).filter(name=name, paused=True)
    if not switch.update(paused=False, paused_at=None):
        return False

    notify.wake_workers(name)
    logger.info("queue resumed queue=%s", name)
    return True


def forget_queue(name: str) -> bool:
    """Delete the switch of queue ``name`` unless it is paused.

    A resumed queue keeps its row, shown by ``klerk_queue list`` and the
    admin; forgetting it removes a name typed by mistake. Return whether a
    row was deleted: a paused queue must be resumed first.
    """
    _check_name(name)
    db = database.alias()
    switch = Queue.objects.using(db).filter(name=name, paused=False)
    deleted, _ = switch.delete()
    if deleted:
        logger.info("queue forgotten queue=%s", name)
    return bool(deleted)


def paused_queues() -> list[str]:
    """Return the names of the paused queues."""
    rows = Queue.objects.using(database.alias()).filter(paused=True)
    return list(rows.values_list("name", flat=True))


def queue_states() -> list[QueueState]:
    """Return every queue that has a switch or ready or running jobs."""
    by_name = {row.queue: row for row in stats.queue_stats()}
    paused = set(paused_queues())
    switches = Queue.objects.using(database.alias()).values_list("name", flat=True)
    return [
        _state(name, name in paused, by_name.get(name))
        for name in sorted(set(by_name) | set(switches))
    ]


def _state(name: str, paused: bool, jobs: stats.QueueStats | None) -> QueueState:
    if jobs is None:
        return QueueState(name, paused, 0, 0)
    return QueueState(name, paused, jobs.ready, jobs.running, jobs.scheduled)


def _check_name(name: str) -> None:
    try:
        validate_options(JobOptions(queue=name))
    except EnqueueOptionError:
        raise QueueNameError(name) from None


def _store_pause(name: str) -> None:
    _check_name(name)
    db = database.alias()
    changes = {"paused": True, "paused_at": database.python_now()}
    # Two processes may create the row at once; the loser updates it.
    for _ in range(2):
        try:
            with transaction.atomic(using=db):
                Queue.objects.using(db).update_or_create(name=name, defaults=changes)
            return
        except IntegrityError:
            continue
    Queue.objects.using(db).filter(name=name).update(**changes)
