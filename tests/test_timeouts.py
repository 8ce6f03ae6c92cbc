"""Time limits of attempts: on a job thread, in a child process, async."""

from __future__ import annotations

import contextlib
import math
import os

import pytest

from klerk_django import timeouts
from klerk_django.cancellation import Stop
from klerk_django.exceptions import EnqueueOptionError
from klerk_django.jobs import job
from klerk_django.models import Attempt, Job, JobStatus
from klerk_django.testing import run_jobs
from tests.job_state import status
from tests.testapp.control_jobs import async_record
from tests.testapp.jobs import record
from tests.testapp.models import Run
from tests.testapp.stop_jobs import (
    async_sleeper,
    async_stubborn,
    atomic_writer,
    blocked,
    busy,
    chatty,
    giant_number,
    giant_number_child,
    in_process,
    short,
    sleeper,
    swallower,
    unprintable,
    unprintable_child,
    vanishing,
)
from tests.workers import FAST, running_worker, wait_for


def errors(job: Job) -> list[tuple[int, str, str]]:
    rows = Attempt.objects.filter(job_id=job.pk).order_by("number")
    return list(rows.values_list("number", "outcome", "error"))


def runs(kind: str, key: str) -> int:
    return Run.objects.filter(kind=kind, key=key).count()


@pytest.mark.django_db(transaction=True)
def test_thread_job_past_its_time_limit_fails_and_is_retried():
    job = busy.enqueue("busy")
    after = record.enqueue("after the time limit")
    with running_worker("--concurrency", "1", settings=FAST):
        wait_for(lambda: status(job) == JobStatus.FAILED)
        wait_for(lambda: status(after) == JobStatus.SUCCEEDED)

    assert Job.objects.get(pk=job.pk).timeout_seconds == 1.0
    assert errors(job) == [
        (1, "failed", "JobTimeout: attempt 1 ran past its 1 s time limit"),
        (2, "failed", "JobTimeout: attempt 2 ran past its 1 s time limit"),
    ]
    assert runs("busy-end", "busy") == 0


@pytest.mark.django_db(transaction=True)
def test_child_process_job_past_its_time_limit_is_killed():
    job = sleeper.using(timeout=1.5).enqueue("sleeper")
    with running_worker(settings=FAST) as worker:
        wait_for(lambda: status(job) == JobStatus.FAILED)
        assert worker.poll() is None

    assert errors(job) == [
        (1, "failed", "JobTimeout: attempt 1 ran past its 1.5 s time limit")
    ]
    # Whether the child got as far as its first mark within the limit
    # depends on how fast it started; that it never woke up does not.
    assert runs("sleeper-end", "sleeper") == 0


@pytest.mark.django_db(transaction=True)
def test_async_job_past_its_time_limit_has_its_task_cancelled():
    job = async_sleeper.using(timeout=1).enqueue("async")
    with running_worker(settings=FAST):
        wait_for(lambda: status(job) == JobStatus.FAILED)

    assert errors(job) == [
        (1, "failed", "JobTimeout: attempt 1 ran past its 1 s time limit")
    ]
    assert "klerk_django/calling.py" in Attempt.objects.get(job_id=job.pk).traceback


@pytest.mark.django_db(transaction=True)
def test_time_limit_in_a_thread_passes_through_except_exception():
    job = swallower.enqueue("careless")
    with running_worker(settings=FAST):
        wait_for(lambda: status(job) == JobStatus.FAILED)

    assert runs("swallowed", "careless") == 0
    assert "JobTimeout" in Attempt.objects.get(job_id=job.pk).traceback


@pytest.mark.django_db
@pytest.mark.parametrize("value", [0, -1, math.inf, math.nan, True, "30", 10**12])
def test_bad_timeout_is_refused_by_name(value):
    with pytest.raises(EnqueueOptionError) as raised:
        record.using(timeout=value)

    assert raised.value.option == "timeout_seconds"
    assert "Job option 'timeout' must be a number of seconds above 0" in str(
        raised.value
    )
    assert Job.objects.count() == 0


