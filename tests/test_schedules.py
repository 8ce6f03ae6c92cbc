"""Periodic schedules: declaring, ticking once, missed ticks, DST, workers."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone as dj_timezone

from klerk_django import checks, job, periodic, schedules
from klerk_django.exceptions import (
    ArgumentError,
    CronError,
    ScheduleError,
    SettingsError,
)
from klerk_django.models import Job, Schedule
from klerk_django.schedules import check_schedules
from tests.testapp.more_jobs import noop
from tests.workers import ROOT, running_worker, wait_for

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
NAME = "tests.every"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def at(zone: ZoneInfo, *parts: int, fold: int = 0) -> datetime:
    return datetime(*parts, tzinfo=zone, fold=fold).astimezone(UTC)


def aware(value: datetime) -> datetime:
    """Return a time read from the database as aware UTC, whatever USE_TZ."""
    if dj_timezone.is_naive(value):
        value = value.replace(tzinfo=dj_timezone.get_default_timezone())
    return value.astimezone(UTC)


def row(name: str = NAME) -> Schedule:
    return Schedule.objects.get(name=name)


def ticked(name: str = NAME) -> list[datetime]:
    """Return the run times of the jobs of ``name``'s ticks, in order."""
    prefix = f"schedule:{name}:"
    jobs = Job.objects.filter(unique_key__startswith=prefix).order_by("run_after")
    return [aware(run_after) for run_after in jobs.values_list("run_after", flat=True)]


@pytest.fixture(autouse=True)
def only_these_schedules(monkeypatch):
    """Hide the schedules other apps declare, and forget this test's own."""
    monkeypatch.setattr(schedules, "_declared", {})


@pytest.fixture
def declare():
    def declare_schedule(expression: str, name: str = NAME, **options):
        periodic(expression, name=name, **options)(noop)
        return schedules.get(name)

    return declare_schedule


# Declaring


def test_periodic_declares_a_schedule_and_returns_the_job_function(declare):
    declared = periodic(
        "0 6 * * mon-fri",
        timezone="Europe/Berlin",
        name="tests.report",
        args=[1],
        kwargs={"size": "full"},
    )(noop)

    schedule = schedules.get("tests.report")
    assert declared is noop
    assert (schedule.job, schedule.time_zone, str(schedule.cron)) == (
        "tests.noop",
        "Europe/Berlin",
        "0 6 * * mon-fri",
    )
    assert (schedule.args, schedule.kwargs) == ((1,), {"size": "full"})


def test_periodic_names_the_schedule_after_its_job_by_default():
    periodic("@hourly")(noop)

    assert [schedule.name for schedule in schedules.declared()] == ["tests.noop"]


def test_two_schedules_may_enqueue_one_job():
    periodic("0 3 * * sun", name="tests.weekly", kwargs={"full": True})(
        periodic("*/15 8-18 * * mon-fri", name="tests.often")(noop)
    )

    declared = {schedule.name: schedule for schedule in schedules.declared()}
    assert sorted(declared) == ["tests.often", "tests.weekly"]
    assert {schedule.job for schedule in declared.values()} == {"tests.noop"}
    assert declared["tests.weekly"].kwargs == {"full": True}


def test_periodic_below_job_is_refused():
    with pytest.raises(ScheduleError, match="must be declared above @job"):

        @job(name="tests.periodic_below")
        @periodic("* * * * *")
        def below() -> None:
            pass


def test_an_unknown_time_zone_is_refused_by_name(declare):
    with pytest.raises(ScheduleError) as caught:
        declare("0 6 * * *", timezone="Europe/Berlinn")

    assert "unknown time zone 'Europe/Berlinn'" in str(caught.value)
    assert caught.value.name == NAME


def test_a_bad_expression_is_refused_at_declaration(declare):
    with pytest.raises(CronError, match="minute field has 60"):
        declare("60 * * * *")
    assert schedules.get(NAME) is None


