"""Workers killed at chosen points of an attempt."""

from __future__ import annotations

import signal
import subprocess

import pytest

from klerk_django.models import Attempt, Job, JobStatus
from tests.job_state import outcomes, runs, status
from tests.testapp.kill_jobs import finish, gated
from tests.workers import running_worker, start_worker, stop, wait_for

# Short leases so that lost workers are noticed within seconds.
FAST = {
    "KLERK_LEASE_SECONDS": 3,
    "KLERK_HEARTBEAT_SECONDS": 1,
    "KLERK_RECOVERY_SECONDS": 1,
}


def kill_stopped(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a SIGSTOPped worker; the kernel ends it without resuming it."""
    process.kill()
    process.wait(30)


@pytest.mark.django_db(transaction=True)
def test_job_claimed_by_a_worker_killed_before_its_code_ran_runs_once(tmp_path):
    gate = tmp_path / "gate"
    job = gated.enqueue("claimed", str(gate))
    first = start_worker(settings=FAST)
    try:
        wait_for(lambda: status(job) == JobStatus.RUNNING, interval=0.01)
        first.send_signal(signal.SIGSTOP)
        # Read only once it is dead: on SQLite a process stopped while it
        # commits holds the file lock, and readers wait for it.
        kill_stopped(first)
        assert runs("gated", "claimed") == []

        gate.touch()
        with running_worker(settings=FAST):
            wait_for(lambda: status(job) == JobStatus.SUCCEEDED)
    finally:
        stop(first)

    assert outcomes(job) == [(1, "interrupted"), (2, "succeeded")]
    assert "worker was lost" in Attempt.objects.get(job_id=job.pk, number=1).error
    assert runs("gated", "claimed") == [2]


@pytest.mark.django_db(transaction=True)
def test_job_whose_worker_is_killed_while_finishing_succeeds_once():
    job = finish.enqueue("finishing")
    first = start_worker(settings=FAST)
    try:
        # The outcome write follows the marker at once: poll closely to
        # stop the worker before, during or just after it.
        wait_for(lambda: runs("finish", "finishing"), interval=0.005)
        first.send_signal(signal.SIGSTOP)
        kill_stopped(first)

        with running_worker(settings=FAST):
            wait_for(lambda: status(job) == JobStatus.SUCCEEDED)
    finally:
        stop(first)

    recorded = outcomes(job)
    assert recorded in (
        [(1, "succeeded")],
        [(1, "interrupted"), (2, "succeeded")],
    )
    assert 1 <= len(runs("finish", "finishing")) <= 2
    assert Job.objects.get(pk=job.pk).attempts == len(recorded)
