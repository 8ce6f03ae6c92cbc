"""Periodic schedules: a job enqueued on every tick of a cron expression.

A schedule is declared in code, with ``@periodic`` above ``@job``, or in
the ``KLERK_SCHEDULES`` setting. Its state is a row of ``klerk_schedule``
named after it: the last tick enqueued and the next one due. Every worker
checks every schedule a few times a minute (``Checker``), and any process
may call ``check_schedules``:

1. read the rows and the jobs' clock in one query; make missing rows;
2. a new schedule starts from now: its first tick is the next one;
3. a due schedule enqueues its latest tick at or before now; older
   missed ticks are skipped and logged;
4. the tick's job is enqueued in the same transaction as a guarded
   UPDATE that moves the row from the state read to the tick, so of all
   the processes that saw the tick due, exactly one enqueues it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings as django_settings
from django.db import Error, close_old_connections, transaction
from django.db.models import Q
from django.utils import timezone

from . import arguments, cron, database
from .conf import settings
from .exceptions import CronError, KlerkError, ScheduleError, SettingsError
from .jobs import JobFunction, get_job_function
from .models import Job, Schedule
from .registry import MAX_NAME_LENGTH

logger = logging.getLogger(__name__)

UTC = dt_timezone.utc
SETTING_KEYS = {"job", "cron", "timezone", "args", "kwargs"}
# Workers check their schedules at most this often; ticks fall on whole
# minutes, so a tick is enqueued within seconds of its time.
CHECK_SECONDS = 5.0
# Missed ticks are counted for the log up to this many.
MISSED_COUNT_MAX = 1000


@dataclass(frozen=True)
class PeriodicSchedule:
    """A rule that enqueues ``job(*args, **kwargs)`` on every cron tick."""

    name: str
    job: str
    cron: cron.Cron
    zone: ZoneInfo
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    source: str = "code"

    @property
    def time_zone(self) -> str:
        return self.zone.key

    def next_tick(self, after: datetime) -> datetime:
        """Return the first tick after the aware ``after``, in UTC."""
        return self.cron.next_tick(after, self.zone)

    def previous_tick(self, at: datetime) -> datetime | None:
        """Return the last tick at or before the aware ``at``, in UTC."""
        return self.cron.previous_tick(at, self.zone)


_declared: dict[str, PeriodicSchedule] = {}


def periodic(
    expression: str,
    *,
    timezone: str = "UTC",
    name: str | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
) -> Callable[[JobFunction], JobFunction]:
    """Enqueue the job below on every tick of ``expression``; use above @job.

    ``timezone`` is the IANA zone the expression's times are read in;
    ``name`` defaults to the job's name. Raises CronError, ScheduleError or
    ArgumentError at declaration for an unusable schedule.
    """

    def declare(job_function: JobFunction) -> JobFunction:
        if not isinstance(job_function, JobFunction):
            raise ScheduleError(
                name or getattr(job_function, "__name__", repr(job_function)),
                "must be declared above @job: @periodic takes a job function, "
                f"got {job_function!r}",
            )
        schedule = build(
            name or job_function.name,
            job_function.name,
            expression,
            timezone,
            args,
            kwargs or {},
        )
        _check_call(schedule, job_function)
        _add(schedule)
        return job_function

    return declare


def build(
    name: str,
    job: str,
    expression: str,
    time_zone: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    source: str = "code",
) -> PeriodicSchedule:
    """Return a checked schedule; raise CronError or ScheduleError if unusable.

    Arguments must be JSON, as for any job (ArgumentError otherwise).
    """
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise ScheduleError(
            str(name), f"needs a name of 1 to {MAX_NAME_LENGTH} characters"
        )
    if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
        raise ScheduleError(name, f"needs a list of args, got {args!r}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ScheduleError(name, f"needs a dict of kwargs, got {kwargs!r}")
    parsed = cron.parse(expression)
    zone = _zone(name, time_zone)
    arguments.pack(tuple(args), dict(kwargs or {}))
    return PeriodicSchedule(
        name=name,
        job=job,
        cron=parsed,
        zone=zone,
        args=tuple(args),
        kwargs=dict(kwargs or {}),
        source=source,
    )


def _zone(name: str, time_zone: str) -> ZoneInfo:
    try:
        return ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ScheduleError(
            name,
            f"has the unknown time zone {time_zone!r}; expected an IANA name "
            "such as 'Europe/Berlin' or 'UTC'",
        ) from None


def _check_call(schedule: PeriodicSchedule, job_function: JobFunction) -> None:
    # A call the function cannot take would fail on every tick.
    job_function._check_call(schedule.args, dict(schedule.kwargs))


def _add(schedule: PeriodicSchedule) -> None:
    existing = _declared.get(schedule.name)
    if existing is not None and existing != schedule:
        raise ScheduleError(
            schedule.name,
            "is declared twice with different rules; give one of them "
            "another name with @periodic(..., name=...)",
        )
    _declared[schedule.name] = schedule


def forget(name: str) -> None:
    """Remove the schedule declared in code as ``name``, if any."""
    _declared.pop(name, None)


def from_settings() -> list[PeriodicSchedule]:
    """Return the schedules of ``KLERK_SCHEDULES``; raise SettingsError."""
    entries = settings.SCHEDULES
    if not isinstance(entries, Mapping):
        raise SettingsError(
            f"KLERK_SCHEDULES must be a dict of schedule names to dicts, "
            f"got {entries!r}."
        )
    found = []
    for name, entry in entries.items():
        try:
            found.append(_from_entry(name, entry))
        except (KlerkError, ValueError, TypeError) as error:
            raise SettingsError(f"KLERK_SCHEDULES[{name!r}]: {error}") from error
    return found


def _from_entry(name: Any, entry: Any) -> PeriodicSchedule:
    if not isinstance(entry, Mapping):
        raise ScheduleError(str(name), f"needs a dict, got {entry!r}")
    unknown = set(entry) - SETTING_KEYS
    if unknown:
        raise ScheduleError(
            str(name),
            f"has unknown keys {sorted(unknown)}; expected some of "
            f"{sorted(SETTING_KEYS)}",
        )
    for key in ("job", "cron"):
        if not isinstance(entry.get(key), str):
            raise ScheduleError(
                str(name), f"needs {key!r}, a string, got {entry.get(key)!r}"
            )
    return build(
        name,
        entry["job"],
        entry["cron"],
        entry.get("timezone", "UTC"),
        entry.get("args", ()),
        entry.get("kwargs") or {},
        source="settings",
    )


def declared() -> list[PeriodicSchedule]:
    """Return every schedule, from code and settings, sorted by name.

    Raises SettingsError for an unusable KLERK_SCHEDULES, or one that
    reuses the name of a schedule declared in code.
    """
    found = dict(_declared)
    for schedule in from_settings():
        if schedule.name in found:
            raise SettingsError(
                f"KLERK_SCHEDULES[{schedule.name!r}]: a schedule of that name "
                "is declared in code with @periodic already."
            )
        found[schedule.name] = schedule
    return [found[name] for name in sorted(found)]


def get(name: str) -> PeriodicSchedule | None:
    """Return the schedule called ``name``, or None if none is declared."""
    for schedule in declared():
        if schedule.name == name:
            return schedule
    return None


def settings_problems() -> list[str]:
    """Return what is wrong with KLERK_SCHEDULES, for the system check."""
    try:
        schedules = declared()
    except SettingsError as error:
        return [str(error)]
    problems = []
    for schedule in schedules:
        if schedule.source != "settings":
            continue
        try:
            _check_call(schedule, get_job_function(schedule.job))
        except KlerkError as error:
            problems.append(f"KLERK_SCHEDULES[{schedule.name!r}]: {error}")
    return problems


@dataclass(frozen=True)
class _State:
    """A schedule's row as read, with the values the guard compares."""

    name: str
    last_tick_at: datetime | None
    next_tick_at: datetime | None


