"""Helpers for the tests of projects that use klerk_django.

``run_jobs`` runs ready jobs in the test's own process, through the same
claim and attempt code a worker uses: arguments are read back from the
database, as a worker reads them.
``assert_enqueued`` checks that a job with given arguments is waiting.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from . import arguments, attempts, database, leases
from .jobs import JobFunction
from .models import Job
from .results import JobResult, get_result

# A job that keeps enqueueing itself would make run_jobs loop forever.
MAX_ROUNDS = 100


def run_jobs(
    queues: Sequence[str] | None = None, max_rounds: int = MAX_ROUNDS
) -> list[JobResult]:
    """Run every job ready now, and those they enqueue; return their results.

    Each job runs once per round; a failed job whose retry is due at once
    runs again in the next round. Jobs scheduled for later, and jobs of
    paused queues, are left ready. Jobs declared with ``process=True`` run
    in this process too. Raises RuntimeError if jobs are still
    ready after ``max_rounds`` rounds.
    """
    worker_id = uuid.uuid4()
    ran: list[int] = []
    for _ in range(max_rounds):
        claimed = leases.claim(worker_id, queues, 1000)
        if not claimed:
            return [get_result(job_id) for job_id in dict.fromkeys(ran)]
        for job in claimed:
            # A child process would not see the test's database or its
            # uncommitted rows: process jobs run here like the others.
            attempts.run(job, worker_id, spawn=False)
            ran.append(job.id)
    raise RuntimeError(
        f"Jobs were still ready after {max_rounds} rounds of run_jobs(); "
        "does a job enqueue itself?"
    )


def assert_enqueued(job_function: JobFunction | str, *args: Any, **kwargs: Any) -> Job:
    """Return the ready job of ``job_function`` with exactly these arguments.

    Raises AssertionError listing the ready jobs of that function when
    none matches.
    """
    name = job_function if isinstance(job_function, str) else job_function.name
    # Compare stored forms, as the database gives them back.
    wanted = json.loads(json.dumps(arguments.pack(args, kwargs)))
    ready = Job.objects.using(database.alias()).ready().filter(name=name)

    found = []
    for job in ready.order_by("pk"):
        stored = job.arguments
        if isinstance(stored, str):
            stored = json.loads(stored)
        if stored == wanted:
            return job
        found.append(stored)
    raise AssertionError(
        f"No ready job {name!r} with arguments {wanted!r}; "
        f"ready jobs of it: {found or 'none'}."
    )
