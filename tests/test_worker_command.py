"""The ``klerk_worker`` management command: options, exit codes, signals."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
from django.core.management import CommandError, call_command

from klerk_django.models import Worker as WorkerRecord
from tests.workers import ROOT, start_worker, stop, worker_env

BAD_OPTIONS = [
    (["--concurrency", "0"], "--concurrency must be an integer of at least 1, got 0."),
    (["--concurrency", "-3"], "--concurrency must be an integer of at least 1, got -3"),
    (["--queue", "bad name!"], "--queue 'bad name!' is not a queue name"),
    (["--queue", "ok,bad name!"], "--queue 'bad name!' is not a queue name"),
    (["--poll-seconds", "0"], "--poll-seconds must be a number of seconds above 0"),
    (["--poll-seconds", "-1"], "--poll-seconds must be a number of seconds above 0"),
    (["--poll-seconds", "nan"], "above 0 and at most 86400, got nan."),
    (["--poll-seconds", "inf"], "above 0 and at most 86400, got inf."),
    (["--poll-seconds", "1e300"], "above 0 and at most 86400, got 1e+300."),
    (["--grace-seconds", "-1"], "--grace-seconds must be a number of seconds, 0 or"),
    (["--grace-seconds", "nan"], "--grace-seconds must be a number of seconds, 0 or"),
]


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS)
def test_bad_option_is_a_command_error_naming_it(options, message):
    with pytest.raises(CommandError, match=re.escape(message)):
        call_command("klerk_worker", *options)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("KLERK_POLL_SECONDS", "soon", "KLERK_POLL_SECONDS must be a number of"),
        ("KLERK_WORKER_CONCURRENCY", True, "KLERK_WORKER_CONCURRENCY must be an"),
        ("KLERK_SHUTDOWN_GRACE_SECONDS", None, "KLERK_SHUTDOWN_GRACE_SECONDS must"),
    ],
)
def test_bad_setting_is_a_command_error_naming_it(settings, setting, value, message):
    setattr(settings, setting, value)

    with pytest.raises(CommandError, match=re.escape(message)):
        call_command("klerk_worker")


@pytest.mark.parametrize(
    "options",
    [
        ["--concurrency", "0"],
        ["--queue", "bad name!"],
        ["--poll-seconds", "0"],
        ["--concurrency", "many"],
    ],
)
# transaction=True: on SQLite this test's open transaction would hold the
# write lock, and the system checks of Django 6 take it to probe for JSON
# support, so the worker would report a failed check instead of the option.
@pytest.mark.django_db(transaction=True)
def test_bad_option_exits_non_zero_with_the_message(options):
    finished = subprocess.run(
        [sys.executable, "-m", "django", "klerk_worker", *options],
        cwd=ROOT,
        env=worker_env(),
        capture_output=True,
        timeout=120,
    )

    assert finished.returncode != 0
    assert options[0].encode() in finished.stderr
    assert not WorkerRecord.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_burst_worker_exits_zero_when_nothing_is_ready():
    process = start_worker("--burst")
    try:
        assert process.wait(60) == 0
    finally:
        stop(process)

    record = WorkerRecord.objects.get()
    assert record.stopped_at is not None


SIGNAL_WHILE_LOCKED = textwrap.dedent(
    """
    import signal
    import django

    django.setup()
    from klerk_django.worker import Worker, WorkerOptions

    worker = Worker(WorkerOptions())
    worker.stop_on_signals()
    # A signal may land while the main loop holds the wake-up's lock.
    with worker.wake._cond:
        signal.raise_signal(signal.SIGTERM)
    print("stopping" if worker.stopping.wait(30) else "running")
    """
)


@pytest.mark.django_db
def test_stop_signal_is_safe_while_the_main_loop_holds_a_lock():
    finished = subprocess.run(
        [sys.executable, "-c", SIGNAL_WHILE_LOCKED],
        cwd=ROOT,
        env=worker_env(),
        capture_output=True,
        timeout=60,
    )

    assert finished.stdout.strip() == b"stopping", finished.stderr


@pytest.mark.django_db(transaction=True)
def test_lease_seconds_option_sets_the_lease_of_claimed_jobs():
    from klerk_django.models import Job, JobStatus
    from tests.testapp.jobs import sleep
    from tests.workers import running_worker, wait_for

    job = sleep.enqueue("lease", 3.0)

    with running_worker("--lease-seconds", "7", "--grace-seconds", "10"):
        held = wait_for(
            lambda: (
                Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING)
                .exclude(lease_expires_at=None)
                .first()
            )
        )

    lease = (held.lease_expires_at - held.started_at).total_seconds()
    assert 6.0 <= lease <= 7.5


def test_lease_seconds_must_be_above_zero():
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="--lease-seconds"):
        call_command("klerk_worker", "--lease-seconds", "0")