def test_arguments_must_be_json_and_fit_the_function():
    @job(name="tests.two_arguments")
    def two(first: int, second: int) -> None:
        pass

    with pytest.raises(ArgumentError):
        periodic("* * * * *", args=[object()])(noop)
    with pytest.raises(ArgumentError, match="cannot be called"):
        periodic("* * * * *", args=[1])(two)


def test_one_name_for_two_rules_is_refused(declare):
    declare("0 6 * * *")
    declare("0 6 * * *")

    with pytest.raises(ScheduleError, match="declared twice"):
        declare("0 7 * * *")


# Settings and the system check


def test_settings_declare_schedules_too(settings):
    settings.KLERK_SCHEDULES = {
        "nightly": {
            "job": "tests.noop",
            "cron": "0 2 * * *",
            "timezone": "America/New_York",
            "kwargs": {"full": True},
        }
    }

    (schedule,) = schedules.declared()
    assert (schedule.name, schedule.time_zone, schedule.source) == (
        "nightly",
        "America/New_York",
        "settings",
    )
    assert checks.check_schedules() == []


@pytest.mark.parametrize(
    "entry, problem",
    [
        ({"job": "tests.noop", "cron": "0 25 * * *"}, "hour field has 25"),
        (
            {"job": "tests.noop", "cron": "0 6 * * *", "timezone": "Mars/Olympus"},
            "unknown time zone 'Mars/Olympus'",
        ),
        ({"job": "tests.gone", "cron": "0 6 * * *"}, "'tests.gone'"),
        ({"job": "tests.noop"}, "needs 'cron'"),
        ({"job": "tests.noop", "cron": "* * * * *", "every": 5}, "unknown keys"),
        ({"job": "tests.noop", "cron": "* * * * *", "kwargs": [1]}, "dict of kwargs"),
        ({"job": "tests.noop", "cron": "* * * * *", "args": "ab"}, "list of args"),
        ("0 6 * * *", "needs a dict"),
    ],
)
def test_the_system_check_names_what_is_wrong(settings, entry, problem):
    settings.KLERK_SCHEDULES = {"nightly": entry}

    (error,) = checks.check_schedules()

    assert error.id == "klerk_django.E013"
    assert "KLERK_SCHEDULES['nightly']" in error.msg
    assert problem in error.msg


def test_a_settings_schedule_may_not_reuse_a_name_from_code(settings, declare):
    declare("* * * * *")
    settings.KLERK_SCHEDULES = {NAME: {"job": "tests.noop", "cron": "0 6 * * *"}}

    (error,) = checks.check_schedules()

    assert "declared in code" in error.msg
    with pytest.raises(SettingsError):
        schedules.declared()


# Ticks


@pytest.mark.django_db
def test_a_new_schedule_starts_from_now(declare):
    declare("*/10 * * * *")

    assert check_schedules(now=utc(2026, 5, 1, 10, 25)) == []

    state = row()
    assert state.last_tick_at is None
    assert aware(state.next_tick_at) == utc(2026, 5, 1, 10, 30)
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_a_due_tick_enqueues_its_job_once_with_the_tick_as_run_after(declare):
    declare("*/10 * * * *", args=["report"], kwargs={"size": 2})
    check_schedules(now=utc(2026, 5, 1, 10, 25))

    (first,) = check_schedules(now=utc(2026, 5, 1, 10, 30, 4))
    again = check_schedules(now=utc(2026, 5, 1, 10, 31))

    assert again == []
    stored = Job.objects.get()
    assert stored.pk == first.pk
    assert stored.unique_key == f"schedule:{NAME}:2026-05-01T10:30:00+00:00"
    assert aware(stored.run_after) == utc(2026, 5, 1, 10, 30)
    assert stored.arguments == {"args": ["report"], "kwargs": {"size": 2}}
    state = row()
    assert aware(state.last_tick_at) == utc(2026, 5, 1, 10, 30)
    assert aware(state.next_tick_at) == utc(2026, 5, 1, 10, 40)


