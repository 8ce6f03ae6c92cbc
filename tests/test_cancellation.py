"""Cancelling running jobs: cooperative ones, jobs in a child process."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid

import pytest
from django.utils import timezone

from klerk_django import (
    attempts,
    cancel_jobs,
    cancel_requested,
    leases,
    raise_if_cancelled,
    retry_jobs,
)
from klerk_django.cancellation import Stop
from klerk_django.models import Attempt, Job, JobStatus
from tests.job_state import status
from tests.test_admin import staff, texts, url
from tests.testapp.jobs import fail, record
from tests.testapp.models import Run
from tests.testapp.stop_jobs import (
    cooperative,
    forker,
    in_process,
    short,
    stubborn,
    ticker,
)
from tests.workers import FAST, running_worker, start_worker, stop, wait_for


def started(kind: str, key: str) -> list[int]:
    return list(Run.objects.filter(kind=kind, key=key).values_list("pid", flat=True))


def attempts_of(job: Job) -> list[tuple[int, str, str]]:
    rows = Attempt.objects.filter(job_id=job.pk).order_by("number")
    return list(rows.values_list("number", "outcome", "error"))


@pytest.mark.django_db(transaction=True)
def test_running_cooperative_job_sees_the_request_and_ends_cancelled():
    job = cooperative.enqueue("co")
    with running_worker(settings=FAST):
        wait_for(lambda: started("cooperative", "co"))

        assert cancel_jobs([job.pk]) == 1

        wait_for(lambda: status(job) == JobStatus.CANCELLED)

    ended = Job.objects.get(pk=job.pk)
    error = "JobCancelled: attempt 1 cancelled while running"
    assert attempts_of(job) == [(1, "failed", error)]
    assert ended.last_error == error
    assert ended.finished_at is not None and ended.cancel_requested_at is not None
    assert "raise_if_cancelled" in Attempt.objects.get(job_id=job.pk).traceback


@pytest.mark.django_db(transaction=True)
def test_cancelled_unique_job_frees_its_key_for_a_new_one():
    job = cooperative.using(unique_key="only-one").enqueue("unique")
    with running_worker(settings=FAST):
        wait_for(lambda: started("cooperative", "unique"))
        assert cooperative.using(unique_key="only-one").enqueue("again").is_duplicate

        cancel_jobs(Job.objects.filter(pk=job.pk))
        wait_for(lambda: status(job) == JobStatus.CANCELLED)

        again = cooperative.using(unique_key="only-one").enqueue("again")
        assert not again.is_duplicate
        cancel_jobs([again.pk])
        wait_for(lambda: status(again) == JobStatus.CANCELLED)


@pytest.mark.django_db(transaction=True)
def test_child_process_job_that_ignores_the_request_is_killed():
    job = stubborn.enqueue("stubborn")
    after = record.enqueue("after the kill")
    with running_worker("--concurrency", "1", settings=FAST) as worker:
        (pid,) = wait_for(lambda: started("stubborn", "stubborn"))
        assert pid != worker.pid

        cancel_jobs([job.pk])

        wait_for(lambda: status(job) == JobStatus.CANCELLED)
        wait_for(lambda: status(after) == JobStatus.SUCCEEDED)
        assert worker.poll() is None
        assert not _alive(pid)

    error = "JobCancelled: attempt 1 cancelled while running"
    assert attempts_of(job) == [(1, "failed", error)]


@pytest.mark.django_db(transaction=True)
def test_child_process_job_returns_its_result_and_reports_progress():
    job = in_process.enqueue("fine")
    with running_worker(settings=FAST) as worker:
        wait_for(lambda: status(job) == JobStatus.SUCCEEDED)

    ended = Job.objects.get(pk=job.pk)
    (pid,) = started("in_process", "fine")
    assert pid != worker.pid
    assert ended.result == {"key": "fine", "pid": pid}
    assert ended.progress == {"pid": pid}


@pytest.mark.django_db(transaction=True)
def test_child_process_job_failure_keeps_its_error_and_traceback():
    job = in_process.enqueue("broken", fail=True)
    with running_worker(settings=FAST):
        wait_for(lambda: status(job) == JobStatus.FAILED)

    attempt = Attempt.objects.get(job_id=job.pk)
    assert attempt.error == "ValueError: failing in the child: broken"
    assert 'raise ValueError(f"failing in the child: {key}")' in attempt.traceback


@pytest.mark.django_db(transaction=True)
def test_child_process_job_dies_with_its_worker():
    job = stubborn.enqueue("orphan")
    with running_worker(settings=FAST) as worker:
        (pid,) = wait_for(lambda: started("stubborn", "orphan"))
        worker.kill()
        worker.wait(30)

        wait_for(lambda: not _alive(pid))
    cancel_jobs([job.pk])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child that ended but was not reaped yet is a zombie: not running.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.django_db(transaction=True)
def test_admin_cancel_button_asks_a_running_job_to_stop():
    job = cooperative.enqueue("from the admin")
    operator = staff("view_job", "cancel_job")
    with running_worker(settings=FAST):
        wait_for(lambda: started("cooperative", "from the admin"))

        response = operator.post(url(Job, "cancel", job.pk))

        assert texts(response) == [
            "Asked 1 running job to stop; it ends cancelled once its worker "
            "sees the request."
        ]
        wait_for(lambda: status(job) == JobStatus.CANCELLED)


@pytest.mark.django_db(transaction=True)
def test_admin_cancel_action_asks_running_jobs_to_stop():
    job = cooperative.enqueue("selected")
    operator = staff("view_job", "cancel_job")
    data = {"action": "cancel_selected", "index": "0", "_selected_action": [job.pk]}
    with running_worker(settings=FAST):
        wait_for(lambda: started("cooperative", "selected"))

        operator.post(url(Job, "changelist"), data)

        wait_for(lambda: status(job) == JobStatus.CANCELLED)


@pytest.mark.django_db(transaction=True)
def test_admin_cancel_without_the_permission_leaves_a_running_job_alone():
    job = cooperative.enqueue("not allowed")
    viewer_only = staff("view_job")
    with running_worker(settings=FAST):
        wait_for(lambda: started("cooperative", "not allowed"))

        response = viewer_only.post(url(Job, "cancel", job.pk))

        assert response.status_code == 403
        left = Job.objects.get(pk=job.pk)
        assert (left.status, left.cancel_requested_at) == ("running", None)
        cancel_jobs([job.pk])
        wait_for(lambda: status(job) == JobStatus.CANCELLED)


@pytest.mark.django_db
def test_retry_of_a_cancelled_job_forgets_the_old_request():
    job = cooperative.enqueue("again")
    Job.objects.filter(pk=job.pk).update(status="running", attempts=1)
    cancel_jobs([job.pk])
    Job.objects.filter(pk=job.pk).update(status="cancelled")

    assert retry_jobs([job.pk]) == 1

    again = Job.objects.get(pk=job.pk)
    assert (again.status, again.cancel_requested_at) == ("ready", None)


def claim_one(worker: uuid.UUID) -> leases.ClaimedJob:
    (claimed,) = leases.claim(worker, None, 1)
    return claimed


@pytest.mark.django_db
def test_failing_attempt_of_a_job_asked_to_stop_is_not_retried():
    job = fail.enqueue("asked")
    worker = uuid.uuid4()
    claimed = claim_one(worker)
    cancel_jobs([job.pk])

    # The heartbeat never came: the request is found when the outcome is
    # written.
    assert attempts.run(claimed, worker) == JobStatus.CANCELLED

    ended = Job.objects.get(pk=job.pk)
    assert (ended.status, ended.active_unique_key) == ("cancelled", None)
    assert attempts_of(job) == [
        (1, "failed", "RuntimeError: failing on purpose: asked")
    ]


@pytest.mark.django_db
def test_lost_attempt_of_a_job_asked_to_stop_ends_cancelled():
    job = fail.enqueue("lost")
    claim_one(uuid.uuid4())
    cancel_jobs([job.pk])
    Job.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now())

    assert leases.recover_expired() == 1

    assert status(job) == JobStatus.CANCELLED
    assert Attempt.objects.get(job_id=job.pk).outcome == "interrupted"


@pytest.mark.django_db
def test_cancelled_attempt_whose_lease_was_taken_over_records_nothing():
    job = cooperative.enqueue("stale")
    worker = uuid.uuid4()
    claimed = claim_one(worker)
    Job.objects.filter(pk=job.pk).update(worker_id=uuid.uuid4())
    stop = Stop()
    stop.cancel()

    assert attempts.run(claimed, worker, stop=stop) == ""

    assert status(job) == JobStatus.RUNNING
    assert not Attempt.objects.exists()


def test_outside_a_job_nothing_is_ever_cancelled():
    assert cancel_requested() is False
    raise_if_cancelled()


@pytest.mark.django_db(transaction=True)
def test_worker_stopping_past_its_grace_hands_back_a_child_process_job():
    job = stubborn.enqueue("handed back")
    worker = start_worker("--grace-seconds", "1", settings=FAST)
    try:
        (pid,) = wait_for(lambda: started("stubborn", "handed back"))

        assert stop(worker) == 0

        wait_for(lambda: not _alive(pid))
        assert status(job) == JobStatus.READY
        (attempt,) = Attempt.objects.filter(job_id=job.pk)
        assert attempt.outcome == "interrupted"
    finally:
        stop(worker)
        cancel_jobs([job.pk])


@pytest.mark.django_db
def test_job_page_shows_the_time_limit_and_the_cancel_request():
    job = cooperative.using(timeout=42).enqueue("shown")
    Job.objects.filter(pk=job.pk).update(status="running", attempts=1)
    cancel_jobs([job.pk])

    content = staff("view_job").get(url(Job, "change", job.pk)).content.decode()

    assert "Timeout seconds" in content and "42.0" in content
    assert "Cancel requested at" in content


@pytest.mark.django_db(transaction=True)
def test_stopping_worker_kills_a_job_process_before_handing_its_job_back(
    tmp_path,
):
    job = ticker.enqueue("handed back")
    log = tmp_path / "worker.log"
    worker = start_worker("--grace-seconds", "1", settings=FAST, log=log)
    try:
        wait_for(lambda: started("tick", "handed back"))

        assert stop(worker) == 0
    finally:
        stop(worker)
        cancel_jobs([job.pk])

    attempts = list(Attempt.objects.filter(job_id=job.pk))
    # The worker's log says why, should the hand-back not be recorded.
    assert len(attempts) == 1, log.read_text()
    (attempt,) = attempts
    assert attempt.outcome == "interrupted"
    last_tick = Run.objects.filter(kind="tick").latest("created_at").created_at
    assert last_tick < attempt.finished_at


@pytest.mark.django_db(transaction=True)
def test_second_stop_signal_kills_a_job_process_at_once(tmp_path):
    job = ticker.enqueue("forced")
    log = tmp_path / "worker.log"
    worker = start_worker("--grace-seconds", "300", settings=FAST, log=log)
    try:
        wait_for(lambda: started("tick", "forced"))
        worker.send_signal(signal.SIGTERM)
        wait_for(lambda: "worker stopping" in log.read_text())
        worker.send_signal(signal.SIGTERM)

        assert worker.wait(60) == 0
    finally:
        stop(worker)
        cancel_jobs([job.pk])

    (attempt,) = Attempt.objects.filter(job_id=job.pk)
    assert attempt.outcome == "interrupted"
    last_tick = Run.objects.filter(kind="tick").latest("created_at").created_at
    assert last_tick < attempt.finished_at


def grandchildren(key: str) -> list[tuple[int, int]]:
    found = Run.objects.filter(kind="grandchild", key=key).order_by("attempt")
    return list(found.values_list("attempt", "pid"))


@pytest.mark.django_db(transaction=True)
def test_cancelled_job_process_takes_its_own_children_along():
    job = forker.enqueue("cancelled")
    with running_worker(settings=FAST):
        ((_, pid),) = wait_for(lambda: grandchildren("cancelled"))
        cancel_jobs([job.pk])
        wait_for(lambda: status(job) == JobStatus.CANCELLED)

        wait_for(lambda: not _alive(pid))


@pytest.mark.django_db(transaction=True)
def test_job_process_of_a_killed_worker_runs_again_once_without_leftovers():
    job = forker.enqueue("killed")
    with running_worker(settings=FAST) as worker:
        ((_, first),) = wait_for(lambda: grandchildren("killed"))
        worker.kill()
        worker.wait(30)
        wait_for(lambda: not _alive(first))

    with running_worker(settings=FAST):
        wait_for(lambda: len(grandchildren("killed")) == 2)
        cancel_jobs([job.pk])
        wait_for(lambda: status(job) == JobStatus.CANCELLED)

    ((_, _), (attempt, second)) = grandchildren("killed")
    assert attempt == 2
    assert attempts_of(job)[0][:2] == (1, "interrupted")
    wait_for(lambda: not _alive(second))


@pytest.mark.django_db(transaction=True)
def test_cancelling_many_jobs_as_four_workers_run_and_finish_them(tmp_path):
    jobs = [short.enqueue(f"c{n}", 0.02) for n in range(200)]
    waiting = [cooperative.enqueue(f"w{n}") for n in range(8)]
    ids = [job.pk for job in jobs + waiting]
    logs = [tmp_path / f"worker{n}.log" for n in range(4)]
    with contextlib.ExitStack() as workers:
        for log in logs:
            workers.enter_context(
                running_worker("--concurrency", "3", settings=FAST, log=log)
            )
        wait_for(lambda: Run.objects.filter(kind="short").count() >= 20)
        cancel_jobs(Job.objects.filter(pk__in=ids))
        final = [JobStatus.SUCCEEDED, JobStatus.CANCELLED]
        done = Job.objects.filter(pk__in=ids, status__in=final)
        wait_for(lambda: done.count() == len(ids), timeout=240)

    for log in logs:
        text = log.read_text()
        assert "Traceback" not in text and "outcome not" not in text
    for job in Job.objects.filter(pk__in=ids):
        recorded = list(
            Attempt.objects.filter(job_id=job.pk)
            .order_by("number")
            .values_list("number", "outcome")
        )
        assert [number for number, _ in recorded] == list(range(1, job.attempts + 1))
        if job.status == JobStatus.SUCCEEDED:
            assert recorded == [(1, "succeeded")]
            assert started("short", job.arguments["args"][0]) != []
        else:
            assert len(recorded) <= 1
            assert job.active_unique_key is None


@pytest.mark.django_db(transaction=True)
def test_job_process_of_a_dead_worker_cancelled_meanwhile_never_runs_again():
    job = forker.enqueue("dead")
    with running_worker(settings=FAST) as worker:
        ((_, pid),) = wait_for(lambda: grandchildren("dead"))
        worker.kill()
        worker.wait(30)
    cancel_jobs([job.pk])
    with running_worker(settings=FAST):
        wait_for(lambda: status(job) == JobStatus.CANCELLED)

    assert len(grandchildren("dead")) == 1
    assert [outcome for _, outcome, _ in attempts_of(job)] == ["interrupted"]
    wait_for(lambda: not _alive(pid))
