"""Job functions: the ``@job`` decorator, enqueueing, retry and cancel.

Enqueueing writes one row in the caller's transaction on the jobs'
database: a rollback removes the job with the data that caused it, a commit
makes it durable, and a worker can only see it once committed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, NoReturn, cast

from django.conf import settings as django_settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q, QuerySet
from django.db.models.functions import Greatest
from django.utils import timezone

from . import arguments, database, guards, limits, retry, scope
from .conf import settings
from .exceptions import (
    ArgumentError,
    EnqueueOptionError,
    JobIdError,
    SettingsError,
    UnknownJob,
)
from .limits import ConcurrencyLimit, RateLimit
from .models import Job, JobStatus
from .registry import Registry

logger = logging.getLogger(__name__)

registry: Registry[JobFunction] = Registry("job function", UnknownJob)

# \Z, not $: "$" also matches before a final newline.
QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}\Z")
# Priority and attempt counts are 32-bit integer columns on every database.
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
UNIQUE_KEY_MAX = 255
# Each try of a unique enqueue either inserts or finds the holder of the
# key; it finds none only if that job finished in between.
UNIQUE_TRIES = 5


# Options left unset take their value from a setting when a job is built,
# so settings are read lazily and tests may override them.
SETTING_OF = {
    "queue": "KLERK_DEFAULT_QUEUE",
    "max_attempts": "KLERK_MAX_ATTEMPTS",
    "backoff_base_seconds": "KLERK_BACKOFF_BASE_SECONDS",
    "backoff_max_seconds": "KLERK_BACKOFF_MAX_SECONDS",
}
# The names callers pass for options stored under another name.
PUBLIC_NAME = {"backoff_base_seconds": "backoff_seconds", "timeout_seconds": "timeout"}
# A time limit is waited for by a timer, which refuses waits much longer
# than this on some platforms; no attempt should need a year.
MAX_TIMEOUT_SECONDS = 366 * 24 * 3600.0


@dataclass(frozen=True)
class JobOptions:
    """How a job is scheduled; never part of its arguments.

    ``None`` means "take the setting's value when the job is built".
    """

    queue: str | None = None
    priority: int = 0
    max_attempts: int | None = None
    backoff_base_seconds: float | None = None
    backoff_max_seconds: float | None = None
    run_after: datetime | None = None
    delay: timedelta | None = None
    unique: bool = False
    unique_key: str | None = None
    timeout_seconds: float | None = None
    # Run each attempt in a child process the worker can kill; a property
    # of the job function, not stored with the job.
    process: bool = False
    # Limits of the job function, read by every worker's claim; a job
    # stores only the keys they computed from its arguments.
    rate_limit: RateLimit | None = None
    concurrency_limit: ConcurrencyLimit | None = None

    def resolved(self) -> JobOptions:
        """Return these options with settings filled in, or raise.

        A setting that holds an unusable value raises SettingsError naming
        the setting; an unusable option given in code raises
        EnqueueOptionError naming the option.
        """
        filled = {
            option: getattr(settings, setting.removeprefix("KLERK_"))
            for option, setting in SETTING_OF.items()
            if getattr(self, option) is None
        }
        try:
            return validate_options(replace(self, **filled))
        except EnqueueOptionError as error:
            if error.option not in filled:
                raise
            raise SettingsError(
                f"{SETTING_OF[error.option]} is unusable: {error}"
            ) from error


class JobFunction:
    """A registered job function; call ``enqueue`` to run it in a worker."""

    def __init__(self, target: Callable[..., Any], name: str, options: JobOptions):
        self.target = target
        self.name = name
        self.options = options
        self.__doc__ = target.__doc__
        self.__wrapped__ = target
        self._signature: inspect.Signature | None = None

    def __repr__(self) -> str:
        return f"<JobFunction {self.name}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function here and now, outside any worker.

        An ``async def`` job returns its coroutine, for the caller to
        await. Raises SideEffectInCommand inside a command, which must
        enqueue it.
        """
        guards.refuse_inside_command(
            f"to call the job function {self.name!r} directly",
            f"Enqueue it instead: {self.name}.enqueue(...) runs it in a "
            "worker once the command commits.",
        )
        return self.target(*args, **kwargs)

    def _check_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # A call the function cannot accept would fail on every attempt;
        # refuse it now, where the caller can see why.
        if self._signature is None:
            try:
                self._signature = inspect.signature(self.target)
            except (TypeError, ValueError):
                return
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as error:
            raise ArgumentError(
                f"Job {self.name!r} cannot be called with these arguments: {error}."
            ) from None

    def using(
        self,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        run_after: datetime | None = None,
        delay: timedelta | float | None = None,
        backoff_seconds: float | None = None,
        backoff_max_seconds: float | None = None,
        unique: bool | None = None,
        unique_key: str | None = None,
        timeout: float | None = None,
    ) -> JobFunction:
        """Return this job function with other scheduling options.

        ``None`` means "keep the default"; an explicit 0 is honoured. A
        ``unique_key`` makes the job unique under that key. ``timeout`` is
        each attempt's time limit in seconds.
        """
        changes: dict[str, Any] = {}
        if timeout is not None:
            changes["timeout_seconds"] = timeout
        if unique is not None:
            changes["unique"] = unique
        if unique_key is not None:
            changes["unique"] = True
            changes["unique_key"] = unique_key
        if queue is not None:
            changes["queue"] = queue
        if priority is not None:
            changes["priority"] = priority
        if max_attempts is not None:
            changes["max_attempts"] = max_attempts
        if backoff_seconds is not None:
            changes["backoff_base_seconds"] = backoff_seconds
        if backoff_max_seconds is not None:
            changes["backoff_max_seconds"] = backoff_max_seconds
        if run_after is not None:
            changes["run_after"] = run_after
        if delay is not None:
            changes["delay"] = _as_timedelta(delay)

        options = validate_options(replace(self.options, **changes))
        return JobFunction(self.target, self.name, options)

    def enqueue(self, *args: Any, **kwargs: Any) -> Job:
        """Store a job in the current transaction and return it.

        Runs in the caller's transaction on the jobs' database (autocommit
        outside one). Raises ArgumentError for arguments that are not JSON.
        """
        self._check_call(args, kwargs)
        packed = arguments.pack(args, kwargs)
        job = _build(self, self.options.resolved(), packed)

        if job.unique_key is not None:
            return _enqueue_unique(job)
        job.save(using=database.alias(), force_insert=True)

        _remember(job)
        logger.debug(
            "job enqueued job_id=%s job=%s queue=%s", job.pk, job.name, job.queue
        )
        return job

    def enqueue_many(
        self,
        calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]],
        batch_size: int = 1000,
    ) -> list[Job]:
        """Store one job per ``(args, kwargs)`` pair and return them.

        Runs in the caller's transaction like ``enqueue``, with one INSERT
        per ``batch_size`` jobs. Every call's arguments are checked before
        anything is written, so one bad call stores no job at all.
        """
        options = self.options.resolved()
        if options.unique:
            # Each may meet a duplicate, which one INSERT cannot report.
            pairs = [_call_pair(index, call) for index, call in enumerate(calls)]
            return [self.enqueue(*args, **kwargs) for args, kwargs in pairs]
        built = []
        for index, call in enumerate(calls):
            args, kwargs = _call_pair(index, call)
            self._check_call(args, kwargs)
            built.append(_build(self, options, arguments.pack(args, kwargs)))

        Job.objects.using(database.alias()).bulk_create(built, batch_size=batch_size)

        for job in built:
            _remember(job)
        return built


