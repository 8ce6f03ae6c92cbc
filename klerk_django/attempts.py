"""Attempts: run one claimed job and record how it ended.

The outcome is written in one transaction with the job's new state, guarded
by the worker id and attempt number of the lease, so a worker whose lease
was taken over records nothing. If the database refuses the outcome (a
value it cannot store), a plain failure is written instead; if it cannot be
reached at all, the lease expires and recovery returns the job to the
queue. A job never stays running because its outcome was lost.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
import logging
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import DataError, Error, IntegrityError, transaction

from . import (
    arguments,
    calling,
    cancellation,
    database,
    job_processes,
    leases,
    timeouts,
)
from .cancellation import Stop
from .exceptions import ArgumentError, JobCancelled
from .jobs import get_job_function
from .leases import ClaimedJob
from .models import Attempt, Job, JobStatus

logger = logging.getLogger(__name__)

RECORD_TRIES = 5


@dataclass(frozen=True)
class JobContext:
    """What a running job may know about itself."""

    job_id: int
    name: str
    attempt: int
    max_attempts: int
    worker_id: uuid.UUID


_context: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "klerk_job_context", default=None
)


def current_job() -> JobContext | None:
    """Return the context of the job running in this thread, if any."""
    return _context.get()


def bind_context(context: JobContext) -> None:
    """Make ``context`` this job process's current job, for good."""
    _context.set(context)


def report_progress(progress: float | dict[str, Any]) -> bool:
    """Store how far the running job has come; return whether it still holds.

    ``progress`` is a fraction from 0 to 1 or a dict of JSON values. One
    UPDATE, guarded by the lease like the outcome: a job whose lease was
    taken over writes nothing and gets False. Raises RuntimeError outside
    a running job and ArgumentError for other values.
    """
    context = _context.get()
    if context is None:
        raise RuntimeError(
            "report_progress() was called outside a running job; only a job "
            "function run by a worker may call it."
        )
    value = _checked_progress(progress)

    held = Job.objects.using(database.alias()).filter(
        pk=context.job_id,
        status=JobStatus.RUNNING,
        worker_id=context.worker_id,
        attempts=context.attempt,
    )
    return bool(held.update(progress=value))


def _checked_progress(progress: Any) -> Any:
    if isinstance(progress, (int, float)) and not isinstance(progress, bool):
        if not 0 <= progress <= 1:
            raise ArgumentError(
                f"Progress must be a fraction from 0 to 1, got {progress!r}."
            )
        return float(progress)
    if isinstance(progress, dict):
        arguments.check(progress, "progress")
        return progress
    raise ArgumentError(
        f"Progress must be a fraction from 0 to 1 or a dict, got {progress!r}."
    )


def run(
    claimed: ClaimedJob,
    worker_id: uuid.UUID,
    on_ended: Callable[[], None] | None = None,
    stop: Stop | None = None,
    spawn: bool = True,
) -> str:
    """Run one attempt of ``claimed`` and record it; return the job's status.

    ``on_ended`` is called when the job function has returned or raised,
    before the outcome is written. ``stop`` is the flag the worker sets to
    cancel the attempt. ``spawn=False`` runs a job declared with
    ``process=True`` on this thread too. Returns an empty string when the
    outcome could not be recorded, because the lease was lost or the
    database stayed unreachable.
    """
    stop = stop or Stop()
    context = JobContext(
        claimed.id, claimed.name, claimed.attempt, claimed.max_attempts, worker_id
    )
    token = _context.set(context)
    stop_token = cancellation.bind(stop)
    started = time.monotonic()
    outcome: _Failure | None = None
    result: Any = None
    try:
        result = _call(claimed, context, stop, spawn)
    except BaseException as exc:  # SystemExit from a job is its failure too
        outcome = _Failure(exc, traceback.format_exc())
    finally:
        cancellation.unbind(stop_token)
        _context.reset(token)
    duration_ms = (time.monotonic() - started) * 1000
    if on_ended is not None:
        on_ended()

    if stop.handed_back:
        # The stopping worker records the attempt as interrupted.
        return ""
    outcome = _stopped(claimed, stop, outcome)
    if outcome is None:
        write = functools.partial(_succeed, claimed, worker_id, result)
    else:
        write = functools.partial(_fail, claimed, worker_id, outcome)
    status = _record(claimed, worker_id, write)
    _log(claimed, worker_id, status, duration_ms, outcome)
    return status or ""


def _call(claimed: ClaimedJob, context: JobContext, stop: Stop, spawn: bool) -> Any:
    """Run the job's code here, or in a child process if it asks for one."""
    function = get_job_function(claimed.name)
    seconds = claimed.timeout_seconds
    if function.options.process and spawn:
        return job_processes.call(context, claimed.arguments, seconds, stop)

    args, kwargs = arguments.unpack(claimed.arguments)
    is_async = inspect.iscoroutinefunction(function.target)
    with timeouts.limit(seconds, stop, is_async, claimed.id):
        return calling.call(function.target, args, kwargs, seconds, stop.time_out)


