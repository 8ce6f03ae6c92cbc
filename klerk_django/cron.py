"""Cron expressions: parse them, and find their ticks in a time zone.

An expression has the five standard fields, minute, hour, day of month,
month and day of week, each ``*``, a number, a range ``a-b``, a step
``*/n`` or ``a-b/n``, or a comma-separated list of these. Months and days of
week also take English names (``jan``, ``mon``); Sunday is 0 or 7. When
both day fields are restricted (neither starts with ``*``), a day matches
if either matches; otherwise both must.

Ticks are instants: the wall-clock times an expression names are turned
into instants in the schedule's own IANA time zone, by two rules:

* a wall-clock time that occurs twice (the hour repeated when daylight
  saving time ends) names its first occurrence only;
* a wall-clock time that does not occur (the hour skipped when daylight
  saving time starts) names the first instant after the gap, the moment
  the clocks jump. Several such times name that same instant, which is
  one tick.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from .exceptions import CronError

UTC = timezone.utc
FIELDS = ("minute", "hour", "day of month", "month", "day of week")
BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
MONTH_NAMES = "jan feb mar apr may jun jul aug sep oct nov dec".split()
DAY_NAMES = "sun mon tue wed thu fri sat".split()
NAMES = {
    "month": {name: number for number, name in enumerate(MONTH_NAMES, 1)},
    "day of week": {name: number for number, name in enumerate(DAY_NAMES)},
}
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# The longest days in a month, February counted in a leap year.
MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# How far to look for a tick: the 29th of February on a given weekday
# may be 40 years away, when a century year is no leap year.
SEARCH_DAYS = 366 * 50


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression; ``parse`` makes one."""

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    def __str__(self) -> str:
        return self.expression

    def matches_day(self, day: date) -> bool:
        """Return whether ``day`` is one of this expression's days."""
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        # isoweekday: Monday 1 ... Sunday 7; cron: Sunday 0, Monday 1.
        in_week = day.isoweekday() % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week

    def next_tick(self, after: datetime, zone: ZoneInfo) -> datetime:
        """Return the first tick strictly after the aware ``after``, in UTC.

        Raises CronError if no tick comes before the end of the calendar.
        """
        start = _wall_minute(after, zone)
        for wall in self._walk(start, forward=True):
            tick = instant(wall, zone)
            if tick > after:
                return tick
        raise CronError(self.expression, f"has no tick after {after}")

    def previous_tick(self, at: datetime, zone: ZoneInfo) -> datetime | None:
        """Return the last tick at or before the aware ``at``, in UTC."""
        # Every wall time later than ``start`` is an instant after ``at``,
        # whatever offset change lies between.
        start = _wall_minute(at, zone) + _offset_swing(at, zone)
        for wall in self._walk(start, forward=False):
            tick = instant(wall, zone)
            if tick <= at:
                return tick
        return None

    def _walk(self, start: datetime, forward: bool) -> Iterator[datetime]:
        """Yield the wall times of this expression from ``start`` on.

        Forward: those at or after ``start``, earliest first; backward:
        those at or before it, latest first. Stops after SEARCH_DAYS days
        or at the end of the calendar.
        """
        step = timedelta(days=1 if forward else -1)
        day = start.date()
        for _ in range(SEARCH_DAYS):
            if self.matches_day(day):
                for moment in self._times(forward):
                    wall = datetime.combine(day, moment)
                    if (wall >= start) if forward else (wall <= start):
                        yield wall
            try:
                day += step
            except OverflowError:
                return

    def _times(self, forward: bool) -> Iterator[time]:
        hours = self.hours if forward else reversed(self.hours)
        for hour in hours:
            minutes = self.minutes if forward else reversed(self.minutes)
            for minute in minutes:
                yield time(hour, minute)


