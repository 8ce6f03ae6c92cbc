"""Cron expressions: parsing, ticks, and daylight saving time changes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from klerk_django import cron
from klerk_django.exceptions import CronError

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def ticks(expression: str, after: datetime, zone: ZoneInfo, count: int) -> list:
    parsed = cron.parse(expression)
    found = []
    for _ in range(count):
        after = parsed.next_tick(after, zone)
        found.append(after)
    return found


def local(moments: list[datetime], zone: ZoneInfo) -> list[str]:
    return [moment.astimezone(zone).strftime("%m-%d %H:%M %Z") for moment in moments]


# Parsing


def test_fields_take_lists_ranges_steps_and_names():
    parsed = cron.parse("0,30 9-17/4 1,15 JAN-mar mon-fri")

    assert parsed.minutes == (0, 30)
    assert parsed.hours == (9, 13, 17)
    assert parsed.days == {1, 15}
    assert parsed.months == {1, 2, 3}
    assert parsed.weekdays == {1, 2, 3, 4, 5}


def test_sunday_is_0_and_7_and_a_start_with_a_step_runs_to_the_end():
    parsed = cron.parse("5/20 * * * 7")

    assert parsed.minutes == (5, 25, 45)
    assert parsed.weekdays == {0}


@pytest.mark.parametrize(
    "alias, expression",
    [("@daily", "0 0 * * *"), ("@hourly", "0 * * * *"), ("@weekly", "0 0 * * 0")],
)
def test_aliases_mean_their_expressions(alias, expression):
    after = utc(2026, 5, 6, 7, 8)

    assert ticks(alias, after, UTC, 3) == ticks(expression, after, UTC, 3)


@pytest.mark.parametrize(
    "expression, field, problem",
    [
        ("", "", "has 0 fields"),
        ("* * * *", "", "has 4 fields"),
        ("* * * * * *", "", "has 6 fields"),
        ("60 * * * *", "minute", "has 60, outside 0 to 59"),
        ("* 24 * * *", "hour", "has 24, outside 0 to 23"),
        ("* * 0 * *", "day of month", "has 0, outside 1 to 31"),
        ("* * * 13 *", "month", "has 13, outside 1 to 12"),
        ("* * * * 8", "day of week", "has 8, outside 0 to 7"),
        ("*/0 * * * *", "minute", "step of 0"),
        ("30-10 * * * *", "minute", "backward range '30-10'"),
        ("a * * * *", "minute", "has 'a' where a number belongs"),
        ("* * * * sunday", "day of week", "has 'sunday' where a number or a name"),
        ("1,,2 * * * *", "minute", "has '' where a number belongs"),
        ("-1 * * * *", "minute", "has '' where a number belongs"),
        ("*/x * * * *", "minute", "has 'x' where a step belongs"),
        ("0 0 30 2 *", "day of month", "names no day that exists in its months"),
        ("0 0 31 4,6 mon", None, None),
    ],
)
def test_bad_expressions_are_refused_naming_the_field(expression, field, problem):
    if problem is None:
        # Both day fields restricted: every Monday of April and June.
        assert cron.parse(expression).weekdays == {1}
        return
    with pytest.raises(CronError) as caught:
        cron.parse(expression)

    assert caught.value.field == field
    assert problem in str(caught.value)
    assert repr(expression) in str(caught.value)


def test_an_expression_that_is_no_string_is_refused():
    with pytest.raises(CronError, match="not a string"):
        cron.parse(None)  # type: ignore[arg-type]


# Ticks


def test_next_tick_is_strictly_after_and_on_whole_minutes():
    after = utc(2026, 1, 1, 10, 0, 0)

    assert ticks("* * * * *", after, UTC, 2) == [
        utc(2026, 1, 1, 10, 1),
        utc(2026, 1, 1, 10, 2),
    ]
    assert ticks("* * * * *", after + timedelta(seconds=1), UTC, 1) == [
        utc(2026, 1, 1, 10, 1)
    ]


def test_ticks_cross_months_and_years():
    assert ticks("0 0 1 * *", utc(2026, 11, 15), UTC, 3) == [
        utc(2026, 12, 1),
        utc(2027, 1, 1),
        utc(2027, 2, 1),
    ]


def test_the_29th_of_february_comes_in_leap_years_only():
    assert ticks("0 12 29 2 *", utc(2026, 1, 1), UTC, 2) == [
        utc(2028, 2, 29, 12),
        utc(2032, 2, 29, 12),
    ]


def test_both_day_fields_restricted_match_either_day():
    # The 13th, and every Friday: January 2026 starts on a Thursday.
    found = ticks("0 0 13 * fri", utc(2026, 1, 1), UTC, 4)

    assert [moment.day for moment in found] == [2, 9, 13, 16]


def test_a_day_field_with_a_star_restricts_with_the_other():
    # "*/2" starts with a star: odd days that are also Mondays.
    found = ticks("0 0 */2 * mon", utc(2026, 1, 1), UTC, 3)

    assert [(moment.month, moment.day) for moment in found] == [
        (1, 5),
        (1, 19),
        (2, 9),
    ]


def test_previous_tick_is_the_last_at_or_before_the_moment():
    parsed = cron.parse("*/15 * * * *")

    assert parsed.previous_tick(utc(2026, 4, 1, 10, 14, 59), UTC) == utc(2026, 4, 1, 10)
    assert parsed.previous_tick(utc(2026, 4, 1, 10, 15), UTC) == utc(2026, 4, 1, 10, 15)


# Windows around the changes of 2026 in Berlin and New York.
CHANGES = [
    (utc(2026, 3, 7), utc(2026, 3, 10)),
    (utc(2026, 3, 28), utc(2026, 3, 30)),
    (utc(2026, 10, 24), utc(2026, 10, 26)),
    (utc(2026, 10, 31), utc(2026, 11, 3)),
]


@pytest.mark.parametrize("zone", [BERLIN, NEW_YORK], ids=str)
@pytest.mark.parametrize(
    "expression", ["*/20 * * * *", "30 2 * * *", "0 1,2,3 * * *", "15 6 * * sun"]
)
def test_previous_and_next_ticks_agree_around_the_changes(expression, zone):
    parsed = cron.parse(expression)
    for start, end in CHANGES:
        tick = parsed.next_tick(start, zone)
        while tick < end:
            following = parsed.next_tick(tick, zone)
            between = tick + (following - tick) / 2

            assert parsed.previous_tick(tick, zone) == tick
            assert parsed.previous_tick(between, zone) == tick
            assert parsed.previous_tick(tick - timedelta(microseconds=1), zone) < tick
            tick = following


# Daylight saving time. Europe/Berlin: 2026-03-29 02:00 CET becomes 03:00
# CEST, 2026-10-25 03:00 CEST becomes 02:00 CET. America/New_York:
# 2026-03-08 02:00 EST becomes 03:00 EDT, 2026-11-01 02:00 EDT becomes
# 01:00 EST.


@pytest.mark.parametrize(
    "zone, spring, autumn",
    [
        (BERLIN, utc(2026, 3, 27), utc(2026, 10, 23)),
        (NEW_YORK, utc(2026, 3, 6), utc(2026, 10, 30)),
    ],
    ids=["berlin", "new-york"],
)
def test_a_daily_six_oclock_stays_at_six_local_across_both_changes(
    zone, spring, autumn
):
    for start in (spring, autumn):
        found = ticks("0 6 * * *", start, zone, 4)

        assert [moment.astimezone(zone).hour for moment in found] == [6] * 4
        gaps = {later - earlier for earlier, later in pairwise(found)}
        # One of the days is 23 or 25 hours long.
        assert timedelta(hours=24) in gaps and len(gaps) == 2


def test_a_time_in_the_repeated_autumn_hour_fires_once_in_berlin():
    found = ticks("30 2 * * *", utc(2026, 10, 24, 12), BERLIN, 2)

    assert local(found, BERLIN) == ["10-25 02:30 CEST", "10-26 02:30 CET"]


def test_every_quarter_hour_skips_the_repeat_of_the_autumn_hour_in_berlin():
    found = ticks("*/15 * * * *", utc(2026, 10, 24, 23, 50), BERLIN, 6)

    assert local(found, BERLIN) == [
        "10-25 02:00 CEST",
        "10-25 02:15 CEST",
        "10-25 02:30 CEST",
        "10-25 02:45 CEST",
        "10-25 03:00 CET",
        "10-25 03:15 CET",
    ]


def test_a_time_in_the_repeated_autumn_hour_fires_once_in_new_york():
    found = ticks("30 1 * * *", utc(2026, 10, 31, 12), NEW_YORK, 2)

    assert local(found, NEW_YORK) == ["11-01 01:30 EDT", "11-02 01:30 EST"]
    assert found[0] == utc(2026, 11, 1, 5, 30)


def test_a_skipped_spring_time_fires_when_the_clocks_jump_in_berlin():
    found = ticks("30 2 * * *", utc(2026, 3, 28, 12), BERLIN, 2)

    assert local(found, BERLIN) == ["03-29 03:00 CEST", "03-30 02:30 CEST"]
    assert found[0] == utc(2026, 3, 29, 1)


def test_a_skipped_spring_time_fires_when_the_clocks_jump_in_new_york():
    found = ticks("30 2 * * *", utc(2026, 3, 7, 12), NEW_YORK, 2)

    assert local(found, NEW_YORK) == ["03-08 03:00 EDT", "03-09 02:30 EDT"]
    assert found[0] == utc(2026, 3, 8, 7)


def test_skipped_times_and_the_jump_are_one_tick():
    # 02:00 to 02:45 do not exist and 03:00 is the jump itself.
    found = ticks("*/15 * * * *", utc(2026, 3, 29, 0, 40), BERLIN, 3)

    assert local(found, BERLIN) == [
        "03-29 01:45 CET",
        "03-29 03:00 CEST",
        "03-29 03:15 CEST",
    ]


def test_previous_tick_in_the_second_pass_of_the_repeated_hour():
    # 02:50 CET, in the second pass: its ticks were all in the first.
    parsed = cron.parse("*/20 * * * *")
    second_pass = datetime(2026, 10, 25, 2, 50, fold=1, tzinfo=BERLIN)

    latest = parsed.previous_tick(second_pass, BERLIN)

    assert local([latest], BERLIN) == ["10-25 02:40 CEST"]
    assert local([parsed.next_tick(second_pass, BERLIN)], BERLIN) == ["10-25 03:00 CET"]


def test_ticks_in_utc_know_no_changes():
    found = ticks("30 2 * * *", utc(2026, 3, 28, 12), UTC, 2)

    assert found == [utc(2026, 3, 29, 2, 30), utc(2026, 3, 30, 2, 30)]
