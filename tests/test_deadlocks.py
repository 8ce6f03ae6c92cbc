"""A real InnoDB deadlock in the worker's outcome write (MariaDB only).

The test's own session holds the job's row with a shared lock, the
worker's success UPDATE queues behind it for an exclusive lock, and the
session then asks for an exclusive lock too: each waits for the other.
InnoDB rolls back the lighter of the two transactions, which the test
makes sure is the worker's, so the worker has to write its outcome again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from klerk_django.models import Job, JobStatus
from tests.faults import database_settings
from tests.job_state import outcomes, runs, status
from tests.testapp.kill_jobs import finish, gated
from tests.workers import running_worker, wait_for

pytestmark = pytest.mark.mysql

# The worker's sessions wait far longer for a row lock than the test ever
# runs: when its lock request goes away, InnoDB rolled it back as the
# victim of a deadlock, never as a lock wait that timed out.
WORKER_LOCK_WAIT = "SET SESSION innodb_lock_wait_timeout = 600"
# The test's session gives up sooner, so a deadlock InnoDB failed to see
# ends the test with an error instead of hanging it.
TEST_LOCK_WAIT = "SET SESSION innodb_lock_wait_timeout = 60"

# A heartbeat renews the job's lease with an UPDATE of its row. One queued
# behind the test's lock joins the deadlock, and InnoDB may roll it back
# alone and let the outcome write through. After the worker's first
# maintenance pass, which runs before the job is enqueued, none comes.
QUIET_MAINTENANCE = {
    "KLERK_LEASE_SECONDS": 3600,
    "KLERK_HEARTBEAT_SECONDS": 600,
    "KLERK_RECOVERY_SECONDS": 600,
}

BALLAST = "klerk_test_deadlock_ballast"
BALLAST_ROWS = 500

SUCCESS_UPDATE = "UPDATE `klerk_job` SET `status` = 'succeeded'"


def innodb_deadlocks() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'")
        return int(cursor.fetchone()[1])


def outcome_write_waits() -> bool:
    """Return whether the worker's success UPDATE waits for a row lock.

    Read from the InnoDB monitor, which is current. INNODB_TRX is a copy
    that the server refreshes only after 0.1 s without any reader, so
    polling it, here or in another test run on the same server, can show
    the state from before the wait for as long as the polling goes on.
    """
    with connection.cursor() as cursor:
        cursor.execute("SHOW ENGINE INNODB STATUS")
        monitor = cursor.fetchone()[2]

    table = f"`{connection.settings_dict['NAME']}`.`klerk_job`"
    return any(
        "LOCK WAIT" in entry and table in entry and SUCCESS_UPDATE in entry
        for entry in monitor.split("---TRANSACTION ")[1:]
    )


def maintained_once(log: Path) -> bool:
    """Return whether the worker's first heartbeat and recovery are over.

    The worker starts its pruner only after both, and the pruner logs.
    """
    return log.exists() and "pruned jobs=" in log.read_text()


def retries(log: Path, job: Job) -> list[str]:
    """Return the tries and errors of the retried outcome writes of ``job``."""
    line = re.compile(
        rf"outcome not recorded, retrying job_id={job.pk} .* (try=\d+ error=\w+)"
    )
    return line.findall(log.read_text())


@contextmanager
def ballast_table() -> Iterator[None]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE {BALLAST} (id INT AUTO_INCREMENT PRIMARY KEY, n INT)"
            " ENGINE=InnoDB"
        )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE {BALLAST}")


def open_session() -> Any:
    """Open a session of the test's own, outside Django's connections."""
    session = connection.get_new_connection(connection.get_connection_params())
    session.autocommit(False)
    with session.cursor() as cursor:
        cursor.execute(TEST_LOCK_WAIT)
    return session


def deadlock_the_outcome_write(job: Job, gate: Path) -> None:
    """Hold the job's row shared while it ends, then ask for it exclusively."""
    session = open_session()
    try:
        cursor = session.cursor()
        cursor.execute(
            "SELECT id FROM klerk_job WHERE id = %s LOCK IN SHARE MODE", [job.pk]
        )
        # InnoDB rolls back the transaction with fewer undo records and
        # locks. The worker's has changed nothing when it starts to wait;
        # hundreds of inserted rows keep this one far heavier.
        cursor.executemany(
            f"INSERT INTO {BALLAST} (n) VALUES (%s)",
            [(n,) for n in range(BALLAST_ROWS)],
        )

        gate.touch()
        wait_for(outcome_write_waits, interval=0.05)
        try:
            cursor.execute(
                "SELECT id FROM klerk_job WHERE id = %s FOR UPDATE", [job.pk]
            )
        except session.OperationalError as exc:
            pytest.fail(f"the test's transaction, not the worker's, ended: {exc}")
    finally:
        session.rollback()
        session.close()


@pytest.mark.django_db(transaction=True)
def test_deadlocked_outcome_write_is_retried_and_the_job_succeeds_once(tmp_path):
    gate, log = tmp_path / "gate", tmp_path / "worker.log"
    # Other test runs may share the server: only a rise is certain.
    deadlocks = innodb_deadlocks()
    settings = {
        **QUIET_MAINTENANCE,
        **database_settings(OPTIONS={"init_command": WORKER_LOCK_WAIT}),
    }

    with ballast_table(), running_worker(settings=settings, log=log) as worker:
        wait_for(lambda: maintained_once(log))
        job = gated.enqueue("deadlock", str(gate))
        wait_for(lambda: status(job) == JobStatus.RUNNING)
        deadlock_the_outcome_write(job, gate)
        wait_for(lambda: status(job) == JobStatus.SUCCEEDED)

        after = finish.enqueue("after the deadlock")
        wait_for(lambda: status(after) == JobStatus.SUCCEEDED)
        assert worker.poll() is None

    assert innodb_deadlocks() > deadlocks
    assert retries(log, job) == ["try=1 error=OperationalError"]
    assert outcomes(job) == [(1, "succeeded")]
    assert Job.objects.get(pk=job.pk).attempts == 1
    assert runs("gated", "deadlock") == [1]