def job(
    target: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    queue: str | None = None,
    priority: int = 0,
    max_attempts: int | None = None,
    backoff_seconds: float | None = None,
    backoff_max_seconds: float | None = None,
    unique: bool = False,
    timeout: float | None = None,
    process: bool = False,
    rate_limit: RateLimit | None = None,
    concurrency_limit: ConcurrencyLimit | None = None,
) -> Any:
    """Register a function as a job; use as ``@job`` or ``@job(...)``.

    ``max_attempts`` counts every run, the first included: 1 means no retry.
    ``unique`` refuses a second job with the same arguments while one is
    ready or running: enqueue returns that one instead. ``timeout`` limits
    each attempt to that many seconds; ``process=True`` runs each attempt
    in a child process, which the worker can kill on cancellation or
    timeout. ``rate_limit`` and ``concurrency_limit`` hold jobs back, ready,
    while starting them would exceed a ``RateLimit`` or ``ConcurrencyLimit``.
    """

    def register(func: Callable[..., Any]) -> JobFunction:
        options = validate_options(
            JobOptions(
                queue=queue,
                priority=priority,
                max_attempts=max_attempts,
                backoff_base_seconds=backoff_seconds,
                backoff_max_seconds=backoff_max_seconds,
                unique=unique,
                timeout_seconds=timeout,
                process=process,
                rate_limit=rate_limit,
                concurrency_limit=concurrency_limit,
            )
        )
        job_name = name or f"{func.__module__}.{func.__qualname__}"
        job_function = JobFunction(func, job_name, options)
        registry.add(job_name, job_function, func)
        return job_function

    if target is not None:
        return register(target)
    return register