def test_bad_timeout_on_the_decorator_is_refused_before_registering():
    with pytest.raises(EnqueueOptionError, match="'timeout'"):

        @job(name="tests.never_registered", timeout=-5)
        def never() -> None:
            pass


def test_process_flag_must_be_a_bool():
    with pytest.raises(EnqueueOptionError, match="'process' must be True or False"):

        @job(name="tests.never_registered_either", process="yes")
        def never() -> None:
            pass


@pytest.mark.django_db
def test_timeout_is_stored_with_the_job():
    stored = record.using(timeout=2.5).enqueue("limited")

    assert Job.objects.get(pk=stored.pk).timeout_seconds == 2.5
    assert Job.objects.get(pk=record.enqueue("free").pk).timeout_seconds is None


@pytest.mark.django_db
def test_run_jobs_runs_a_process_job_in_the_test_process():
    job = in_process.enqueue("here")

    (result,) = run_jobs()

    assert result.status == JobStatus.SUCCEEDED
    assert result.job_id == job.pk
    assert result.result == {"key": "here", "pid": os.getpid()}
    assert result.progress == {"pid": os.getpid()}


@pytest.mark.django_db(transaction=True)
def test_thread_job_blocked_in_c_is_recorded_only_once_its_code_stopped(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    log = tmp_path / "worker.log"
    job = blocked.enqueue("blocked", str(fifo))
    with running_worker(settings=FAST, log=log):
        wait_for(lambda: "past its time limit" in log.read_text())
        held = Job.objects.get(pk=job.pk)
        assert held.status == JobStatus.RUNNING
        assert not Attempt.objects.filter(job_id=job.pk).exists()
        # The lease is still renewed while the thread is stuck in C.
        wait_for(lambda: _lease_of(job) > held.lease_expires_at)

        # The job waits in open(); opening the writing end lets it return.
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        wait_for(lambda: status(job) == JobStatus.FAILED)

    assert errors(job) == [
        (1, "failed", "JobTimeout: attempt 1 ran past its 1 s time limit")
    ]
    assert runs("blocked-end", "blocked") == 0


def _lease_of(job: Job) -> object:
    return Job.objects.get(pk=job.pk).lease_expires_at


FINAL = [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]


def outcomes_of(jobs: list[Job]) -> list[tuple[int, str]]:
    rows = Attempt.objects.filter(job_id__in=[job.pk for job in jobs])
    return list(rows.values_list("number", "outcome"))


def unfinished(jobs: list[Job]) -> int:
    ids = [job.pk for job in jobs]
    return Job.objects.filter(pk__in=ids).exclude(status__in=FINAL).count()


@pytest.mark.django_db(transaction=True)
def test_time_limits_striking_transactions_leave_each_thread_usable(tmp_path):
    jobs = [
        atomic_writer.using(timeout=0.2 + (n % 7) / 10).enqueue(f"w{n}")
        for n in range(60)
    ]
    log = tmp_path / "worker.log"
    with running_worker("--concurrency", "4", settings=FAST, log=log):
        wait_for(lambda: unfinished(jobs) == 0, timeout=240)
        after = [record.enqueue(f"after{n}") for n in range(8)]
        wait_for(lambda: unfinished(after) == 0, timeout=120)

    assert "outcome not recorded" not in log.read_text()
    recorded = Attempt.objects.filter(job_id__in=[job.pk for job in jobs])
    assert recorded.count() == len(jobs)
    assert {
        error.split(":")[0] for error in recorded.values_list("error", flat=True)
    } == {"JobTimeout"}
    # The jobs that ran next on those threads ran once each.
    assert set(outcomes_of(after)) == {(1, "succeeded")}


@pytest.mark.django_db(transaction=True)
def test_many_jobs_ending_as_their_time_limit_passes(tmp_path):
    jobs = [
        short.using(timeout=0.05 + (n % 3) / 100).enqueue(f"s{n}", 0.05)
        for n in range(240)
    ]
    logs = [tmp_path / f"worker{n}.log" for n in range(4)]
    with contextlib.ExitStack() as workers:
        for log in logs:
            workers.enter_context(
                running_worker("--concurrency", "2", settings=FAST, log=log)
            )
        wait_for(lambda: unfinished(jobs) == 0, timeout=400)

    for log in logs:
        text = log.read_text()
        assert "attempt crashed" not in text and "outcome not" not in text
    for stored in Job.objects.filter(pk__in=[each.pk for each in jobs]):
        recorded = Attempt.objects.filter(job_id=stored.pk).order_by("number")
        numbers = list(recorded.values_list("number", flat=True))
        assert numbers == list(range(1, stored.attempts + 1))


def test_time_limit_firing_just_after_the_job_returned_changes_nothing():
    stop = Stop()
    limit = timeouts.ThreadLimit(60, stop)
    with limit:
        pass

    # The timer thread may be past its wait when the job returns: its
    # call then comes after the limit ended.
    limit._expire()

    assert stop.reason == ""
    assert not limit.raised


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("failing", [unprintable, unprintable_child])
def test_exception_without_text_is_recorded_by_its_worker(failing):
    job = failing.enqueue("no text")
    with running_worker(settings=FAST):
        wait_for(lambda: status(job) == JobStatus.FAILED)

    ((number, outcome, error),) = errors(job)
    assert (number, outcome) == (1, "failed")
    assert error.startswith("Unprintable: ")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "giving, reason",
    [
        (giant_number, "could not be stored (ValueError)"),
        (giant_number_child, "ValueError: Exceeds the limit"),
    ],
)
def test_result_that_cannot_become_json_fails_the_attempt_plainly(giving, reason):
    job = giving.enqueue("giant")
    with running_worker(settings=FAST):
        wait_for(lambda: status(job) == JobStatus.FAILED)

    ((number, outcome, error),) = errors(job)
    assert (number, outcome) == (1, "failed")
    assert reason in error


