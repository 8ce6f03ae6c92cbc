"""Attempts: how each run of a job ends and is recorded."""

from __future__ import annotations

import uuid

import pytest
from django.db import OperationalError
from django.db.models import F

from klerk_django import attempts, leases
from klerk_django.models import Attempt, Job, JobStatus
from tests.testapp.jobs import fail, fail_until, record
from tests.testapp.models import Run
from tests.workers import start_worker, stop


def run_to_the_end(*options: str) -> None:
    process = start_worker("--burst", *options)
    try:
        assert process.wait(120) == 0
    finally:
        stop(process)


def numbered(job: Job) -> list[tuple[int, str]]:
    rows = Attempt.objects.filter(job_id=job.pk).order_by("number")
    return list(rows.values_list("number", "outcome"))


@pytest.mark.django_db(transaction=True)
def test_failing_job_runs_exactly_max_attempts_times():
    job = fail.enqueue("thrice")

    run_to_the_end()

    job.refresh_from_db()
    assert (job.status, job.attempts) == (JobStatus.FAILED, 3)
    assert "failing on purpose: thrice" in job.last_error
    assert numbered(job) == [(1, "failed"), (2, "failed"), (3, "failed")]
    runs = Run.objects.filter(kind="fail").order_by("pk")
    assert list(runs.values_list("attempt", flat=True)) == [1, 2, 3]


@pytest.mark.django_db(transaction=True)
def test_job_with_one_attempt_runs_exactly_once():
    job = fail.using(max_attempts=1).enqueue("once")

    run_to_the_end()

    job.refresh_from_db()
    assert (job.status, job.attempts) == (JobStatus.FAILED, 1)
    assert numbered(job) == [(1, "failed")]
    assert Run.objects.filter(kind="fail").count() == 1


@pytest.mark.django_db(transaction=True)
def test_retried_job_succeeds_and_keeps_its_failed_attempts():
    job = fail_until.enqueue("second", succeed_on=2)

    run_to_the_end("--concurrency", "1")

    job.refresh_from_db()
    assert (job.status, job.attempts, job.result) == (JobStatus.SUCCEEDED, 2, 2)
    assert job.last_error == ""
    assert numbered(job) == [(1, "failed"), (2, "succeeded")]
    failed = Attempt.objects.get(job_id=job.pk, number=1)
    assert "not yet: second" in failed.error
    assert "RuntimeError" in failed.traceback


def claim_one(worker: uuid.UUID) -> leases.ClaimedJob:
    (claimed,) = leases.claim(worker, None, 1)
    return claimed


@pytest.mark.parametrize("job_function", [record, fail])
@pytest.mark.django_db
def test_attempt_whose_lease_was_taken_over_records_nothing(job_function):
    job = job_function.enqueue("stale")
    worker = uuid.uuid4()
    claimed = claim_one(worker)
    newer = uuid.uuid4()
    Job.objects.filter(pk=job.pk).update(worker_id=newer, attempts=F("attempts") + 1)

    assert attempts.run(claimed, worker) == ""

    job.refresh_from_db()
    assert (job.status, job.worker_id, job.attempts) == (JobStatus.RUNNING, newer, 2)
    assert job.last_error == "" and job.result is None
    assert not Attempt.objects.exists()


@pytest.mark.django_db
def test_attempt_of_a_finished_job_records_nothing():
    job = record.enqueue("finished")
    worker = uuid.uuid4()
    claimed = claim_one(worker)
    Job.objects.filter(pk=job.pk).update(status=JobStatus.CANCELLED)

    assert attempts.run(claimed, worker) == ""

    assert Job.objects.get(pk=job.pk).status == JobStatus.CANCELLED
    assert not Attempt.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_outcome_is_retried_while_the_database_is_away(monkeypatch):
    job = record.enqueue("away")
    worker = uuid.uuid4()
    claimed = claim_one(worker)
    succeed = attempts._succeed
    refusals = []

    def flaky(*args):
        if len(refusals) < 2:
            refusals.append(1)
            raise OperationalError("server closed the connection unexpectedly")
        return succeed(*args)

    monkeypatch.setattr(attempts, "_succeed", flaky)

    assert attempts.run(claimed, worker) == JobStatus.SUCCEEDED

    assert numbered(job) == [(1, "succeeded")]
    assert len(refusals) == 2


@pytest.mark.django_db
def test_unknown_job_name_is_a_failed_attempt():
    job = record.using(max_attempts=1).enqueue("renamed")
    Job.objects.filter(pk=job.pk).update(name="tests.gone")
    worker = uuid.uuid4()

    assert attempts.run(claim_one(worker), worker) == JobStatus.FAILED

    job.refresh_from_db()
    assert "tests.gone" in job.last_error
    assert numbered(job) == [(1, "failed")]


@pytest.mark.django_db
def test_running_job_sees_its_own_context():
    job = fail_until.enqueue("context", succeed_on=1)
    worker = uuid.uuid4()

    assert attempts.run(claim_one(worker), worker) == JobStatus.SUCCEEDED

    assert Job.objects.get(pk=job.pk).result == 1
    assert attempts.current_job() is None


@pytest.mark.django_db(transaction=True)
def test_outcome_lost_to_the_database_is_not_blamed_on_the_lease(monkeypatch, caplog):
    record.enqueue("unreachable")
    worker = uuid.uuid4()
    claimed = claim_one(worker)
    monkeypatch.setattr(attempts, "RECORD_TRIES", 2)

    def unreachable(*args):
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(attempts, "_succeed", unreachable)

    assert attempts.run(claimed, worker) == ""

    messages = [entry.getMessage() for entry in caplog.records]
    assert any("outcome lost, lease recovery will requeue" in m for m in messages)
    assert not any("lease lost" in m for m in messages)


@pytest.mark.django_db(transaction=True)
def test_success_in_autocommit_records_everything_the_finish_must():
    # Outside a transaction, PostgreSQL records a success in one statement;
    # it must leave the job as the general path does.
    from tests.testapp.control_jobs import unique_noop

    first = unique_noop.enqueue("autocommit")
    worker = uuid.uuid4()
    (claimed,) = leases.claim(worker, None, 1)

    assert attempts.run(claimed, worker) == JobStatus.SUCCEEDED

    job = Job.objects.get(pk=first.pk)
    assert job.status == JobStatus.SUCCEEDED
    assert job.lease_expires_at is None and job.finished_at is not None
    assert job.active_unique_key is None
    assert Attempt.objects.filter(job=job, number=1, outcome="succeeded").exists()
    assert not unique_noop.enqueue("autocommit").is_duplicate
