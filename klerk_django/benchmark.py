"""Measure klerk_django on the configured database, against raw-SQL ceilings.

Every figure comes from one run on one machine, so figures are compared as
ratios: each klerk figure is printed next to the ceiling that the same
database reaches with the least work that does the same job (a one-row
INSERT loop, a claim-then-finish loop). Durations come from the database's
own timestamps where a worker process is involved.

Only jobs in the queue ``klerk-bench`` are created and deleted.
"""

from __future__ import annotations

import logging
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import close_old_connections, transaction
from django.db.models import Max, Min

from . import database, processes
from .builtin_jobs import noop
from .commands import Command, handle
from .models import Attempt, Job, JobStatus, Worker

logger = logging.getLogger(__name__)

QUEUE = "klerk-bench"


@dataclass(frozen=True)
class BenchOptions:
    enqueue_jobs: int = 2000
    bulk_jobs: int = 20000
    drain_jobs: int = 20000
    ceiling_jobs: int = 5000
    latency_jobs: int = 200
    command_runs: int = 1000
    memory_jobs: int = 100000
    concurrency: int = 4

    @classmethod
    def quick(cls) -> BenchOptions:
        return cls(200, 2000, 1000, 500, 20, 100, 2000, 4)


class BenchCommand(Command):
    """A command that writes nothing but its record, under the global lock."""

    name = "klerk.bench"

    def execute(self) -> None:
        return None


def run(options: BenchOptions, report: Callable[[str], None]) -> dict[str, Any]:
    """Run every measurement and return the figures by their JSON key."""
    figures: dict[str, Any] = {"database": database.connection().vendor}
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("insert_ceiling_per_s", lambda: insert_ceiling(options.enqueue_jobs)),
        ("enqueue_per_s", lambda: enqueue_rate(options.enqueue_jobs)),
        ("commands_per_s", lambda: command_rate(options.command_runs)),
        ("bulk_enqueue_per_s", lambda: bulk_rate(options.bulk_jobs)),
        (
            "claim_finish_ceiling_per_s",
            lambda: claim_finish_ceiling(options.ceiling_jobs, clients=2),
        ),
        (
            "drain_per_s_1_worker",
            lambda: drain_rate(options.drain_jobs, 1, options.concurrency),
        ),
        (
            "drain_per_s_2_workers",
            lambda: drain_rate(options.drain_jobs, 2, options.concurrency),
        ),
        ("latency_ms", lambda: pickup_latency(options.latency_jobs)),
        ("worker_rss_growth_pct", lambda: worker_memory(options.memory_jobs)),
    ]
    for key, measure in steps:
        clear()
        report(f"measuring {key}")
        figures[key] = measure()
    clear()
    return figures


def clear() -> None:
    """Delete the benchmark's jobs, attempts and command records."""
    db = database.alias()
    jobs = Job.objects.using(db).filter(queue=QUEUE)
    Attempt.objects.using(db).filter(job__queue=QUEUE).delete()
    jobs._raw_delete(db)
    from .models import CommandRecord

    CommandRecord.objects.using(db).filter(name=BenchCommand.name).delete()


def insert_ceiling(count: int) -> float:
    """Return one-row INSERT commits per second, in raw SQL, no ORM."""
    conn = database.connection()
    now = conn.ops.adapt_datetimefield_value(database.python_now())
    sql = (
        "INSERT INTO klerk_job (name, queue, priority, arguments, status, "
        "run_after, attempts, max_attempts, backoff_base_seconds, "
        "backoff_max_seconds, created_at, last_error) VALUES "
        "(%s, %s, 0, %s, 'cancelled', %s, 0, 1, 0, 0, %s, '')"
    )
    params = ["klerk.noop", QUEUE, '{"args": [], "kwargs": {}}', now, now]
    conn.ensure_connection()

    started = time.perf_counter()
    for _ in range(count):
        with transaction.atomic(using=database.alias()):
            with conn.cursor() as cursor:
                cursor.execute(sql, params)
    return count / (time.perf_counter() - started)


def enqueue_rate(count: int) -> float:
    """Return jobs enqueued per second, one job per transaction."""
    job = noop.using(queue=QUEUE)
    started = time.perf_counter()
    for index in range(count):
        with transaction.atomic(using=database.alias()):
            job.enqueue(index)
    return count / (time.perf_counter() - started)


def command_rate(count: int) -> float:
    """Return commands per second under the global command lock."""
    started = time.perf_counter()
    for _ in range(count):
        handle(BenchCommand())
    return count / (time.perf_counter() - started)


def bulk_rate(count: int) -> float:
    """Return jobs per second enqueued in bulk in one transaction."""
    job = noop.using(queue=QUEUE)
    calls: list[tuple[tuple[int], dict[str, Any]]] = [
        ((index,), {}) for index in range(count)
    ]
    started = time.perf_counter()
    with transaction.atomic(using=database.alias()):
        job.enqueue_many(calls)
    return count / (time.perf_counter() - started)