@pytest.mark.django_db(transaction=True)
def test_child_process_that_exits_without_answering_fails_its_attempt():
    job = vanishing.enqueue("gone")
    after = in_process.enqueue("after it")
    with running_worker(settings=FAST):
        wait_for(lambda: status(job) == JobStatus.FAILED)
        wait_for(lambda: status(after) == JobStatus.SUCCEEDED)

    assert errors(job) == [
        (
            1,
            "failed",
            "JobProcessDied: the job's process ended with exit code 0 "
            "before it answered",
        )
    ]


@pytest.mark.django_db(transaction=True)
def test_child_process_writing_and_returning_much_succeeds(tmp_path):
    size = 8 * 1024 * 1024
    job = chatty.enqueue("loud", size)
    with running_worker(settings=FAST, log=tmp_path / "worker.log"):
        wait_for(lambda: status(job) == JobStatus.SUCCEEDED)

    assert len(Job.objects.get(pk=job.pk).result) == size


@pytest.mark.django_db(transaction=True)
def test_async_job_ignoring_its_cancelled_task_is_stopped_in_its_thread(tmp_path):
    job = async_stubborn.using(timeout=0.5).enqueue("stubborn")
    after = async_record.enqueue("after")
    log = tmp_path / "worker.log"
    with running_worker("--concurrency", "1", settings=FAST, log=log):
        wait_for(lambda: status(job) == JobStatus.FAILED)
        wait_for(lambda: status(after) == JobStatus.SUCCEEDED)

    assert errors(job) == [
        (1, "failed", "JobTimeout: attempt 1 ran past its 0.5 s time limit")
    ]


@pytest.mark.django_db
def test_time_limit_under_run_jobs_keeps_the_test_transaction():
    job = busy.using(timeout=0.2, max_attempts=1).enqueue("in a test")

    (result,) = run_jobs()

    assert result.status == JobStatus.FAILED
    assert Job.objects.get(pk=job.pk).status == JobStatus.FAILED
