"""Claims, renewals and recovery of leases, alone and under contention."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.db.models import Count
from django.utils import timezone

from klerk_django import attempts, leases
from klerk_django.models import Attempt, Job, JobStatus
from tests.testapp.jobs import record
from tests.testapp.models import Run
from tests.workers import ROOT, start_worker, stop, wait_for, worker_env


def claim_all(worker_id: uuid.UUID, batch: int, found: list[int]) -> None:
    """Claim batches until none is left, on this thread's own connection."""
    try:
        while claimed := leases.claim(worker_id, None, batch):
            found.extend(job.id for job in claimed)
    finally:
        connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_take_every_job_exactly_once():
    ids = {record.enqueue(f"c{n}").pk for n in range(200)}
    found: list[int] = []
    threads = [
        threading.Thread(target=claim_all, args=(uuid.uuid4(), 3, found))
        for _ in range(6)
    ]

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert not [count for count in Counter(found).values() if count > 1]
    assert set(found) == ids
    assert Job.objects.filter(status=JobStatus.RUNNING, attempts=1).count() == 200


@pytest.mark.django_db(transaction=True)
def test_claim_skips_scheduled_jobs_and_other_queues():
    ready = record.enqueue("ready")
    record.using(queue="other").enqueue("other")
    record.using(delay=timedelta(hours=1)).enqueue("later")

    claimed = leases.claim(uuid.uuid4(), ["default"], 10)

    assert [job.id for job in claimed] == [ready.pk]
    assert claimed[0].attempt == 1


@pytest.mark.django_db(transaction=True)
def test_renew_reports_the_leases_no_longer_held():
    worker = uuid.uuid4()
    mine, taken = (record.enqueue(key) for key in ("mine", "taken"))
    leases.claim(worker, None, 2)
    Job.objects.filter(pk=taken.pk).update(worker_id=uuid.uuid4())

    assert leases.renew(worker, [mine.pk, taken.pk]) == {taken.pk}


def expire(job: Job) -> None:
    Job.objects.filter(pk=job.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )


@pytest.mark.django_db(transaction=True)
def test_recovery_requeues_an_expired_lease_as_an_interrupted_attempt():
    job = record.enqueue("expired")
    held = record.enqueue("held")
    worker = uuid.uuid4()
    leases.claim(worker, None, 2)
    expire(job)

    assert leases.recover_expired() == 1

    job.refresh_from_db()
    assert (job.status, job.attempts, job.lease_expires_at) == ("ready", 1, None)
    attempt = Attempt.objects.get(job_id=job.pk)
    assert (attempt.number, attempt.outcome) == (1, "interrupted")
    assert attempt.worker_id == worker
    assert "worker was lost" in attempt.error
    assert Job.objects.get(pk=held.pk).status == JobStatus.RUNNING


@pytest.mark.django_db(transaction=True)
def test_recovery_fails_a_job_out_of_attempts_as_lost():
    job = record.using(max_attempts=1).enqueue("last")
    leases.claim(uuid.uuid4(), None, 1)
    expire(job)

    leases.recover_expired()

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.finished_at is not None
    assert "worker was lost" in job.last_error


@pytest.mark.django_db(transaction=True)
def test_interrupt_by_a_stopping_worker_requeues_at_once():
    job = record.using(backoff_seconds=3600).enqueue("stopping")
    worker = uuid.uuid4()
    leases.claim(worker, None, 1)

    assert leases.interrupt(uuid.uuid4(), [job.pk], "not mine") == 0
    assert leases.interrupt(worker, [job.pk], "the worker stopped") == 1

    job.refresh_from_db()
    assert job.status == JobStatus.READY
    assert job.run_after <= timezone.now()
    assert leases.claim(uuid.uuid4(), None, 1)[0].attempt == 2


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_worker_processes_run_every_job_exactly_once():
    if connection.vendor == "sqlite":
        pytest.skip("SQLite is covered by the soak test with a live writer")
    jobs = [record.enqueue(f"many-{n}") for n in range(400)]

    workers = [start_worker("--concurrency", "2") for _ in range(4)]
    try:
        wait_for(
            lambda: Job.objects.filter(status=JobStatus.SUCCEEDED).count() == 400,
            timeout=240,
            interval=0.5,
        )
    finally:
        codes = [stop(process) for process in workers]

    assert codes == [0, 0, 0, 0]
    runs = Run.objects.values("key").annotate(n=Count("id"))
    assert {row["key"]: row["n"] for row in runs} == {
        f"many-{n}": 1 for n in range(400)
    }
    assert Attempt.objects.count() == 400
    assert set(Attempt.objects.values_list("job_id", "number")) == {
        (job.pk, 1) for job in jobs
    }
    assert len(set(Run.objects.values_list("pid", flat=True))) > 1


ENQUEUER = textwrap.dedent(
    """
    import sys
    import time

    import django

    django.setup()
    from django.db import transaction

    from tests.testapp.jobs import record

    deadline = time.monotonic() + float(sys.argv[1])
    count = 0
    while time.monotonic() < deadline:
        if count % 10 == 0:
            with transaction.atomic():
                for _ in range(5):
                    record.enqueue(f"soak-{count}")
                    count += 1
        else:
            record.enqueue(f"soak-{count}")
            count += 1
        time.sleep(0.01)
    print(count)
    """
)


@pytest.mark.sqlite
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_sqlite_workers_and_a_writer_never_hit_an_uncaught_lock(tmp_path):
    seconds = float(os.environ.get("KLERK_SQLITE_SOAK_SECONDS", "20"))
    logs = [tmp_path / f"worker-{n}.log" for n in range(2)]
    workers = [start_worker("--concurrency", "2", log=log) for log in logs]
    try:
        writer = subprocess.run(
            [sys.executable, "-c", ENQUEUER, str(seconds)],
            cwd=ROOT,
            env=worker_env(),
            capture_output=True,
            timeout=seconds + 120,
        )
        assert writer.returncode == 0, writer.stderr.decode()
        enqueued = int(writer.stdout)
        wait_for(
            lambda: Job.objects.filter(status=JobStatus.SUCCEEDED).count() == enqueued,
            timeout=120,
            interval=0.5,
        )
    finally:
        codes = [stop(process) for process in workers]

    assert codes == [0, 0]
    text = "".join(log.read_text() for log in logs)
    assert "database is locked" not in text
    assert "Traceback" not in text
    assert Run.objects.count() == enqueued
    assert Run.objects.values("key").distinct().count() == enqueued
    assert Job.objects.exclude(attempts=1).count() == 0


@pytest.mark.django_db(transaction=True)
def test_interrupting_an_attempt_that_ended_meanwhile_changes_nothing():
    job = record.enqueue("ended")
    worker = uuid.uuid4()
    claimed = leases.claim(worker, None, 1)[0]
    stale = Job.objects.get(pk=job.pk)
    assert attempts.run(claimed, worker) == JobStatus.SUCCEEDED

    leases._interrupt(stale, "the worker stopped", connection)

    assert Job.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED
    assert list(Attempt.objects.values_list("outcome", flat=True)) == ["succeeded"]