@pytest.mark.django_db
def test_after_downtime_only_the_latest_missed_tick_is_enqueued(declare, caplog):
    declare("*/10 * * * *")
    check_schedules(now=utc(2026, 5, 1, 10, 25))

    with caplog.at_level(logging.WARNING, logger="klerk_django.schedules"):
        check_schedules(now=utc(2026, 5, 1, 11, 15))

    assert ticked() == [utc(2026, 5, 1, 11, 10)]
    (warning,) = [
        record.getMessage() for record in caplog.records if record.levelno >= 30
    ]
    assert f"schedule={NAME} missed=4 " in warning
    assert "first_missed=2026-05-01T10:30:00+00:00" in warning
    assert aware(row().next_tick_at) == utc(2026, 5, 1, 11, 20)


@pytest.mark.django_db
def test_two_processes_that_read_the_same_state_enqueue_the_tick_once(declare):
    schedule = declare("*/10 * * * *")
    check_schedules(now=utc(2026, 5, 1, 10, 25))
    now = utc(2026, 5, 1, 10, 30, 1)
    states, _ = schedules._read_states("default", [NAME])

    first = schedules._check_one("default", schedule, states[NAME], now)
    second = schedules._check_one("default", schedule, states[NAME], now)

    assert first is not None and second is None
    assert ticked() == [utc(2026, 5, 1, 10, 30)]


@pytest.mark.django_db
def test_a_stale_state_cannot_move_the_schedule_back(declare):
    schedule = declare("*/10 * * * *")
    check_schedules(now=utc(2026, 5, 1, 10, 25))
    stale, _ = schedules._read_states("default", [NAME])
    check_schedules(now=utc(2026, 5, 1, 10, 30, 1))
    check_schedules(now=utc(2026, 5, 1, 10, 40, 1))

    late = schedules._check_one(
        "default", schedule, stale[NAME], utc(2026, 5, 1, 10, 30, 2)
    )

    assert late is None
    assert ticked() == [utc(2026, 5, 1, 10, 30), utc(2026, 5, 1, 10, 40)]
    assert aware(row().last_tick_at) == utc(2026, 5, 1, 10, 40)


@pytest.mark.django_db
def test_a_changed_expression_takes_effect_before_the_old_next_tick(declare):
    declare("0 * * * *")
    check_schedules(now=utc(2026, 5, 1, 10, 25))
    schedules.forget(NAME)
    declare("*/10 * * * *")

    check_schedules(now=utc(2026, 5, 1, 10, 26))

    assert aware(row().next_tick_at) == utc(2026, 5, 1, 10, 30)


@pytest.mark.django_db
def test_a_schedule_whose_job_is_gone_logs_an_error_once_per_tick(settings, caplog):
    settings.KLERK_SCHEDULES = {"orphan": {"job": "tests.gone", "cron": "*/10 * * * *"}}
    check_schedules(now=utc(2026, 5, 1, 10, 25))

    with caplog.at_level(logging.ERROR, logger="klerk_django.schedules"):
        first = check_schedules(now=utc(2026, 5, 1, 10, 30, 1))
        again = check_schedules(now=utc(2026, 5, 1, 10, 31))

    assert first == again == []
    (error,) = [
        record.getMessage() for record in caplog.records if record.levelno >= 40
    ]
    assert "schedule tick skipped schedule=orphan" in error
    assert "'tests.gone'" in error
    state = row("orphan")
    assert state.last_tick_at is None
    assert aware(state.next_tick_at) == utc(2026, 5, 1, 10, 40)


@pytest.mark.django_db
def test_a_schedule_that_cannot_enqueue_leaves_the_others_ticking(settings):
    settings.KLERK_SCHEDULES = {
        "a-orphan": {"job": "tests.gone", "cron": "*/10 * * * *"},
        "b-fine": {"job": "tests.noop", "cron": "*/10 * * * *"},
    }
    check_schedules(now=utc(2026, 5, 1, 10, 25))

    (enqueued,) = check_schedules(now=utc(2026, 5, 1, 10, 30, 1))

    assert enqueued.unique_key.startswith("schedule:b-fine:")


