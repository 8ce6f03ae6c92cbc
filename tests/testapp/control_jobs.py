"""Job and action functions for the tests of results, progress and async."""

from django.db.models import F

from klerk_django import current_job, job
from klerk_django.attempts import report_progress
from klerk_django.models import Job

from .models import Run


def _mark(kind: str, key: str) -> None:
    context = current_job()
    Run.objects.create(kind=kind, key=key, attempt=context.attempt if context else 0)


@job(name="tests.progress")
def progress(key: str) -> str:
    """Report progress twice; the second time after losing the lease."""
    held = report_progress(0.5)
    _mark(f"progress-{held}", key)
    held = report_progress({"done": 2, "of": 4})
    _mark(f"progress-{held}", key)
    # Another worker takes the job over: the next report must write nothing.
    context = current_job()
    Job.objects.filter(pk=context.job_id).update(attempts=F("attempts") + 1)
    held = report_progress(1.0)
    _mark(f"progress-{held}", key)
    return key
