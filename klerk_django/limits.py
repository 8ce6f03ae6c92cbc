"""Limits: how many jobs may start per period, and run at once, per key.

A job function declares a ``RateLimit`` (at most N starts per period) and a
``ConcurrencyLimit`` (at most K running at once), each for the whole
function or per key computed from the job's arguments at enqueue; a queue
gets both in ``KLERK_QUEUES``. Every limit key has a row in
``klerk_limit``, whose lock serializes the workers that start jobs under
it: a worker locks the rows of its candidates' keys in sorted order, counts
the starts in the window (``klerk_limit_start``) and the running jobs whose
lease has not expired, and starts only what fits, all in one transaction.

Jobs under no limit never come here: the claim in ``leases.py`` leaves
them to its single statement, and excludes limited ones from it. A job
held back by a rate limit has its ``run_after`` moved to when its window
has room, so it stops hiding other keys' jobs; its attempts are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import CharField, Count, F, Func, Min, Q

from . import arguments, database
from .conf import settings
from .exceptions import LimitError, SettingsError
from .models import Job, JobStatus, Limit, LimitStart, Queue

logger = logging.getLogger(__name__)

# A week: starts are kept for one period, and longer windows are better
# served by a schedule.
MAX_PERIOD_SECONDS = 7 * 24 * 3600.0
# The rate_key and concurrency_key columns of klerk_job.
MAX_KEY_LENGTH = 200
# The key column of klerk_limit and klerk_limit_start.
MAX_LIMIT_KEY_LENGTH = 255
# A name or key that stands in a lock key as it is.
PLAIN_PART = re.compile(r"^[a-z0-9_.-]+\Z")
# Limited jobs looked at per free slot: some may be over their limits.
CANDIDATES_PER_SLOT = 4
MIN_CANDIDATES = 10
# How often a process deletes starts older than every window.
PRUNE_EVERY_SECONDS = 60.0
QUEUE_OPTIONS = ("rate_limit", "concurrency_limit")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_limit(kind: str, limit: Any) -> None:
    if not _is_int(limit) or limit < 1:
        raise LimitError(
            f"A {kind}'s limit must be an integer of at least 1, got {limit!r}."
        )


def _check_key(kind: str, key: Any) -> None:
    if key is not None and not callable(key):
        raise LimitError(
            f"A {kind}'s key must be None or a callable that takes the job's "
            f"arguments and returns a string, got {key!r}."
        )


def _period_seconds(per: Any) -> float:
    seconds = per.total_seconds() if isinstance(per, timedelta) else per
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or not 0 < seconds <= MAX_PERIOD_SECONDS
    ):
        raise LimitError(
            "A rate limit's period must be a timedelta or a number of seconds "
            f"above 0 and at most {MAX_PERIOD_SECONDS:.0f} (a week), got {per!r}."
        )
    return float(seconds)


@dataclass(frozen=True)
class RateLimit:
    """At most ``limit`` job starts in any ``per`` seconds, for each key.

    ``per`` is a number of seconds or a timedelta. ``key`` takes the job's
    arguments and returns a string; each string is limited on its own.
    Without a key the limit covers every job of the function.
    """

    limit: int
    per: float | timedelta
    key: Callable[..., str] | None = None

    def __post_init__(self) -> None:
        _check_limit("rate limit", self.limit)
        object.__setattr__(self, "per", _period_seconds(self.per))
        _check_key("rate limit", self.key)

    @property
    def seconds(self) -> float:
        return float(self.per)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ConcurrencyLimit:
    """At most ``limit`` jobs running at once, for each key.

    A job counts from its start until it ends or its lease expires.
    ``key`` works as in ``RateLimit``.
    """

    limit: int
    key: Callable[..., str] | None = None

    def __post_init__(self) -> None:
        _check_limit("concurrency limit", self.limit)
        _check_key("concurrency limit", self.key)


@dataclass(frozen=True)
class Limits:
    """The limits of one job function or one queue."""

    rate: RateLimit | None = None
    concurrency: ConcurrencyLimit | None = None


def describe(limits: Limits | None) -> str:
    """Return limits as text, such as "10 starts per 60 s, 2 running"."""
    parts = []
    if limits and limits.rate:
        starts = "start" if limits.rate.limit == 1 else "starts"
        parts.append(f"{limits.rate.limit} {starts} per {limits.rate.seconds:g} s")
    if limits and limits.concurrency:
        parts.append(f"{limits.concurrency.limit} running")
    return ", ".join(parts)


def check_declared(rate_limit: Any, concurrency_limit: Any) -> None:
    """Raise LimitError unless both are limits of the right kind or None."""
    if rate_limit is not None and not isinstance(rate_limit, RateLimit):
        raise LimitError(f"rate_limit must be a RateLimit or None, got {rate_limit!r}.")
    if concurrency_limit is not None and not isinstance(
        concurrency_limit, ConcurrencyLimit
    ):
        raise LimitError(
            "concurrency_limit must be a ConcurrencyLimit or None, got "
            f"{concurrency_limit!r}."
        )


def job_keys(
    name: str,
    rate_limit: RateLimit | None,
    concurrency_limit: ConcurrencyLimit | None,
    packed: dict[str, Any],
) -> tuple[str | None, str | None]:
    """Return a new job's rate and concurrency keys, or raise LimitError.

    The key callables get the arguments given to enqueue, once checked.
    """
    rate_key = concurrency_key = None
    if rate_limit is not None and rate_limit.key is not None:
        rate_key = _call_key(name, "rate_limit", rate_limit.key, packed)
    if concurrency_limit is not None and concurrency_limit.key is not None:
        concurrency_key = _call_key(
            name, "concurrency_limit", concurrency_limit.key, packed
        )
    return rate_key, concurrency_key


def _call_key(
    name: str, option: str, key: Callable[..., Any], packed: dict[str, Any]
) -> str:
    args, kwargs = arguments.unpack(packed)
    try:
        value = key(*args, **kwargs)
    except Exception as exc:
        raise LimitError(
            f"The {option} key of job {name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_KEY_LENGTH
        or "\x00" in value
    ):
        raise LimitError(
            f"The {option} key of job {name!r} must return a string of 1 to "
            f"{MAX_KEY_LENGTH} characters without NUL, got {value!r}."
        )
    return value


# Queue limits, from KLERK_QUEUES.


def parse_queues(raw: Any) -> dict[str, Limits]:
    """Return the queue limits that ``raw`` declares, or raise ValueError.

    ``raw`` maps queue names to dicts with ``"rate_limit": (limit,
    seconds)`` and ``"concurrency_limit": limit``, both optional.
    """
    from .jobs import QUEUE_NAME

    if not isinstance(raw, Mapping):
        raise ValueError(f"it must be a dict of queue names, got {raw!r}")
    parsed = {}
    for queue, options in raw.items():
        if not isinstance(queue, str) or not QUEUE_NAME.match(queue):
            raise ValueError(
                f"queue name {queue!r} is not 1 to 100 letters, digits or _.:-"
            )
        parsed[queue] = _queue_limits(queue, options)
    return parsed


def _queue_limits(queue: str, options: Any) -> Limits:
    if not isinstance(options, Mapping):
        raise ValueError(f"queue {queue!r} must map to a dict, got {options!r}")
    unknown = sorted(set(map(str, options)) - set(QUEUE_OPTIONS))
    if unknown:
        raise ValueError(
            f"queue {queue!r} has unknown options {unknown}; the options are "
            f"{list(QUEUE_OPTIONS)}"
        )
    rate = options.get("rate_limit")
    concurrency = options.get("concurrency_limit")
    try:
        return Limits(_queue_rate(rate), _queue_concurrency(concurrency))
    except LimitError as error:
        raise ValueError(f"queue {queue!r}: {error}") from None


def _queue_rate(value: Any) -> RateLimit | None:
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise LimitError(
            "rate_limit must be a pair (limit, seconds) such as (10, 60), "
            f"got {value!r}."
        )
    return RateLimit(value[0], per=value[1])


def _queue_concurrency(value: Any) -> ConcurrencyLimit | None:
    return None if value is None else ConcurrencyLimit(value)


_parsed_queues: tuple[Any, dict[str, Limits]] = (None, {})


def queue_limits() -> dict[str, Limits]:
    """Return KLERK_QUEUES parsed, or raise SettingsError if unusable."""
    global _parsed_queues
    raw = settings.QUEUES
    if raw is _parsed_queues[0]:
        return _parsed_queues[1]
    try:
        parsed = parse_queues(raw)
    except ValueError as error:
        problem = str(error).removesuffix(".")
        raise SettingsError(f"KLERK_QUEUES is unusable: {problem}.") from None
    _parsed_queues = (raw, parsed)
    return parsed


# What a claim must respect.


@dataclass(frozen=True)
class Bound:
    """One limit a job starts under: its lock key and how much it allows."""

    key: str
    limit: int
    # The rate limit's period; None for a concurrency limit.
    seconds: float | None = None


@dataclass(frozen=True)
class Plan:
    """The limits of every registered job function and configured queue."""

    functions: dict[str, Limits] = field(default_factory=dict)
    queues: dict[str, Limits] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.functions or self.queues)

    @property
    def has_concurrency(self) -> bool:
        limits = [*self.functions.values(), *self.queues.values()]
        return any(limit.concurrency for limit in limits)

    @property
    def longest_period(self) -> float:
        limits = [*self.functions.values(), *self.queues.values()]
        periods = [limit.rate.seconds for limit in limits if limit.rate]
        return max(periods, default=0.0)

    def bounds(
        self, name: str, queue: str, rate_key: str | None, concurrency_key: str | None
    ) -> list[Bound]:
        """Return every limit a job with these values starts under."""
        bounds = []
        function = self.functions.get(name)
        if function and function.rate:
            own = rate_key if function.rate.key else None
            key = limit_key("rate:job", name, own)
            bounds.append(Bound(key, function.rate.limit, function.rate.seconds))
        if function and function.concurrency:
            own = concurrency_key if function.concurrency.key else None
            key = limit_key("running:job", name, own)
            bounds.append(Bound(key, function.concurrency.limit))
        bounds += self._queue_bounds(queue)
        return bounds

    def _queue_bounds(self, queue: str) -> list[Bound]:
        limits = self.queues.get(queue)
        if limits is None:
            return []
        bounds = []
        if limits.rate:
            key = limit_key("rate:queue", queue)
            bounds.append(Bound(key, limits.rate.limit, limits.rate.seconds))
        if limits.concurrency:
            key = limit_key("running:queue", queue)
            bounds.append(Bound(key, limits.concurrency.limit))
        return bounds


def limit_key(kind: str, name: str, own: str | None = None) -> str:
    """Return the ``klerk_limit`` key of a limit, at most 255 characters.

    Names and keys of lowercase letters, digits and ``_ . -`` are kept as
    they are. Any other is followed by a digest of the exact values: a
    colon in a name must not make two limits one, nor may a collation that
    ignores case, accents or trailing spaces (MariaDB's default).
    """
    parts = [kind, name] if own is None else [kind, name, own]
    key = ":".join(parts)
    if all(PLAIN_PART.match(part) for part in parts[1:]) and (
        len(key) <= MAX_LIMIT_KEY_LENGTH
    ):
        return key
    digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()
    return f"{key[: MAX_LIMIT_KEY_LENGTH - len(digest) - 1]}#{digest}"


def current_plan() -> Plan:
    """Return the limits of the registered job functions and the queues."""
    from .jobs import registry

    functions = {}
    for name in registry.names():
        options = registry.get(name).options
        if options.rate_limit or options.concurrency_limit:
            functions[name] = Limits(options.rate_limit, options.concurrency_limit)
    return Plan(functions, queue_limits())


# The claim of limited jobs.


@dataclass(frozen=True)
class Candidate:
    id: int
    bounds: list[Bound]


class _MissingRows(Exception):
    def __init__(self, keys: list[str]) -> None:
        super().__init__(keys)
        self.keys = keys


def claim(
    worker_id: uuid.UUID,
    queues: Sequence[str] | None,
    free: int,
    lease_seconds: float,
    plan: Plan,
    returned: Sequence[str],
) -> list[tuple[Any, ...]]:
    """Start up to ``free`` limited jobs that fit their limits.

    Returns the started jobs' ``returned`` columns. The look for candidates
    takes no lock; the start runs in one transaction that holds the lock
    rows of every key involved.
    """
    if free < 1 or not plan:
        return []
    candidates = _candidates(plan, queues, free)
    if not candidates:
        _prune_now_and_then(plan)
        _rest(worker_id, [])
        return []

    keys = sorted({bound.key for c in candidates for bound in c.bounds})
    rows: list[tuple[Any, ...]] = []
    for _ in range(2):
        try:
            rows = _start_within_limits(
                plan, worker_id, candidates, keys, free, lease_seconds, returned
            )
            break
        except _MissingRows as missing:
            # Created outside the transaction, so that no lock is held on
            # a new row while waiting for another: lock order stays sorted.
            _create_rows(missing.keys)
    _prune_now_and_then(plan)
    _rest(worker_id, rows)
    return rows


# Worker id -> monotonic time until which its claims put jobs under no
# limit first. Looking for limited jobs reads the ready jobs without an
# index for them; a worker busy with other jobs looks once per poll
# interval, not at every claim.
_quiet_until: dict[uuid.UUID, float] = {}
MAX_QUIET_WORKERS = 1000


def due(worker_id: uuid.UUID) -> bool:
    """Return whether ``worker_id`` should look for limited jobs first."""
    return time.monotonic() >= _quiet_until.get(worker_id, 0.0)


def _rest(worker_id: uuid.UUID, started: list[tuple[Any, ...]]) -> None:
    if started:
        _quiet_until.pop(worker_id, None)
        return
    if len(_quiet_until) >= MAX_QUIET_WORKERS:
        _quiet_until.clear()
    _quiet_until[worker_id] = time.monotonic() + float(settings.POLL_SECONDS)


def _candidates(plan: Plan, queues: Sequence[str] | None, free: int) -> list[Candidate]:
    db, conn = database.alias(), database.connection()
    ready = Job.objects.using(db).filter(
        Q(name__in=list(plan.functions)) | Q(queue__in=list(plan.queues)),
        status=JobStatus.READY,
        run_after__lte=database.now(conn),
    )
    if queues:
        ready = ready.filter(queue__in=list(queues))
    paused = Queue.objects.using(db).filter(paused=True).values("name")
    ready = ready.exclude(queue__in=paused)
    if plan.has_concurrency:
        full = _full_concurrency(plan)
        if full is not None:
            ready = ready.alias(**_exact_columns()).exclude(full)

    wanted = max(free * CANDIDATES_PER_SLOT, MIN_CANDIDATES)
    rows = ready.order_by("-priority", "run_after", "id").values_list(
        "id", "name", "queue", "rate_key", "concurrency_key"
    )[:wanted]
    return [Candidate(row[0], plan.bounds(*row[1:])) for row in rows]


def _full_concurrency(plan: Plan) -> Q | None:
    """Return a filter of the jobs whose concurrency limit is reached now.

    Read without locks: it only keeps such jobs from filling the list of
    candidates, while the start checks every limit again under its lock.
    """
    full = [
        running.condition
        for running in _running(plan, database.now()).values()
        if running.count >= running.limit
    ]
    if not full:
        return None
    combined = full[0]
    for condition in full[1:]:
        combined |= condition
    return combined


@dataclass
class Running:
    """The running jobs with a live lease under one concurrency key."""

    count: int
    limit: int
    # Selects the jobs that count under the key.
    condition: Q


def _running(plan: Plan, now: Any) -> dict[str, Running]:
    """Count the running jobs with a live lease under each concurrency key.

    Counted here rather than grouped by the database, whose collation may
    take two keys for one; there are never more rows than workers' slots.
    """
    names = [n for n, limits in plan.functions.items() if limits.concurrency]
    queues = [q for q, limits in plan.queues.items() if limits.concurrency]
    rows = (
        Job.objects.using(database.alias())
        .filter(Q(name__in=names) | Q(queue__in=queues))
        .filter(status=JobStatus.RUNNING, lease_expires_at__gt=now)
        .values_list("name", "queue", "concurrency_key")
    )
    running: dict[str, Running] = {}
    for name, queue, own in rows:
        for key, limit, condition in _running_keys(plan, name, queue, own):
            entry = running.setdefault(key, Running(0, limit, condition))
            entry.count += 1
    return running


class Exact(Func):
    """A text column compared byte for byte, whatever its collation."""

    template = "%(expressions)s"
    output_field = CharField()

    def as_mysql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        template = "CAST(%(expressions)s AS BINARY)"
        return self.as_sql(compiler, connection, template=template, **extra)


# Names of the exact columns in the candidates' query, for the conditions.
EXACT_COLUMNS = {"name": "exact_name", "queue": "exact_queue"}


def _exact_columns() -> dict[str, Exact]:
    columns = {"concurrency_key": "exact_concurrency_key", **EXACT_COLUMNS}
    return {alias: Exact(column) for column, alias in columns.items()}


def _running_keys(
    plan: Plan, name: str, queue: str, own: str | None
) -> list[tuple[str, int, Q]]:
    keys = []
    function = plan.functions.get(name)
    if function and function.concurrency:
        limit = function.concurrency.limit
        same_name = Q(exact_name=name)
        if function.concurrency.key is None:
            keys.append((limit_key("running:job", name), limit, same_name))
        else:
            same = Q(exact_concurrency_key=own)
            if own is None:
                same = Q(concurrency_key__isnull=True)
            key = limit_key("running:job", name, own)
            keys.append((key, limit, same_name & same))
    limits = plan.queues.get(queue)
    if limits and limits.concurrency:
        key = limit_key("running:queue", queue)
        keys.append((key, limits.concurrency.limit, Q(exact_queue=queue)))
    return keys


def _start_within_limits(
    plan: Plan,
    worker_id: uuid.UUID,
    candidates: list[Candidate],
    keys: list[str],
    free: int,
    lease_seconds: float,
    returned: Sequence[str],
) -> list[tuple[Any, ...]]:
    db, conn = database.alias(), database.connection()
    with transaction.atomic(using=db):
        database.take_write_lock(conn)
        _lock(keys)
        now = database.current_time(conn)

        ready = _still_ready([c.id for c in candidates], now)
        live = [c for c in candidates if c.id in ready]
        used, oldest = _used(plan, live, now)
        # The clock again, after the count: a job that finished during
        # the count then ends no later than these jobs start, in the
        # stored times as in fact.
        start = database.current_time(conn) if live else now
        started, held_back = _admit(live, used, oldest, free, start)

        rows = _start(started, worker_id, start, lease_seconds, returned)
        _record_starts(started, {row[0] for row in rows}, start)
        _hold_back(held_back)
    return rows


def _lock(keys: list[str]) -> None:
    # Sorted, so that two workers wanting the same keys wait for each
    # other instead of deadlocking.
    locked = set(
        Limit.objects.using(database.alias())
        .filter(key__in=keys)
        .order_by("key")
        .select_for_update()
        .values_list("key", flat=True)
    )
    missing = [key for key in keys if key not in locked]
    if missing:
        raise _MissingRows(missing)


def _create_rows(keys: list[str]) -> None:
    rows = [Limit(key=key) for key in sorted(keys)]
    Limit.objects.using(database.alias()).bulk_create(rows, ignore_conflicts=True)


def _still_ready(ids: list[int], now: datetime) -> set[int]:
    """Lock the candidates that are still ready and due; return their ids.

    Another worker may have started one, or someone cancelled one, since
    they were read without locks. Rows another transaction holds (a
    cancellation, say) are skipped rather than waited for, so that no
    lock on a job is ever waited for while holding limit rows.
    """
    ready = (
        Job.objects.using(database.alias())
        .filter(pk__in=ids, status=JobStatus.READY, run_after__lte=now)
        .select_for_update(skip_locked=True)
    )
    return set(ready.values_list("pk", flat=True))


def _used(
    plan: Plan, live: list[Candidate], now: datetime
) -> tuple[dict[str, int], dict[str, datetime]]:
    """Count each key's starts in its window, and its running jobs.

    Also returns each rate key's oldest start in its window.
    """
    by_period: dict[float, set[str]] = defaultdict(set)
    concurrency: set[str] = set()
    for candidate in live:
        for bound in candidate.bounds:
            if bound.seconds is None:
                concurrency.add(bound.key)
            else:
                by_period[bound.seconds].add(bound.key)

    used: dict[str, int] = defaultdict(int)
    oldest: dict[str, datetime] = {}
    if by_period:
        windows = Q()
        for seconds, keys in by_period.items():
            since = now - timedelta(seconds=seconds)
            windows |= Q(key__in=sorted(keys), started_at__gt=since)
        starts = (
            LimitStart.objects.using(database.alias())
            .filter(windows)
            .values_list("key")
            .annotate(count=Count("id"), oldest=Min("started_at"))
            .order_by()
        )
        for key, count, first in starts:
            used[key], oldest[key] = count, first
    if concurrency:
        running = _running(plan, now)
        for key in concurrency:
            used[key] = running[key].count if key in running else 0
    return used, oldest


def _admit(
    live: list[Candidate],
    used: dict[str, int],
    oldest: dict[str, datetime],
    free: int,
    now: datetime,
) -> tuple[list[Candidate], dict[int, datetime]]:
    """Pick the candidates that fit, in priority order.

    Returns them and, for each candidate over a rate limit, when its
    window has room again.
    """
    started: list[Candidate] = []
    held_back: dict[int, datetime] = {}
    for candidate in live:
        over = [b for b in candidate.bounds if used[b.key] >= b.limit]
        if not over:
            if len(started) < free:
                started.append(candidate)
                for bound in candidate.bounds:
                    used[bound.key] += 1
                    oldest.setdefault(bound.key, now)
            continue
        rates = [b for b in over if b.seconds is not None]
        if rates:
            held_back[candidate.id] = max(
                oldest.get(b.key, now) + timedelta(seconds=b.seconds or 0)
                for b in rates
            )
    return started, held_back


def _start(
    started: list[Candidate],
    worker_id: uuid.UUID,
    now: datetime,
    lease_seconds: float,
    returned: Sequence[str],
) -> list[tuple[Any, ...]]:
    if not started:
        return []
    db = database.alias()
    ids = [candidate.id for candidate in started]
    # The same guarded change as the claim of unlimited jobs.
    Job.objects.using(db).filter(pk__in=ids, status=JobStatus.READY).update(
        status=JobStatus.RUNNING,
        attempts=F("attempts") + 1,
        worker_id=worker_id,
        started_at=now,
        lease_expires_at=now + timedelta(seconds=lease_seconds),
    )
    mine = Job.objects.using(db).filter(
        pk__in=ids, status=JobStatus.RUNNING, worker_id=worker_id
    )
    return list(mine.values_list(*returned))


def _record_starts(started: list[Candidate], claimed: set[int], now: datetime) -> None:
    starts = [
        LimitStart(key=bound.key, started_at=now, job_id=candidate.id)
        for candidate in started
        if candidate.id in claimed
        for bound in candidate.bounds
        if bound.seconds is not None
    ]
    if starts:
        LimitStart.objects.using(database.alias()).bulk_create(starts)


def _hold_back(held_back: dict[int, datetime]) -> None:
    by_time: dict[datetime, list[int]] = defaultdict(list)
    for job_id, until in held_back.items():
        by_time[until].append(job_id)
    for until, ids in by_time.items():
        Job.objects.using(database.alias()).filter(
            pk__in=ids, status=JobStatus.READY
        ).update(run_after=until)
        logger.debug(
            "jobs held back by a rate limit count=%s until=%s", len(ids), until
        )


# Starts older than every window count no more.

_last_prune = 0.0


def _prune_now_and_then(plan: Plan) -> None:
    global _last_prune
    if time.monotonic() - _last_prune < PRUNE_EVERY_SECONDS:
        return
    _last_prune = time.monotonic()
    prune_starts(plan)


def prune_starts(plan: Plan | None = None) -> int:
    """Delete the starts older than the longest rate limit's period.

    With no rate limit left, starts are kept for the longest period a
    limit may have, in case a worker with older code still counts them.
    """
    plan = plan if plan is not None else current_plan()
    seconds = plan.longest_period or MAX_PERIOD_SECONDS
    cutoff = database.current_time() - timedelta(seconds=seconds)
    deleted, _ = (
        LimitStart.objects.using(database.alias())
        .filter(started_at__lte=cutoff)
        .delete()
    )
    if deleted:
        logger.info("limit starts pruned count=%s", deleted)
    return deleted
