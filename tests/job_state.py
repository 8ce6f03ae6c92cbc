"""Read what became of a job, for tests that run real workers."""

from __future__ import annotations

from klerk_django.models import Attempt, Job
from tests.testapp.models import Run


def status(job: Job) -> str:
    """Return the job's status as stored now."""
    return Job.objects.get(pk=job.pk).status


def outcomes(job: Job) -> list[tuple[int, str]]:
    """Return the job's recorded attempts as (number, outcome) pairs."""
    return list(
        Attempt.objects.filter(job_id=job.pk)
        .order_by("number")
        .values_list("number", "outcome")
    )


def runs(kind: str, key: str) -> list[int]:
    """Return the attempt numbers that ran the job's code, in order."""
    found = Run.objects.filter(kind=kind, key=key).order_by("pk")
    return list(found.values_list("attempt", flat=True))
