"""The chaos run: workers killed at random while commands enqueue jobs.

Several ``klerk_worker`` processes serve the chaos queue while a command
enqueues chaos jobs; every second or two one worker is killed (SIGKILL,
sometimes SIGTERM) and started again. Then the queue drains and the run
counts committed jobs without a final state (lost) and runs that overlapped
or repeated a finished job (duplicated), as the chaos job recorded them.
"""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from django import forms
from django.db import close_old_connections

from . import database, processes
from .chaos import FOLDER_VARIABLE, QUEUE, chaos_job
from .commands import Command, handle
from .models import FINAL_STATUSES, Job

logger = logging.getLogger(__name__)


class EnqueueChaosInputs(forms.Form):
    first = forms.IntegerField(min_value=0)
    count = forms.IntegerField(min_value=1, max_value=1000)


class EnqueueChaos(Command):
    """Enqueue a few chaos jobs, as application code would."""

    name = "klerk.chaos.enqueue"
    Inputs = EnqueueChaosInputs

    def execute(self) -> list[int]:
        first, count = self.inputs["first"], self.inputs["count"]
        jobs = [
            chaos_job.enqueue(key, random.uniform(0.0, 0.05), random.random() < 0.1)
            for key in range(first, first + count)
        ]
        return [created.pk for created in jobs]


@dataclass
class ChaosReport:
    jobs: int = 0
    kills: int = 0
    lost: int = 0
    duplicated: int = 0
    details: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"chaos: jobs={self.jobs} kills={self.kills} "
            f"lost={self.lost} duplicated={self.duplicated}"
        )


@dataclass(frozen=True)
class ChaosOptions:
    seconds: float = 60.0
    workers: int = 3
    concurrency: int = 2
    lease_seconds: float = 3.0
    drain_seconds: float = 300.0
    batch: int = 5


def run(options: ChaosOptions, folder: Path) -> ChaosReport:
    """Enqueue and kill for ``options.seconds``, drain, then count."""
    _clear()
    report = ChaosReport()
    env = {FOLDER_VARIABLE: str(folder)}
    workers = [_start(env, options) for _ in range(options.workers)]
    try:
        _storm(options, workers, env, report)
        logger.info("chaos storm over jobs=%s kills=%s", report.jobs, report.kills)
        _drain(options, workers, env)
        logger.info("chaos queue drained")
    finally:
        for process in workers:
            _end(process)
        logger.info("chaos workers stopped")

    return _count(folder, report)


def _storm(
    options: ChaosOptions,
    workers: list[subprocess.Popen[bytes]],
    env: dict[str, str],
    report: ChaosReport,
) -> None:
    deadline = time.monotonic() + options.seconds
    next_kill = time.monotonic() + _kill_interval()
    key = 0
    while time.monotonic() < deadline:
        result = handle(EnqueueChaos(first=key, count=options.batch))
        if not result.ok:
            raise RuntimeError(f"chaos enqueue failed: {result.problems}")
        key += options.batch
        report.jobs = key

        if time.monotonic() >= next_kill:
            _kill_one(workers, env, options, report)
            next_kill = time.monotonic() + _kill_interval()
        time.sleep(0.05)


def _kill_interval() -> float:
    # Longer than a worker takes to start, so that killed workers come back
    # and claim jobs before the next kill rather than dying while booting.
    return random.uniform(2.0, 5.0)


def _kill_one(
    workers: list[subprocess.Popen[bytes]],
    env: dict[str, str],
    options: ChaosOptions,
    report: ChaosReport,
) -> None:
    index = random.randrange(len(workers))
    victim = workers[index]
    how = signal.SIGKILL if random.random() < 0.75 else signal.SIGTERM
    victim.send_signal(how)
    victim.wait(60)
    report.kills += 1
    logger.info(
        "chaos killed a worker pid=%s signal=%s", victim.pid, signal.Signals(how).name
    )
    workers[index] = _start(env, options)


def _drain(
    options: ChaosOptions,
    workers: list[subprocess.Popen[bytes]],
    env: dict[str, str],
) -> None:
    deadline = time.monotonic() + options.drain_seconds
    open_jobs = (
        Job.objects.using(database.alias())
        .filter(queue=QUEUE)
        .exclude(status__in=FINAL_STATUSES)
    )
    while open_jobs.exists() and time.monotonic() < deadline:
        for index, process in enumerate(workers):
            if process.poll() is not None:
                workers[index] = _start(env, options)
        time.sleep(0.5)
        close_old_connections()


def _count(folder: Path, report: ChaosReport) -> ChaosReport:
    jobs = Job.objects.using(database.alias()).filter(queue=QUEUE)
    report.jobs = jobs.count()
    unfinished = jobs.exclude(status__in=FINAL_STATUSES)
    report.lost = unfinished.count()
    report.details += [
        f"lost job_id={pk} status={status}"
        for pk, status in unfinished.values_list("pk", "status")[:20]
    ]
    log = folder / "duplicates.log"
    lines = log.read_text().splitlines() if log.exists() else []
    report.duplicated = len(lines)
    report.details += [f"duplicated {line}" for line in lines[:20]]
    return report


def _start(env: dict[str, str], options: ChaosOptions) -> subprocess.Popen[bytes]:
    return processes.start_worker(
        "--queue",
        QUEUE,
        "--concurrency",
        str(options.concurrency),
        "--lease-seconds",
        str(options.lease_seconds),
        "--grace-seconds",
        "2",
        extra_env=env,
    )


def _end(process: subprocess.Popen[bytes]) -> None:
    processes.end_worker(process)


def _clear() -> None:
    db = database.alias()
    Job.objects.using(db).filter(queue=QUEUE).delete()