def check_schedules(now: datetime | None = None) -> list[Job]:
    """Enqueue the due tick of every schedule; return the jobs enqueued.

    Any number of processes may run this at once: each tick is enqueued
    once. ``now``, aware, replaces the jobs' clock (for tests and tools).
    Each enqueue runs in its own transaction on the jobs' database; a tick
    whose job cannot be enqueued is skipped and logged as an error.
    """
    schedules = declared()
    if not schedules:
        return []
    db = database.alias()
    states, clock = _read_states(db, [schedule.name for schedule in schedules])
    now = _aware(now) if now else _clock_instant(clock)

    enqueued = []
    for schedule in schedules:
        state = states.get(schedule.name)
        if state is None:
            # The database holds another schedule's row under this name,
            # as a collation that ignores case or trailing spaces does.
            logger.error(
                "schedule not checked schedule=%s error=%s",
                schedule.name,
                "its name is another schedule's to the database; rename one",
            )
            continue
        try:
            job = _check_one(db, schedule, state, now)
        except CronError as error:
            logger.error(
                "schedule not checked schedule=%s error=%s", schedule.name, error
            )
            continue
        if job is not None:
            enqueued.append(job)
    return enqueued


def _read_states(db: str, names: list[str]) -> tuple[dict[str, _State], datetime]:
    """Return the rows of ``names``, made if missing, and the jobs' clock."""
    states, clock = _select_states(db, names)
    missing = [name for name in names if name not in states]
    if missing:
        rows = [Schedule(name=name) for name in missing]
        Schedule.objects.using(db).bulk_create(rows, ignore_conflicts=True)
        states, clock = _select_states(db, names)
    return states, clock