@pytest.mark.django_db
def test_names_that_a_collation_takes_for_one_tick_apart(declare, caplog):
    # MariaDB's default collation ignores case and trailing spaces, so a
    # row for each name may not be possible; neither may stop the others.
    for name in ("tests.every", "Tests.Every", "tests.every "):
        declare("*/10 * * * *", name=name)
    check_schedules(now=utc(2026, 5, 1, 10, 1))

    check_schedules(now=utc(2026, 5, 1, 10, 10, 1))

    tick = utc(2026, 5, 1, 10, 10)
    keys = set(Job.objects.values_list("unique_key", flat=True))
    stored = set(Schedule.objects.values_list("name", flat=True))
    assert stored
    for name in ("tests.every", "Tests.Every", "tests.every "):
        assert (schedules.tick_key(name, tick) in keys) == (name in stored)
        if name not in stored:
            assert f"schedule={name}" in caplog.text


@pytest.mark.django_db
def test_a_tick_job_keeps_its_key_while_ready(declare):
    declare("*/10 * * * *")
    check_schedules(now=utc(2026, 5, 1, 10, 25))
    (tick_job,) = check_schedules(now=utc(2026, 5, 1, 10, 30, 1))

    again = noop.using(unique_key=tick_job.unique_key).enqueue()

    assert again.pk == tick_job.pk and again.is_duplicate


@pytest.mark.django_db
def test_the_management_command_lists_and_checks_schedules(declare, capsys):
    declare("0 6 * * *", timezone="Europe/Berlin")

    call_command("klerk_schedules", "check")
    call_command("klerk_schedules", "list")

    out = capsys.readouterr().out
    assert "enqueued 0 jobs" in out
    assert NAME in out and "0 6 * * *" in out and "Europe/Berlin" in out


# Daylight saving time, in the database. These also run under USE_TZ =
# False with TIME_ZONE = "Europe/Berlin", in test_daylight_under_both_...


def wall(moments: list[datetime], zone: ZoneInfo) -> list[str]:
    """Return wall-clock times: with USE_TZ = False, that is all is stored.

    PostgreSQL reads a repeated wall time as its second instant, so under
    USE_TZ = False 02:30 CEST comes back as 02:30 CET.
    """
    return [moment.astimezone(zone).strftime("%m-%d %H:%M") for moment in moments]


def walk(start: datetime, end: datetime, step: timedelta) -> None:
    """Check schedules at every ``step`` from ``start`` to ``end``."""
    moment = start
    while moment <= end:
        check_schedules(now=moment)
        moment += step


@pytest.mark.django_db
@pytest.mark.parametrize(
    "zone, start",
    [
        (BERLIN, utc(2026, 3, 26)),
        (BERLIN, utc(2026, 10, 22)),
        (NEW_YORK, utc(2026, 3, 5)),
        (NEW_YORK, utc(2026, 10, 29)),
    ],
    ids=["berlin-spring", "berlin-autumn", "new-york-spring", "new-york-autumn"],
)
def test_daylight_six_oclock_daily_stays_at_six_local(declare, zone, start):
    declare("0 6 * * *", timezone=zone.key)

    walk(start, start + timedelta(days=6), timedelta(minutes=30))

    local = [moment.astimezone(zone) for moment in ticked()]
    assert [(moment.hour, moment.minute) for moment in local] == [(6, 0)] * 6
    assert len({moment.date() for moment in local}) == 6


@pytest.mark.django_db
def test_daylight_repeated_autumn_hour_fires_once(declare):
    declare("30 2 * * *", timezone="Europe/Berlin")

    walk(utc(2026, 10, 24, 12), utc(2026, 10, 26, 12), timedelta(minutes=5))

    assert wall(ticked(), BERLIN) == ["10-25 02:30", "10-26 02:30"]


@pytest.mark.django_db
def test_daylight_hourly_skips_the_repeated_hour(declare):
    declare("0 * * * *", timezone="Europe/Berlin")

    walk(utc(2026, 10, 24, 22, 1), utc(2026, 10, 25, 3, 1), timedelta(minutes=5))

    assert wall(ticked(), BERLIN) == [
        "10-25 01:00",
        "10-25 02:00",
        "10-25 03:00",
        "10-25 04:00",
    ]