def get_job_function(name: str) -> JobFunction:
    """Return the job function registered as ``name`` or raise UnknownJob."""
    return registry.get(name)


def validate_options(options: JobOptions) -> JobOptions:
    """Return ``options`` or raise EnqueueOptionError naming the bad one.

    Options left to the settings (``None``) are checked once resolved.
    """
    queue = options.queue
    if queue is not None and (
        not isinstance(queue, str) or not QUEUE_NAME.match(queue)
    ):
        _bad("queue", queue, "1 to 100 letters, digits or _.:-")
    if not _is_int(options.priority) or not INT_MIN <= options.priority <= INT_MAX:
        _bad("priority", options.priority, f"an integer from {INT_MIN} to {INT_MAX}")
    attempts = options.max_attempts
    if attempts is not None and (not _is_int(attempts) or not 1 <= attempts <= INT_MAX):
        _bad(
            "max_attempts", attempts, f"an integer of at least 1 and at most {INT_MAX}"
        )
    for option in ("backoff_base_seconds", "backoff_max_seconds"):
        value = getattr(options, option)
        if value is None:
            continue
        if not _is_number(value) or not 0 <= value <= retry.MAX_DELAY_SECONDS:
            _bad(
                option,
                value,
                f"a number of seconds from 0 to {retry.MAX_DELAY_SECONDS:.0f}",
            )
    _validate_start(options)
    _validate_unique(options)
    limits.check_declared(options.rate_limit, options.concurrency_limit)
    _validate_stopping(options)
    return options


def _validate_stopping(options: JobOptions) -> None:
    timeout = options.timeout_seconds
    if timeout is not None and (
        not _is_number(timeout)
        or not math.isfinite(timeout)
        or not 0 < timeout <= MAX_TIMEOUT_SECONDS
    ):
        _bad(
            "timeout_seconds",
            timeout,
            f"a number of seconds above 0 and at most {MAX_TIMEOUT_SECONDS:.0f}",
        )
    if not isinstance(options.process, bool):
        _bad("process", options.process, "True or False")


def _validate_unique(options: JobOptions) -> None:
    if not isinstance(options.unique, bool):
        _bad("unique", options.unique, "True or False")
    key = options.unique_key
    if key is not None and (
        not isinstance(key, str) or not 1 <= len(key) <= UNIQUE_KEY_MAX
    ):
        _bad("unique_key", key, f"a string of 1 to {UNIQUE_KEY_MAX} characters")