def claim_finish_ceiling(count: int, clients: int) -> float:
    """Return jobs per second for a raw claim-then-finish loop.

    Each client claims one ready row per transaction (skipping rows locked
    by the other clients) and marks it done in a second transaction: the
    least work that runs each job exactly once, unbatched.
    """
    _prepare(count)
    threads = [threading.Thread(target=_claim_finish_loop) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return count / (time.perf_counter() - started)


def _claim_finish_loop() -> None:
    conn = database.connection()
    claim_sql, finish_sql = _ceiling_sql(conn.vendor)
    try:
        while True:
            with transaction.atomic(using=database.alias()):
                with conn.cursor() as cursor:
                    job_id = _claim_one(cursor, conn.vendor, claim_sql)
            if job_id is None:
                return
            with transaction.atomic(using=database.alias()):
                with conn.cursor() as cursor:
                    cursor.execute(finish_sql, [job_id])
    finally:
        conn.close()


def _ceiling_sql(vendor: str) -> tuple[str, str]:
    pick = (
        "SELECT id FROM klerk_job WHERE status = 'ready' AND queue = 'klerk-bench' "
        "ORDER BY priority DESC, run_after, id LIMIT 1"
    )
    finish = "UPDATE klerk_job SET status = 'succeeded' WHERE id = %s"
    if vendor == "postgresql":
        claim = (
            "UPDATE klerk_job SET status = 'running' "
            f"WHERE id = ({pick} FOR UPDATE SKIP LOCKED) RETURNING id"
        )
    elif vendor == "sqlite":
        claim = (
            f"UPDATE klerk_job SET status = 'running' WHERE id = ({pick}) RETURNING id"
        )
    else:
        claim = f"{pick} FOR UPDATE SKIP LOCKED"
    return claim, finish


def _claim_one(cursor: Any, vendor: str, claim_sql: str) -> int | None:
    cursor.execute(claim_sql)
    row = cursor.fetchone()
    if row is None:
        return None
    if vendor == "mysql":
        cursor.execute(
            "UPDATE klerk_job SET status = 'running' WHERE id = %s", [row[0]]
        )
    return int(row[0])


def _prepare(count: int) -> None:
    job = noop.using(queue=QUEUE)
    with transaction.atomic(using=database.alias()):
        job.enqueue_many([((index,), {}) for index in range(count)])


def drain_rate(count: int, workers: int, concurrency: int) -> float:
    """Return jobs per second that worker processes drain, first start to
    last finish, from the database's timestamps."""
    _prepare(count)
    processes = [
        _start_worker("--burst", "--concurrency", str(concurrency))
        for _ in range(workers)
    ]
    for process in processes:
        process.wait()

    done = Job.objects.using(database.alias()).filter(
        queue=QUEUE, status=JobStatus.SUCCEEDED
    )
    span = done.aggregate(first=Min("started_at"), last=Max("finished_at"))
    seconds = (span["last"] - span["first"]).total_seconds()
    finished = done.count()
    if finished != count:
        raise RuntimeError(f"drain finished {finished} of {count} jobs")
    return finished / max(seconds, 1e-9)


def pickup_latency(count: int) -> dict[str, float]:
    """Return commit-to-start latency percentiles of an idle worker, in ms."""
    process = _start_worker("--concurrency", "1")
    try:
        _wait_until_listening(process)
        committed: dict[int, float] = {}
        job = noop.using(queue=QUEUE)
        for index in range(count):
            with transaction.atomic(using=database.alias()):
                created = job.enqueue(index)
                # Taken before the commit, so the figure includes it.
                committed[created.pk] = time.time()
            time.sleep(0.02)
        _wait_for_jobs(count)
    finally:
        _stop(process)

    rows = Job.objects.using(database.alias()).filter(pk__in=list(committed))
    delays = sorted(
        (started.timestamp() - committed[pk]) * 1000
        for pk, started in rows.values_list("pk", "started_at")
        if started is not None
    )
    return {
        "p50": round(_percentile(delays, 50), 3),
        "p95": round(_percentile(delays, 95), 3),
        "p99": round(_percentile(delays, 99), 3),
    }


def worker_memory(count: int) -> float:
    """Return a worker's RSS growth in percent between 5% and 100% of
    ``count`` jobs."""
    _prepare(count)
    process = _start_worker("--burst", "--concurrency", "4")
    try:
        _wait_for_jobs(max(count // 20, 1))
        before = _rss_kib(process.pid)
        _wait_for_jobs(count, process)
        after = _rss_kib(process.pid) or before
    finally:
        _stop(process)
    if not before:
        return 0.0
    return round((after - before) * 100.0 / before, 2)


def _start_worker(*options: str) -> subprocess.Popen[bytes]:
    return processes.start_worker("--queue", QUEUE, *options)


def _stop(process: subprocess.Popen[bytes]) -> None:
    processes.end_worker(process, timeout=60.0)


def _wait_until_listening(process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    workers = Worker.objects.using(database.alias())
    while not workers.filter(pid=process.pid, stopped_at=None).exists():
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError("the benchmark worker did not start")
        time.sleep(0.05)
    # The listener connects right after the worker registers.
    time.sleep(0.5)


def _wait_for_jobs(count: int, process: subprocess.Popen[bytes] | None = None) -> None:
    finished = Job.objects.using(database.alias()).filter(
        queue=QUEUE, status__in=[JobStatus.SUCCEEDED, JobStatus.FAILED]
    )
    while finished.count() < count:
        if process is not None and process.poll() is not None:
            return
        time.sleep(0.05)
        close_old_connections()


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def _percentile(values: list[float], percent: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(percent) - 1]