@pytest.mark.django_db
def test_daylight_skipped_spring_time_fires_when_the_clocks_jump(declare):
    declare("30 2 * * *", timezone="Europe/Berlin")

    walk(utc(2026, 3, 28, 12), utc(2026, 3, 30, 12), timedelta(minutes=5))

    assert ticked() == [utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)]


@pytest.mark.django_db
def test_daylight_checks_in_the_second_pass_enqueue_nothing_twice(declare):
    declare("*/20 * * * *", timezone="America/New_York")
    first_pass = at(NEW_YORK, 2026, 11, 1, 1, 0)

    walk(first_pass, first_pass + timedelta(hours=3), timedelta(minutes=1))

    local = [moment.astimezone(NEW_YORK).strftime("%H:%M %Z") for moment in ticked()]
    assert local == [
        "01:20 EDT",
        "01:40 EDT",
        "02:00 EST",
        "02:20 EST",
        "02:40 EST",
        "03:00 EST",
    ]


# When the clocks go back in Berlin, New York and Lord Howe (by half an
# hour there), in UTC.
FALL_BACKS = [
    utc(2026, 10, 25, 1),
    utc(2026, 11, 1, 6),
    utc(2026, 4, 4, 15),
]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "fall_back", FALL_BACKS, ids=["berlin", "new-york", "lord-howe"]
)
def test_daylight_of_the_storage_zone_costs_a_utc_schedule_no_tick(declare, fall_back):
    # Under USE_TZ = False in such a zone, the ticks of the repeated hour
    # are stored as wall times that read as earlier than the last tick's.
    declare("*/20 * * * *", timezone="UTC")
    start = fall_back - timedelta(hours=1, minutes=30)

    walk(start, start + timedelta(hours=2, minutes=40), timedelta(minutes=1))

    expected = [start + timedelta(minutes=10 + 20 * n) for n in range(8)]
    # Read from the keys: the stored run times of the two passes look alike.
    keys = Job.objects.filter(unique_key__startswith=f"schedule:{NAME}:")
    keys = keys.values_list("unique_key", flat=True)
    assert sorted(keys) == [schedules.tick_key(NAME, tick) for tick in expected]


@pytest.mark.parametrize("fold", [0, 1])
def test_a_naive_clock_reads_as_the_instant_nearer_the_machines(fold):
    instant = at(BERLIN, 2026, 10, 25, 2, 30, fold=fold)
    naive = instant.astimezone(BERLIN).replace(tzinfo=None, fold=0)

    with override_settings(USE_TZ=False, TIME_ZONE="Europe/Berlin"):
        read = schedules._clock_instant(naive, machine=instant + timedelta(seconds=3))

    assert read == instant


SELECTED = "daylight and not use_tz or due_tick or downtime or stale_state"


@pytest.mark.slow
@pytest.mark.parametrize("use_tz", ["0", "1"], ids=["naive", "aware"])
def test_daylight_under_both_use_tz_settings_in_berlin(use_tz):
    env = dict(
        os.environ,
        KLERK_TEST_USE_TZ=use_tz,
        KLERK_TEST_TIME_ZONE="Europe/Berlin",
        KLERK_TEST_SETTINGS=json.dumps({}),
    )

    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        + ["tests/test_schedules.py", "-k", SELECTED],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "14 passed" in done.stdout, done.stdout


# Real worker processes


def set_clock(path, moment: datetime) -> None:
    path.write_text(moment.isoformat())