def _select_states(db: str, names: list[str]) -> tuple[dict[str, _State], datetime]:
    rows = (
        Schedule.objects.using(db)
        .filter(name__in=names)
        .annotate(clock=database.now())
        .values_list("name", "last_tick_at", "next_tick_at", "clock")
    )
    states, clocks = {}, []
    for name, last_tick_at, next_tick_at, clock in rows:
        states[name] = _State(name, last_tick_at, next_tick_at)
        clocks.append(clock)
    # No row yet: any clock will do, the rows are made next.
    return states, clocks[0] if clocks else database.python_now()


def _check_one(
    db: str, schedule: PeriodicSchedule, state: _State, now: datetime
) -> Job | None:
    if state.next_tick_at is None:
        first = schedule.next_tick(now)
        if _advance(db, state, first, now):
            logger.info(
                "schedule started schedule=%s next_tick=%s", schedule.name, first
            )
        return None

    # Compared as stored: with USE_TZ = False, a wall time repeated in the
    # autumn is one stored value, whichever of its instants it was.
    next_at = state.next_tick_at
    if next_at > _stored(now):
        upcoming = schedule.next_tick(now)
        # The expression or time zone changed since next_tick_at was set.
        if _stored(upcoming) < next_at:
            _advance(db, state, upcoming, now)
        return None

    tick = schedule.previous_tick(now)
    if tick is None or _stored(tick) < next_at:
        _advance(db, state, schedule.next_tick(now), now)
        return None
    return _enqueue_tick(db, schedule, state, tick, now)


def _enqueue_tick(
    db: str, schedule: PeriodicSchedule, state: _State, tick: datetime, now: datetime
) -> Job | None:
    """Enqueue the job of ``tick`` if this process moves the row first."""
    following = schedule.next_tick(tick)
    try:
        job_function = get_job_function(schedule.job)
        with transaction.atomic(using=db):
            if not _advance(db, state, following, now, tick=tick):
                return None
            job = _enqueue(job_function, schedule, tick)
    except (KlerkError, SettingsError) as error:
        # The tick passes without a job; the process that moves the row
        # says so, once.
        if _advance(db, state, following, now):
            logger.error(
                "schedule tick skipped schedule=%s tick=%s job=%s error=%s",
                schedule.name,
                tick.isoformat(),
                schedule.job,
                error,
            )
        return None

    _log_missed(schedule, _aware(state.next_tick_at or tick), tick)
    logger.info(
        "schedule ticked schedule=%s tick=%s job_id=%s job=%s",
        schedule.name,
        tick.isoformat(),
        job.pk,
        job.name,
    )
    return job


def _enqueue(
    job_function: JobFunction, schedule: PeriodicSchedule, tick: datetime
) -> Job:
    key = tick_key(schedule.name, tick)
    bound = job_function.using(unique_key=key, run_after=_stored(tick))
    return bound.enqueue(*schedule.args, **schedule.kwargs)


def tick_key(name: str, tick: datetime) -> str:
    """Return the unique key of the job of ``name``'s tick at ``tick``."""
    return f"schedule:{name}:{tick.astimezone(UTC).isoformat()}"


def _advance(
    db: str,
    state: _State,
    next_tick: datetime,
    now: datetime,
    tick: datetime | None = None,
) -> bool:
    """Move the row on from ``state``; return False if another process did.

    The UPDATE matches only the row as read, so of two processes that read
    the same state, the second one's UPDATE changes nothing. With ``tick``
    it also records the tick, and only forwards.
    """
    guard = Q(name=state.name) & _as_read("next_tick_at", state.next_tick_at)
    changes = {"next_tick_at": _stored(next_tick), "updated_at": _stored(now)}
    if tick is not None:
        if not _after_last(tick, state.last_tick_at):
            return False
        # The row as read, so that "after" was decided on what is stored.
        guard &= _as_read("last_tick_at", state.last_tick_at)
        changes["last_tick_at"] = _stored(tick)
    return Schedule.objects.using(db).filter(guard).update(**changes) == 1