def _validate_start(options: JobOptions) -> None:
    if options.run_after is not None and options.delay is not None:
        _bad("delay", options.delay, "either run_after or delay, not both")
    if options.delay is not None and options.delay < timedelta(0):
        _bad("delay", options.delay, "a delay of 0 or more")
    run_after = options.run_after
    if run_after is None:
        return
    if not isinstance(run_after, datetime):
        _bad("run_after", run_after, "a datetime")
    if django_settings.USE_TZ and timezone.is_naive(run_after):
        _bad("run_after", run_after, "an aware datetime, since USE_TZ is on")
    if not django_settings.USE_TZ and timezone.is_aware(run_after):
        _bad("run_after", run_after, "a naive datetime, since USE_TZ is off")


def _build(
    job_function: JobFunction, options: JobOptions, packed: dict[str, Any]
) -> Job:
    now = database.python_now()
    run_after = options.run_after or now
    if options.delay is not None:
        try:
            run_after = now + options.delay
        except OverflowError:
            _bad("delay", options.delay, "a delay that ends before the year 10000")

    current = scope.current()
    key = _unique_key(job_function.name, options, packed)
    rate_key, concurrency_key = limits.job_keys(
        job_function.name, options.rate_limit, options.concurrency_limit, packed
    )
    return Job(
        name=job_function.name,
        # resolved() filled every option left to the settings.
        queue=cast(str, options.queue),
        priority=options.priority,
        arguments=packed,
        status=JobStatus.READY,
        run_after=run_after,
        max_attempts=cast(int, options.max_attempts),
        backoff_base_seconds=cast(float, options.backoff_base_seconds),
        backoff_max_seconds=cast(float, options.backoff_max_seconds),
        created_at=now,
        command_id=current.record_id if current else None,
        unique_key=key,
        active_unique_key=key,
        timeout_seconds=options.timeout_seconds,
        rate_key=rate_key,
        concurrency_key=concurrency_key,
    )