def checked_at(path, pids: list[int], moment: datetime) -> bool:
    """Return whether every worker has finished a check at ``moment``."""
    expected = moment.isoformat()
    for pid in pids:
        seen = path.with_name(f"{path.name}.{pid}")
        if not seen.exists() or expected not in seen.read_text().split():
            return False
    return True


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_three_workers_enqueue_each_tick_once(tmp_path, monkeypatch):
    clock = tmp_path / "clock"
    start = utc(2030, 1, 1, 0, 0, 30)
    set_clock(clock, start)
    monkeypatch.setenv("KLERK_TEST_CLOCK_FILE", str(clock))
    overrides = {
        "KLERK_SCHEDULES": {"minutely": {"job": "tests.noop", "cron": "* * * * *"}}
    }
    log = tmp_path / "workers.log"
    options = ("--queue", "schedules-test", "--concurrency", "1")

    with (
        running_worker(*options, settings=overrides, log=log) as first,
        running_worker(*options, settings=overrides, log=log) as second,
        running_worker(*options, settings=overrides, log=log) as third,
    ):
        pids = [first.pid, second.pid, third.pid]
        # Each step waits until all three have checked at the new time, so
        # each tick was due for every one of them.
        moments = [start] + [start + timedelta(minutes=n) for n in range(1, 9)]
        moments.append(start + timedelta(minutes=20))
        for moment in moments:
            set_clock(clock, moment)
            wait_for(lambda m=moment: checked_at(clock, pids, m), timeout=120)

    expected = [utc(2030, 1, 1, 0, minute) for minute in range(1, 9)]
    expected.append(utc(2030, 1, 1, 0, 20))
    assert ticked("minutely") == expected, log.read_text()
    keys = list(Job.objects.values_list("unique_key", flat=True))
    assert len(keys) == len(set(keys)) == 9
    assert log.read_text().count("schedule ticked schedule=minutely") == 9
    assert "missed=11 " in log.read_text()


# The admin page


@pytest.mark.django_db
def test_the_admin_lists_schedules_read_only(admin_client, declare):
    from django.urls import reverse

    declare("0 6 * * *", timezone="Europe/Berlin")
    check_schedules(now=utc(2026, 5, 1, 10, 25))
    Schedule.objects.create(name="tests.removed")
    changelist = reverse("admin:klerk_django_schedule_changelist")
    page = reverse("admin:klerk_django_schedule_change", args=[NAME])

    listing = admin_client.get(changelist).content.decode()
    refused = admin_client.post(page, {"name": "renamed"})

    assert "0 6 * * *" in listing and "Europe/Berlin" in listing
    assert "tests.removed" in listing and "not declared" in listing
    assert "schedule/add/" not in listing
    assert admin_client.get(page).status_code == 200
    assert refused.status_code == 403
    assert Schedule.objects.filter(name=NAME).exists()


@pytest.mark.django_db
def test_a_schedule_without_a_next_tick_is_logged_and_the_others_go_on(declare, caplog):
    # No new year comes after 9999.
    declare("@yearly", name="tests.rare")
    declare("* * * * *")
    check_schedules(now=utc(9999, 12, 31, 23, 50))

    with caplog.at_level(logging.ERROR, logger="klerk_django.schedules"):
        (enqueued,) = check_schedules(now=utc(9999, 12, 31, 23, 51, 30))

    assert enqueued.unique_key.startswith(f"schedule:{NAME}:")
    assert any(
        "schedule not checked schedule=tests.rare" in record.getMessage()
        for record in caplog.records
    )


def test_the_checker_returns_at_once_and_survives_a_failed_check(monkeypatch):
    release = threading.Event()
    calls: list[int] = []

    def check(now=None):
        calls.append(len(calls))
        if len(calls) == 1:
            release.wait(60)
        if len(calls) == 2:
            raise RuntimeError("a check that fails")
        return []

    monkeypatch.setattr(schedules, "check_schedules", check)
    checker = schedules.Checker(every_seconds=0.001)

    checker.poke()
    wait_for(lambda: calls == [0])
    thread = checker.thread
    checker.next_at = 0.0
    checker.poke()  # the first check still runs: this one only marks it due
    release.set()
    wait_for(lambda: calls == [0, 1])
    checker.next_at = 0.0
    checker.poke()

    wait_for(lambda: calls == [0, 1, 2])
    assert checker.thread is thread and thread.is_alive()