def _stopped(
    claimed: ClaimedJob, stop: Stop, outcome: _Failure | None
) -> _Failure | None:
    """Return the outcome once a time limit or cancellation is counted.

    A timed-out attempt fails with the time limit's error whatever the job
    did after it. A cancelled one ends the job cancelled if the job ended
    because of it: it raised, or it saw the request and returned.
    """
    text = outcome.text if outcome is not None else ""
    if stop.reason == cancellation.TIMED_OUT:
        seconds = claimed.timeout_seconds or 0.0
        error = timeouts.error_text(claimed.attempt, seconds)
        return _Failure(outcome.exc if outcome else None, text, error)
    raised = outcome is not None and isinstance(outcome.exc, JobCancelled)
    if raised or (stop.cancelled and (outcome is not None or stop.noticed)):
        error = f"JobCancelled: attempt {claimed.attempt} cancelled while running"
        return _Failure(outcome.exc if outcome else None, text, error, cancel=True)
    if outcome is not None and isinstance(outcome.exc, job_processes.JobProcessFailed):
        return _Failure(outcome.exc, outcome.exc.text, outcome.exc.error)
    return outcome


@dataclass(frozen=True)
class _Failure:
    exc: BaseException | None
    text: str
    # The error to record, when not the exception's own text.
    message: str = ""
    # Whether the attempt ends the job cancelled rather than failed.
    cancel: bool = False

    @property
    def error(self) -> str:
        if self.message or self.exc is None:
            return arguments.scrub_text(self.message)
        return arguments.scrub_text(calling.described(self.exc))

    @property
    def traceback(self) -> str:
        return arguments.scrub_text(self.text)


def _record(claimed: ClaimedJob, worker_id: uuid.UUID, write: Any) -> str | None:
    """Write the outcome; return the new status, "" if the lease was lost.

    Returns None, after logging why, when the database stayed unreachable.
    """
    delay = 0.5
    for attempt in range(1, RECORD_TRIES + 1):
        try:
            return str(write())
        except (ValueError, TypeError) as exc:
            # Python could not turn the result into JSON (an int longer
            # than its text limit, say): no retry can help.
            return _fail_plainly(claimed, worker_id, exc)
        except Error as exc:
            if _is_refused_value(exc):
                return _fail_plainly(claimed, worker_id, exc)
            logger.warning(
                "outcome not recorded, retrying job_id=%s job=%s attempt=%s "
                "worker=%s try=%s error=%s",
                claimed.id,
                claimed.name,
                claimed.attempt,
                worker_id,
                attempt,
                type(exc).__name__,
            )
            _drop_connection()
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    logger.error(
        "outcome lost, lease recovery will requeue job_id=%s job=%s attempt=%s "
        "worker=%s",
        claimed.id,
        claimed.name,
        claimed.attempt,
        worker_id,
    )
    return None


def _drop_connection() -> None:
    """Close the jobs' connection after an error; a broken one may raise."""
    try:
        database.connection().close()
    except Error:
        logger.debug("broken connection not closed cleanly", exc_info=True)


def _is_refused_value(exc: Error) -> bool:
    return isinstance(exc, (DataError, IntegrityError))


def _guarded(claimed: ClaimedJob, worker_id: uuid.UUID) -> Any:
    return Job.objects.using(database.alias()).filter(
        pk=claimed.id,
        status=JobStatus.RUNNING,
        worker_id=worker_id,
        attempts=claimed.attempt,
    )


SUCCEED_SQL = """
    WITH finished AS (
        UPDATE klerk_job
        SET status = 'succeeded', finished_at = STATEMENT_TIMESTAMP(),
            lease_expires_at = NULL, result = %s::jsonb, last_error = '',
            active_unique_key = NULL
        WHERE id = %s AND status = 'running' AND worker_id = %s AND attempts = %s
        RETURNING id, attempts, worker_id, started_at, finished_at
    )
    INSERT INTO klerk_attempt
        (job_id, number, worker_id, started_at, finished_at, outcome, error,
         traceback)
    SELECT id, attempts, worker_id, started_at, finished_at, 'succeeded', '', ''
    FROM finished
    RETURNING job_id
"""


def _succeed(claimed: ClaimedJob, worker_id: uuid.UUID, result: Any) -> str:
    db, conn = database.alias(), database.connection()
    if conn.vendor == "postgresql" and not conn.in_atomic_block:
        return _succeed_in_one_statement(claimed, worker_id, result)
    with transaction.atomic(using=db):
        changed = _guarded(claimed, worker_id).update(
            status=JobStatus.SUCCEEDED,
            finished_at=database.now(conn),
            lease_expires_at=None,
            active_unique_key=None,
            result=arguments.scrub(result),
            last_error="",
        )
        if not changed:
            return ""
        _add_attempt(claimed, worker_id, Attempt.Outcome.SUCCEEDED, "", "")
    return JobStatus.SUCCEEDED


