"""Results: what became of a job, read back by its id.

``get_result`` reads the job and its attempts in two queries on the jobs'
database and returns a frozen snapshot; it never waits for the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import database
from .exceptions import KlerkError
from .models import FINAL_STATUSES, Attempt, Job


class JobNotFound(KlerkError, LookupError):
    """A job id that names no stored job."""


@dataclass(frozen=True)
class AttemptResult:
    """One attempt of a job and how it ended."""

    number: int
    outcome: str
    error: str
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class JobResult:
    """A job's status, return value, progress and attempts at one moment."""

    job_id: int
    name: str
    status: str
    result: Any
    progress: Any
    last_error: str
    attempts: tuple[AttemptResult, ...]

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def errors(self) -> list[str]:
        """Return the errors of the failed or interrupted attempts."""
        return [attempt.error for attempt in self.attempts if attempt.error]


def get_result(job_id: int) -> JobResult:
    """Return the status, result and attempts of job ``job_id``.

    Raises JobNotFound for an id that names no job (never stored, or
    deleted by retention).
    """
    if isinstance(job_id, bool) or not isinstance(job_id, int):
        raise JobNotFound(f"A job id is an integer, got {job_id!r}.")
    db = database.alias()
    job = Job.objects.using(db).filter(pk=job_id).first()
    if job is None:
        raise JobNotFound(f"No job has the id {job_id!r}.")

    rows = Attempt.objects.using(db).filter(job_id=job.pk).order_by("number")
    attempts = tuple(
        AttemptResult(
            row.number, row.outcome, row.error, row.started_at, row.finished_at
        )
        for row in rows
    )
    return JobResult(
        job_id=job.pk,
        name=job.name,
        status=job.status,
        result=job.result,
        progress=job.progress,
        last_error=job.last_error,
        attempts=attempts,
    )