def _as_read(column: str, value: datetime | None) -> Q:
    """Match rows whose ``column`` still holds ``value`` (``=`` skips NULL)."""
    if value is None:
        return Q(**{f"{column}__isnull": True})
    return Q(**{column: value})


def _after_last(tick: datetime, last: datetime | None) -> bool:
    """Return whether ``tick`` comes after the stored last tick ``last``.

    With USE_TZ = False a stored wall time of the repeated autumn hour
    names two instants, and the ticks of that hour's second pass are stored
    as times that compare lower than those of its first pass: a tick counts
    as after when it is later than the first instant ``last`` may name, and
    is not ``last`` itself.
    """
    if last is None:
        return True
    if timezone.is_aware(last):
        return tick > last
    return tick > _readings(last)[0] and _stored(tick) != last


def _readings(value: datetime) -> list[datetime]:
    """Return the instants, in UTC and in order, a naive stored time names."""
    zone = timezone.get_default_timezone()
    # In UTC before they are compared: within one zone, fold is ignored.
    readings = {value.replace(tzinfo=zone, fold=f).astimezone(UTC) for f in (0, 1)}
    return sorted(readings)


def _log_missed(
    schedule: PeriodicSchedule, first_due: datetime, tick: datetime
) -> None:
    missed = 0
    moment = first_due - timedelta(microseconds=1)
    while missed < MISSED_COUNT_MAX:
        moment = schedule.next_tick(moment)
        if moment >= tick:
            break
        missed += 1
    if missed:
        logger.warning(
            "schedule ticks missed, enqueued the latest only schedule=%s "
            "missed=%s%s first_missed=%s tick=%s",
            schedule.name,
            missed,
            "+" if missed == MISSED_COUNT_MAX else "",
            first_due.isoformat(),
            tick.isoformat(),
        )


def _stored(moment: datetime) -> datetime:
    """Return the aware ``moment`` as Django stores it under USE_TZ."""
    if django_settings.USE_TZ:
        return moment
    return timezone.make_naive(moment, timezone.get_default_timezone())


def _clock_instant(clock: datetime, machine: datetime | None = None) -> datetime:
    """Return the jobs' clock as an aware UTC instant.

    With USE_TZ = False the clock is read as a naive local time, which names
    two instants in the repeated autumn hour: the one nearer this machine's
    clock (``machine``, for tests) is meant, as clocks differ by far less
    than the hour.
    """
    if timezone.is_aware(clock):
        return clock.astimezone(UTC)
    machine = machine or datetime.now(UTC)
    return min(_readings(clock), key=lambda reading: abs(reading - machine))


def _aware(value: datetime) -> datetime:
    """Return a stored or clock time as an aware UTC datetime."""
    if timezone.is_naive(value):
        value = value.replace(tzinfo=timezone.get_default_timezone())
    return value.astimezone(UTC)


class Checker:
    """Check schedules on a thread of its own, at most every few seconds.

    The worker's maintenance loop calls ``poke``, which never waits: a
    slow database delays the next check, never a heartbeat.
    """

    def __init__(self, every_seconds: float | None = None) -> None:
        self.every_seconds = every_seconds or CHECK_SECONDS
        self.due = threading.Event()
        self.thread: threading.Thread | None = None
        self.next_at = 0.0

    def poke(self) -> None:
        if time.monotonic() < self.next_at:
            return
        self.next_at = time.monotonic() + self.every_seconds
        if self.thread is None:
            self.thread = threading.Thread(
                target=self._run, name="klerk-schedules", daemon=True
            )
            self.thread.start()
        self.due.set()

    def _run(self) -> None:
        while True:
            self.due.wait()
            self.due.clear()
            _check_logged()


def _check_logged() -> None:
    try:
        check_schedules()
    except Error as error:
        logger.warning(
            "database error, schedules not checked error=%s", type(error).__name__
        )
    except Exception:
        logger.exception("schedules not checked")
    finally:
        try:
            close_old_connections()
        except Error:
            logger.debug("broken connection not closed cleanly", exc_info=True)
