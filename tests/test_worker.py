"""Worker processes under real signals, kills and lost leases."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.db import InterfaceError, OperationalError
from django.db.models import F
from django.utils import timezone

from klerk_django import actions, attempts, leases
from klerk_django.models import Attempt, Job, JobStatus
from klerk_django.models import Worker as WorkerRecord
from klerk_django.worker import (
    RECONNECT_MAX_SECONDS,
    Worker,
    WorkerOptions,
    reconnect_delay,
)
from tests import faults
from tests.job_state import outcomes, status
from tests.testapp.jobs import crash, hang, record, sleep
from tests.testapp.models import Run
from tests.workers import (
    ROOT,
    running_worker,
    start_worker,
    stop,
    wait_for,
    worker_env,
)

# Short leases so that lost workers are noticed within seconds.
FAST = {
    "KLERK_LEASE_SECONDS": 3,
    "KLERK_HEARTBEAT_SECONDS": 1,
    "KLERK_RECOVERY_SECONDS": 1,
}


def started(kind: str, key: str) -> bool:
    return Run.objects.filter(kind=kind, key=key).exists()


@pytest.mark.django_db(transaction=True)
def test_job_of_a_killed_worker_runs_again_under_the_same_name():
    job = hang.enqueue("killed", 120.0)
    first = start_worker("--name", "fixed", settings=FAST)
    try:
        wait_for(lambda: started("hang", "killed"))
        first.kill()
        first.wait(30)
        # Bookkeeping of dead workers may be gone before recovery runs.
        WorkerRecord.objects.filter(pid=first.pid).delete()

        with running_worker("--name", "fixed", settings=FAST):
            wait_for(lambda: status(job) == JobStatus.SUCCEEDED)
    finally:
        stop(first)

    assert outcomes(job) == [(1, "interrupted"), (2, "succeeded")]
    lost = Attempt.objects.get(job_id=job.pk, number=1)
    assert "worker was lost" in lost.error
    runs = Run.objects.filter(kind="hang", key="killed").order_by("attempt")
    assert [run.attempt for run in runs] == [1, 2]
    assert runs[0].pid != runs[1].pid
    names = WorkerRecord.objects.filter(name="fixed")
    assert names.count() == 1 and names.get().pid == runs[1].pid


@pytest.mark.django_db(transaction=True)
def test_job_of_a_killed_worker_out_of_attempts_fails_as_lost():
    job = hang.using(max_attempts=1).enqueue("last", 120.0)
    first = start_worker("--name", "fixed", settings=FAST)
    try:
        wait_for(lambda: started("hang", "last"))
        first.kill()
        first.wait(30)

        with running_worker("--name", "fixed", settings=FAST):
            wait_for(lambda: status(job) == JobStatus.FAILED)
    finally:
        stop(first)

    job.refresh_from_db()
    assert "worker was lost" in job.last_error
    assert job.attempts == 1
    assert outcomes(job) == [(1, "interrupted")]
    assert Run.objects.filter(kind="hang", key="last").count() == 1


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_job_that_kills_its_worker_fails_after_its_attempts():
    job = crash.enqueue("crash")

    # Restart the worker whenever it dies, as a process supervisor would.
    starts = 0
    while status(job) != JobStatus.FAILED:
        assert starts < 6, "the crashing job keeps running"
        process = start_worker(settings=FAST)
        starts += 1
        try:
            wait_for(lambda p=process: p.poll() is not None or status(job) == "failed")
        finally:
            stop(process)

    job.refresh_from_db()
    assert job.attempts == crash.options.max_attempts == 2
    assert "worker was lost" in job.last_error
    assert outcomes(job) == [(1, "interrupted"), (2, "interrupted")]
    assert Run.objects.filter(kind="crash").count() == 2


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.django_db(transaction=True)
def test_stop_signal_lets_the_running_job_finish(signum, tmp_path):
    job = sleep.enqueue("finish", 2.0)
    log = tmp_path / "worker.log"

    with running_worker(
        "--concurrency", "2", "--grace-seconds", "60", log=log
    ) as process:
        wait_for(lambda: started("sleep-start", "finish"))
        process.send_signal(signum)
        # Enqueued once the worker has taken the signal in: from then on
        # it must claim nothing, however busy the machine is.
        wait_for(lambda: "worker stopping" in log.read_text())
        waiting = record.enqueue("after-stop")

        assert process.wait(60) == 0

    assert status(job) == JobStatus.SUCCEEDED
    assert outcomes(job) == [(1, "succeeded")]
    assert status(waiting) == JobStatus.READY
    assert not Run.objects.filter(key="after-stop").exists()


@pytest.mark.django_db(transaction=True)
def test_stop_after_grace_requeues_the_interrupted_job_at_once():
    job = sleep.using(backoff_seconds=600).enqueue("long", 120.0)

    with running_worker("--grace-seconds", "1") as process:
        wait_for(lambda: started("sleep-start", "long"))
        process.send_signal(signal.SIGTERM)

        assert process.wait(60) == 0
        stopped = timezone.now()

    job.refresh_from_db()
    assert job.status == JobStatus.READY
    assert job.run_after <= stopped
    assert job.lease_expires_at is None
    assert outcomes(job) == [(1, "interrupted")]
    assert "stopped" in Attempt.objects.get(job_id=job.pk).error
    assert not started("sleep-end", "long")


@pytest.mark.django_db(transaction=True)
def test_second_stop_signal_stops_waiting_for_running_jobs(tmp_path):
    log = tmp_path / "worker.log"
    job = sleep.enqueue("second", 120.0)

    with running_worker("--grace-seconds", "600", log=log) as process:
        wait_for(lambda: started("sleep-start", "second"))
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: "worker stopping" in log.read_text())
        process.send_signal(signal.SIGTERM)

        assert process.wait(60) == 0

    assert status(job) == JobStatus.READY
    assert outcomes(job) == [(1, "interrupted")]


@pytest.mark.django_db(transaction=True)
def test_stopping_worker_keeps_its_leases_while_jobs_finish():
    job = sleep.enqueue("draining", 6.0)

    with running_worker("--grace-seconds", "60", settings=FAST) as first:
        wait_for(lambda: started("sleep-start", "draining"))
        first.send_signal(signal.SIGTERM)

        # Another worker recovers expired leases all the while.
        with running_worker(settings=FAST):
            assert first.wait(60) == 0

    assert status(job) == JobStatus.SUCCEEDED
    assert outcomes(job) == [(1, "succeeded")]
    assert Run.objects.filter(kind="sleep-start", key="draining").count() == 1


@pytest.mark.django_db(transaction=True)
def test_worker_that_lost_its_lease_records_nothing(tmp_path):
    log = tmp_path / "worker.log"
    job = sleep.enqueue("taken", 2.0)
    newer = uuid.uuid4()

    with running_worker(log=log):
        wait_for(lambda: started("sleep-start", "taken"))
        Job.objects.filter(pk=job.pk).update(
            worker_id=newer,
            attempts=F("attempts") + 1,
            lease_expires_at=timezone.now() + timedelta(hours=1),
        )
        wait_for(lambda: "job outcome not recorded, lease lost" in log.read_text())

    job.refresh_from_db()
    assert (job.status, job.worker_id, job.attempts) == (
        JobStatus.RUNNING,
        newer,
        2,
    )
    assert outcomes(job) == []


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_paused_worker_cannot_overwrite_the_outcome_of_its_successor(tmp_path):
    log = tmp_path / "paused.log"
    job = hang.enqueue("paused", 4.0)
    paused = start_worker(settings=FAST, log=log)
    try:
        wait_for(lambda: started("hang", "paused"))
        paused.send_signal(signal.SIGSTOP)

        with running_worker(settings=FAST):
            wait_for(lambda: status(job) == JobStatus.SUCCEEDED)

        paused.send_signal(signal.SIGCONT)
        wait_for(lambda: "job outcome not recorded, lease lost" in log.read_text())
    finally:
        paused.send_signal(signal.SIGCONT)
        stop(paused)

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert outcomes(job) == [(1, "interrupted"), (2, "succeeded")]


@pytest.mark.django_db(transaction=True)
def test_worker_runs_jobs_by_priority_then_age():
    for key, priority in [("low", 0), ("high", 10), ("neg", -5), ("mid", 5)]:
        record.using(priority=priority).enqueue(key)
    record.using(priority=10).enqueue("high-later")

    process = start_worker("--burst", "--concurrency", "1")
    try:
        assert process.wait(60) == 0
    finally:
        stop(process)

    order = list(Run.objects.order_by("pk").values_list("key", flat=True))
    assert order == ["high", "high-later", "mid", "low", "neg"]


@pytest.mark.django_db(transaction=True)
def test_scheduled_job_does_not_run_before_its_time():
    # An hour ahead, so that no slow start of the worker can reach it.
    later = record.using(delay=timedelta(hours=1)).enqueue("later")
    record.enqueue("now")

    process = start_worker("--burst")
    try:
        assert process.wait(60) == 0
    finally:
        stop(process)
    assert list(Run.objects.values_list("key", flat=True)) == ["now"]
    assert status(later) == JobStatus.READY

    due = timezone.now()
    Job.objects.filter(pk=later.pk).update(run_after=due)
    with running_worker():
        wait_for(lambda: status(later) == JobStatus.SUCCEEDED)
    assert Run.objects.get(key="later").created_at >= due


@pytest.mark.django_db(transaction=True)
def test_jobs_finishing_during_a_heartbeat_are_not_reported_lost(tmp_path):
    log = tmp_path / "worker.log"
    for n in range(150):
        record.enqueue(f"beat-{n}")

    # Heartbeats this frequent overlap with many jobs' last moments.
    fast_beats = {"KLERK_HEARTBEAT_SECONDS": 0.01}
    with running_worker("--concurrency", "4", settings=fast_beats, log=log):
        wait_for(lambda: Job.objects.filter(status="succeeded").count() == 150)

    assert "lease lost" not in log.read_text()


@pytest.mark.parametrize(
    "persistent",
    [
        pytest.param({}, id="closed-after-use"),
        pytest.param(
            {"CONN_MAX_AGE": None, "CONN_HEALTH_CHECKS": True}, id="health-checked"
        ),
        pytest.param({"CONN_MAX_AGE": 1}, id="aged-out"),
    ],
)
@pytest.mark.django_db(transaction=True)
def test_worker_survives_the_server_ending_its_sessions(vendor, persistent):
    if vendor == "sqlite":
        pytest.skip("SQLite has no server sessions to end")
    label = faults.new_label()
    settings = {**faults.labelled(label, **persistent), "KLERK_POLL_SECONDS": 0.2}
    before = record.enqueue("before")

    with running_worker("--concurrency", "2", settings=settings) as process:
        wait_for(lambda: status(before) == JobStatus.SUCCEEDED)
        ended = faults.sessions(label)
        assert ended
        faults.end_sessions(ended)
        if persistent.get("CONN_MAX_AGE"):
            time.sleep(persistent["CONN_MAX_AGE"] + 0.5)

        after = record.using(max_attempts=1).enqueue("after")
        wait_for(lambda: Job.objects.get(pk=after.pk).is_final)
        assert process.poll() is None

    assert outcomes(after) == [(1, "succeeded")]


@pytest.mark.parametrize("error", [InterfaceError, OperationalError])
@pytest.mark.django_db(transaction=True)
def test_claim_that_loses_its_connection_is_retried(monkeypatch, error):
    job = record.enqueue("reclaimed")
    claim = leases.claim
    failures = []

    def flaky(*args):
        if not failures:
            failures.append(error)
            raise error("connection already closed")
        return claim(*args)

    monkeypatch.setattr(leases, "claim", flaky)
    worker = Worker(WorkerOptions(burst=True, concurrency=1, listen=False))

    assert worker.run() == 0

    assert failures == [error]
    assert status(job) == JobStatus.SUCCEEDED


@pytest.mark.parametrize("error", [InterfaceError, OperationalError])
@pytest.mark.django_db(transaction=True)
def test_outcome_write_that_loses_its_connection_is_retried(monkeypatch, error):
    job = record.enqueue("rewritten")
    succeed = attempts._succeed
    failures = []

    def flaky(*args):
        if not failures:
            failures.append(error)
            raise error("connection already closed")
        return succeed(*args)

    monkeypatch.setattr(attempts, "_succeed", flaky)
    worker = Worker(WorkerOptions(burst=True, concurrency=1, listen=False))

    assert worker.run() == 0

    assert failures == [error]
    assert outcomes(job) == [(1, "succeeded")]


def run_django(settings: dict, *arguments: str) -> str:
    """Run ``python -m django`` with ``arguments`` on other settings."""
    finished = subprocess.run(
        [sys.executable, "-m", "django", *arguments],
        cwd=ROOT,
        env=worker_env(settings),
        capture_output=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr.decode()
    return finished.stdout.decode().strip()


ENQUEUE = "from tests.testapp.jobs import record; print(record.enqueue({!r}).pk)"


@pytest.mark.postgresql
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_worker_carries_on_after_its_database_server_restarts(tmp_path):
    missing = faults.postgres_binaries_missing()
    if missing:
        pytest.skip(missing)
    log = tmp_path / "worker.log"

    with faults.throwaway_postgres() as server:
        settings = {**server.create_database("klerk"), **FAST}
        run_django(settings, "migrate", "--noinput")

        def job_status(job_id: str) -> str:
            sql = "SELECT status FROM klerk_job WHERE id = %s"
            return server.fetch_one("klerk", sql, [int(job_id)])

        with running_worker(settings=settings, log=log) as process:
            first = run_django(
                settings, "shell", "-v", "0", "-c", ENQUEUE.format("first")
            )
            wait_for(lambda: job_status(first) == JobStatus.SUCCEEDED)

            server.stop()
            wait_for(lambda: "database error, retrying" in log.read_text())
            server.start()

            second = run_django(
                settings, "shell", "-v", "0", "-c", ENQUEUE.format("second")
            )
            wait_for(lambda: job_status(second) == JobStatus.SUCCEEDED)
            assert process.poll() is None


def test_database_retries_wait_a_few_seconds_at_most():
    delays = [reconnect_delay(failures) for failures in range(1, 100)]

    assert delays == sorted(delays)
    assert 0 < delays[0] < delays[-1] == RECONNECT_MAX_SECONDS <= 5


@pytest.mark.django_db(transaction=True)
def test_heartbeats_go_on_after_an_unexpected_maintenance_error(monkeypatch, settings):
    settings.KLERK_HEARTBEAT_SECONDS = 0.1
    settings.KLERK_RECOVERY_SECONDS = 0.1
    errors = []

    def broken(limit: int = 100) -> int:
        errors.append(1)
        raise RuntimeError("recovery broke")

    monkeypatch.setattr(leases, "recover_expired", broken)
    worker = Worker(WorkerOptions(listen=False))
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_for(lambda: errors)
        beat = WorkerRecord.objects.get(pk=worker.id).last_heartbeat_at

        wait_for(
            lambda: WorkerRecord.objects.get(pk=worker.id).last_heartbeat_at > beat
        )
    finally:
        worker.stop()
        thread.join(60)


@pytest.mark.django_db(transaction=True)
def test_slow_orphaned_actions_do_not_hold_up_heartbeats(monkeypatch, settings):
    settings.KLERK_LEASE_SECONDS = 2.0
    settings.KLERK_HEARTBEAT_SECONDS = 0.2
    settings.KLERK_RECOVERY_SECONDS = 0.2
    release = threading.Event()

    def slow_orphans() -> int:
        release.wait(30)
        return 0

    monkeypatch.setattr(actions, "run_orphans", slow_orphans)
    job = sleep.enqueue("beating", 4.0)
    worker = Worker(WorkerOptions(listen=False))
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_for(lambda: started("sleep-start", "beating"))
        # Any lease that expires meanwhile is taken back, as another
        # worker would.
        wait_for(lambda: leases.recover_expired() or status(job) != "running")
    finally:
        release.set()
        worker.stop()
        thread.join(60)

    assert outcomes(job) == [(1, "succeeded")]


def test_burst_claims_again_when_a_job_finished_during_its_claim():
    from klerk_django.worker import Worker, WorkerOptions

    worker = Worker(WorkerOptions(burst=True, concurrency=2, poll_seconds=0.01))
    worker.running[1] = None
    claims = []

    def claim(free):
        claims.append(free)
        # The running job ends while this claim runs; its retry may be due
        # now, so the worker must look once more before it exits.
        worker.running.clear()
        return []

    worker._claim = claim
    worker._loop()

    assert len(claims) == 2