def _unique_key(name: str, options: JobOptions, packed: dict[str, Any]) -> str | None:
    if not options.unique:
        return None
    if options.unique_key is not None:
        return options.unique_key
    text = json.dumps([name, packed], sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"{name[: UNIQUE_KEY_MAX - 65]}:{digest}"


def _enqueue_unique(job: Job) -> Job:
    """Insert ``job`` or return the ready or running job holding its key.

    The insert runs in a savepoint, so a refused one leaves the caller's
    transaction usable. While another transaction holds an uncommitted job
    with the key, the database makes this one wait for its end.
    """
    db = database.alias()
    for _ in range(UNIQUE_TRIES):
        try:
            with transaction.atomic(using=db):
                job.save(using=db, force_insert=True)
        except IntegrityError:
            job.pk = None
            holder = Job.objects.using(db).filter(
                active_unique_key=job.active_unique_key
            )
            existing = holder.first()
            if existing is None:
                continue
            existing.is_duplicate = True
            logger.info(
                "duplicate job not enqueued job_id=%s job=%s key=%s",
                existing.pk,
                existing.name,
                existing.unique_key,
            )
            return existing
        _remember(job)
        logger.debug("unique job enqueued job_id=%s job=%s", job.pk, job.name)
        return job
    raise IntegrityError(
        f"Unique job {job.name!r} with key {job.unique_key!r} was neither "
        f"stored nor found after {UNIQUE_TRIES} tries."
    )


def _call_pair(index: int, call: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    try:
        args, kwargs = call
        return tuple(args), dict(kwargs)
    except (TypeError, ValueError):
        raise ArgumentError(
            f"enqueue_many takes (args, kwargs) pairs such as ((1,), {{}}); "
            f"item {index} is {call!r}."
        ) from None


def _remember(job: Job) -> None:
    current = scope.current()
    if current is not None:
        current.jobs.append(job)


def retry_jobs(jobs: QuerySet[Job] | Iterable[int], batch_size: int = 1000) -> int:
    """Queue failed or cancelled jobs to run again now; return how many.

    Each job gets one more attempt if it has used all of its attempts. Runs
    in batches, each its own transaction on the jobs' database; jobs in
    other states are left alone.
    """
    changes = {
        "status": JobStatus.READY,
        "run_after": database.now(),
        "finished_at": None,
        "max_attempts": Greatest(F("max_attempts"), F("attempts") + 1),
        "active_unique_key": F("unique_key"),
        # A cancellation asked of an earlier attempt must not stop this one.
        "cancel_requested_at": None,
    }
    eligible = Q(status__in=[JobStatus.FAILED, JobStatus.CANCELLED])
    changed = _update_in_batches(jobs, eligible, changes, batch_size)
    if changed:
        from . import notify

        notify.wake_workers()
    logger.info("jobs retried count=%s", changed)
    return changed


def cancel_jobs(jobs: QuerySet[Job] | Iterable[int], batch_size: int = 1000) -> int:
    """Cancel ready jobs, ask running ones to stop; return how many.

    A ready job ends cancelled at once. A running job is asked to stop: it
    sees the request with ``cancel_requested()``, a job in its own process
    is killed, and the attempt then ends the job cancelled. Finished jobs
    are left alone and not counted.
    """
    from . import cancellation

    done = cancellation.cancel(jobs, batch_size)
    return done.ended + done.asked


def _update_in_batches(
    jobs: QuerySet[Job] | Iterable[int],
    eligible: Q,
    changes: dict[str, Any],
    batch_size: int,
) -> int:
    db = database.alias()
    changed = 0
    for batch in _batches(jobs, eligible, batch_size):
        try:
            with transaction.atomic(using=db):
                selected = Job.objects.using(db).filter(eligible, pk__in=batch)
                changed += selected.update(**changes)
        except IntegrityError:
            changed += _update_one_by_one(db, batch, eligible, changes)
    return changed


def _update_one_by_one(
    db: str, batch: list[int], eligible: Q, changes: dict[str, Any]
) -> int:
    """Update each job alone, leaving those the database refuses.

    A retried unique job whose key another ready or running job holds now
    stays as it is: running it again would make the duplicate.
    """
    changed = 0
    for pk in batch:
        try:
            with transaction.atomic(using=db):
                selected = Job.objects.using(db).filter(eligible, pk=pk)
                changed += selected.update(**changes)
        except IntegrityError:
            logger.warning("job left alone, its unique key is taken job_id=%s", pk)
    return changed


def _batches(
    jobs: QuerySet[Job] | Iterable[int], eligible: Q, batch_size: int
) -> Iterable[list[int]]:
    if not isinstance(jobs, QuerySet):
        ids = sorted(set(map(_job_id, jobs)))
        for start in range(0, len(ids), batch_size):
            yield ids[start : start + batch_size]
        return

    # Keyset pages keep memory flat and each transaction short, however
    # many rows are selected; the update re-checks the state it expects.
    selection = jobs.using(database.alias()).filter(eligible)
    last_pk = 0
    while True:
        page = selection.filter(pk__gt=last_pk).order_by("pk")
        batch = list(page.values_list("pk", flat=True)[:batch_size])
        if not batch:
            return
        last_pk = batch[-1]
        yield batch


def _job_id(value: Any) -> int:
    # Checked before any batch runs, so that a bad id changes nothing.
    if _is_int(value):
        return int(value)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise JobIdError(value)


def _as_timedelta(value: timedelta | float) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if not _is_number(value) or not math.isfinite(value):
        _bad("delay", value, "a timedelta or a finite number of seconds")
    try:
        return timedelta(seconds=value)
    except OverflowError:
        _bad("delay", value, "a delay that ends before the year 10000")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bad(option: str, value: Any, expected: str) -> NoReturn:
    public = PUBLIC_NAME.get(option, option)
    raise EnqueueOptionError(
        f"Job option {public!r} must be {expected}, got {value!r}.", option, value
    )