def _succeed_in_one_statement(
    claimed: ClaimedJob, worker_id: uuid.UUID, result: Any
) -> str:
    # One round trip, committed on its own, instead of BEGIN, UPDATE,
    # INSERT and COMMIT: success is by far the most frequent outcome.
    conn = database.connection()
    stored = arguments.scrub(result)
    value = None if stored is None else json.dumps(stored)
    with conn.cursor() as cursor:
        cursor.execute(SUCCEED_SQL, [value, claimed.id, worker_id, claimed.attempt])
        finished = cursor.fetchone()
    return JobStatus.SUCCEEDED if finished else ""


def _fail(claimed: ClaimedJob, worker_id: uuid.UUID, failure: _Failure) -> str:
    if failure.cancel:
        return _write_cancelled(claimed, worker_id, failure.error, failure.traceback)
    return _write_failure(claimed, worker_id, failure.error, failure.traceback)


def _write_cancelled(
    claimed: ClaimedJob, worker_id: uuid.UUID, error: str, text: str
) -> str:
    conn = database.connection()
    with transaction.atomic(using=database.alias()):
        changed = _guarded(claimed, worker_id).update(
            status=JobStatus.CANCELLED,
            finished_at=database.now(conn),
            lease_expires_at=None,
            active_unique_key=None,
            last_error=error,
        )
        if not changed:
            return ""
        _add_attempt(claimed, worker_id, Attempt.Outcome.FAILED, error, text)
    return JobStatus.CANCELLED


def _fail_plainly(claimed: ClaimedJob, worker_id: uuid.UUID, exc: Exception) -> str:
    error = (
        f"The outcome of attempt {claimed.attempt} could not be stored "
        f"({type(exc).__name__}); see the worker log."
    )
    logger.error(
        "outcome refused by the database job_id=%s job=%s attempt=%s worker=%s",
        claimed.id,
        claimed.name,
        claimed.attempt,
        worker_id,
        exc_info=True,
    )
    try:
        return _write_failure(claimed, worker_id, error, "")
    except Error:
        logger.exception("plain failure not recorded job_id=%s", claimed.id)
        return ""


def _write_failure(
    claimed: ClaimedJob, worker_id: uuid.UUID, error: str, text: str
) -> str:
    db, conn = database.alias(), database.connection()
    if claimed.attempt < claimed.max_attempts:
        delay = leases.next_delay(
            claimed.attempt, claimed.backoff_base_seconds, claimed.backoff_max_seconds
        )
        status = JobStatus.READY
        changes: dict[str, Any] = {
            "status": status,
            "run_after": database.later(delay, conn),
        }
    else:
        status = JobStatus.FAILED
        changes = {
            "status": status,
            "finished_at": database.now(conn),
            "active_unique_key": None,
        }

    with transaction.atomic(using=db):
        guarded = _guarded(claimed, worker_id)
        if status == JobStatus.READY:
            # A job asked to stop while it ran must not run again.
            guarded = guarded.filter(cancel_requested_at__isnull=True)
        changed = guarded.update(lease_expires_at=None, last_error=error, **changes)
        if not changed and status == JobStatus.READY:
            return _write_cancelled(claimed, worker_id, error, text)
        if not changed:
            return ""
        _add_attempt(claimed, worker_id, Attempt.Outcome.FAILED, error, text)
    return status


def _add_attempt(
    claimed: ClaimedJob,
    worker_id: uuid.UUID,
    outcome: str,
    error: str,
    text: str,
) -> None:
    Attempt.objects.using(database.alias()).create(
        job_id=claimed.id,
        number=claimed.attempt,
        worker_id=worker_id,
        started_at=claimed.started_at,
        finished_at=database.now(),
        outcome=outcome,
        error=error,
        traceback=text,
    )


def _log(
    claimed: ClaimedJob,
    worker_id: uuid.UUID,
    status: str | None,
    duration_ms: float,
    failure: _Failure | None,
) -> None:
    fields = (claimed.id, claimed.name, claimed.attempt, worker_id, duration_ms)
    suffix = "job_id=%s job=%s attempt=%s worker=%s duration_ms=%.1f"
    if status == JobStatus.SUCCEEDED:
        logger.info("job succeeded " + suffix, *fields)
    elif status == JobStatus.READY:
        error = failure.error if failure else ""
        logger.warning("job failed, will retry " + suffix + " error=%s", *fields, error)
    elif status == JobStatus.FAILED:
        logger.error(
            "job failed for good " + suffix,
            *fields,
            exc_info=failure.exc if failure else None,
        )
    elif status == JobStatus.CANCELLED:
        logger.warning("job cancelled while running " + suffix, *fields)
    elif status == "":
        logger.warning("job outcome not recorded, lease lost " + suffix, *fields)