def parse(expression: str) -> Cron:
    """Return the Cron for ``expression`` or raise CronError naming why."""
    if not isinstance(expression, str):
        raise CronError(expression, "is not a string such as '0 6 * * *'")
    text = ALIASES.get(expression.strip().lower(), expression)
    parts = text.split()
    if len(parts) != len(FIELDS):
        raise CronError(
            expression,
            f"has {len(parts)} fields, not the 5 of minute, hour, day of "
            "month, month and day of week",
        )

    values = [
        _parse_field(_Field(expression, name, low, high), part.lower())
        for name, part, (low, high) in zip(FIELDS, parts, BOUNDS, strict=True)
    ]
    minutes, hours, days, months, weekdays = values
    cron = Cron(
        expression=expression,
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days=frozenset(days),
        months=frozenset(months),
        # Sunday is both 0 and 7.
        weekdays=frozenset(day % 7 for day in weekdays),
        any_day=parts[2].startswith("*"),
        any_weekday=parts[4].startswith("*"),
    )
    _check_some_day_exists(cron)
    return cron


@dataclass(frozen=True)
class _Field:
    expression: str
    name: str
    low: int
    high: int

    def error(self, problem: str) -> CronError:
        return CronError(self.expression, problem, self.name)


def _parse_field(field: _Field, text: str) -> set[int]:
    values: set[int] = set()
    for item in text.split(","):
        values |= _parse_item(field, item)
    return values


def _parse_item(field: _Field, item: str) -> set[int]:
    span, slash, step_text = item.partition("/")
    step = 1
    if slash:
        step = _number(field, step_text, "a step")
        if step < 1:
            raise field.error(f"has a step of 0 in {item!r}")
    if span == "*":
        first, last = field.low, field.high
    elif "-" in span:
        first_text, _, last_text = span.partition("-")
        first, last = _value(field, first_text), _value(field, last_text)
        if first > last:
            raise field.error(f"has the backward range {span!r}; write it low-high")
    else:
        first = _value(field, span)
        # "5/15" runs from 5 to the end in steps of 15, as in Vixie cron.
        last = field.high if slash else first
    return set(range(first, last + 1, step))


def _value(field: _Field, text: str) -> int:
    named = NAMES.get(field.name, {}).get(text)
    if named is not None:
        return named
    names = NAMES.get(field.name)
    expected = f"a number or a name such as {next(iter(names))!r}" if names else ""
    value = _number(field, text, expected or "a number")
    if not field.low <= value <= field.high:
        raise field.error(f"has {value}, outside {field.low} to {field.high}")
    return value


def _number(field: _Field, text: str, expected: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise field.error(f"has {text!r} where {expected} belongs")
    return int(text)


def _check_some_day_exists(cron: Cron) -> None:
    """Refuse expressions such as ``0 0 30 2 *`` that name no real day."""
    if not (cron.any_day or cron.any_weekday):
        return  # either day field may match, and every month has weekdays
    possible = any(
        day <= MONTH_DAYS[month - 1] for month in cron.months for day in cron.days
    )
    if not possible:
        raise CronError(
            cron.expression, "names no day that exists in its months", "day of month"
        )


def instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """Return the UTC instant that the naive wall time ``wall`` names.

    A repeated wall time names its first occurrence; a skipped one names
    the moment the clocks jump over it (see the module's rules).
    """
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    return _end_of_gap(wall, zone)


def _end_of_gap(wall: datetime, zone: ZoneInfo) -> datetime:
    """Return the instant at which the clocks jumped over ``wall``.

    With the offset after the jump ``wall`` is an instant before it, with
    the offset before the jump one after it; the jump lies in between, on
    a whole second.
    """
    low = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    low, high = min(low, high), max(low, high)
    after_jump = high.astimezone(zone).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        middle = middle.replace(microsecond=0)
        if middle.astimezone(zone).utcoffset() == after_jump:
            high = middle
        else:
            low = middle
    return high


def _wall_minute(moment: datetime, zone: ZoneInfo) -> datetime:
    wall = moment.astimezone(zone).replace(tzinfo=None)
    return wall.replace(second=0, microsecond=0)


def _offset_swing(moment: datetime, zone: ZoneInfo) -> timedelta:
    """Return how far the zone's offset moves within a day of ``moment``."""
    offsets = []
    for hours in (-26, 0, 26):
        try:
            near = (moment + timedelta(hours=hours)).astimezone(zone)
        except OverflowError:
            continue
        offsets.append(near.utcoffset() or timedelta(0))
    return max(offsets) - min(offsets)
