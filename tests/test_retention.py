"""Retention: old finished jobs and actions go, nothing else ever does."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

from klerk_django.exceptions import SettingsError
from klerk_django.models import Action, Attempt, Job, JobStatus
from klerk_django.retention import prune, retention_days
from tests.workers import running_worker, wait_for

LONG_AGO = timedelta(days=400)


def make_job(status: str, age: timedelta = LONG_AGO, finished: bool = True) -> Job:
    moment = timezone.now() - age
    job = Job.objects.create(
        name="tests.noop",
        status=status,
        run_after=moment,
        created_at=moment,
        finished_at=moment if finished else None,
    )
    Attempt.objects.create(job=job, number=1, outcome="failed", finished_at=moment)
    return job


def make_action(status: str, age: timedelta = LONG_AGO) -> Action:
    moment = timezone.now() - age
    return Action.objects.create(
        name="tests.noop", status=status, created_at=moment, finished_at=moment
    )


def old_rows() -> dict[str, Job | Action]:
    rows: dict[str, Job | Action] = {
        f"job-{status}": make_job(status) for status in JobStatus.values
    }
    # Ready and running rows here carry an old finished_at, as a retried
    # job does: the status alone must keep them.
    for status in ("pending", "running", "succeeded", "failed"):
        rows[f"action-{status}"] = make_action(status)
    rows["recent-job"] = make_job(JobStatus.SUCCEEDED, age=timedelta(days=1))
    rows["recent-action"] = make_action("failed", age=timedelta(days=1))
    return rows


def kept() -> set[str]:
    jobs = {f"job-{status}" for status in Job.objects.values_list("status", flat=True)}
    actions = {f"action-{s}" for s in Action.objects.values_list("status", flat=True)}
    return jobs | actions


@pytest.mark.django_db
@pytest.mark.parametrize("batch_size", [1, 1000])
def test_prune_deletes_only_old_finished_jobs_and_actions(batch_size):
    rows = old_rows()

    pruned = prune(30, batch_size=batch_size)

    assert (pruned.jobs, pruned.attempts, pruned.actions) == (3, 3, 2)
    assert kept() == {
        "job-ready",
        "job-running",
        "job-succeeded",
        "action-pending",
        "action-running",
        "action-failed",
    }
    assert Job.objects.filter(pk=rows["recent-job"].pk).exists()
    assert Action.objects.filter(pk=rows["recent-action"].pk).exists()
    assert Attempt.objects.count() == 3


@pytest.mark.django_db
def test_prune_command_reports_and_refuses_bad_ages():
    old_rows()
    out = StringIO()

    call_command("klerk_prune", "--older-than-days", "2", stdout=out)

    assert out.getvalue().strip() == "deleted jobs=3 attempts=3 actions=2"
    with pytest.raises(CommandError, match="^--older-than-days must be a number"):
        call_command("klerk_prune", "--older-than-days", "-1")
    with pytest.raises(CommandError, match="^--batch-size must be at least 1, got 0"):
        call_command("klerk_prune", "--older-than-days", "2", "--batch-size", "0")


@pytest.mark.django_db
def test_prune_command_keeps_everything_when_the_setting_is_none():
    old_rows()
    out = StringIO()

    with override_settings(KLERK_RETENTION_DAYS=None):
        call_command("klerk_prune", stdout=out)

    assert "nothing pruned" in out.getvalue()
    assert Job.objects.count() == 6


@pytest.mark.parametrize("days", ["30", -1, True, float("nan")])
def test_unusable_retention_setting_is_named(days):
    with override_settings(KLERK_RETENTION_DAYS=days):
        with pytest.raises(SettingsError, match="KLERK_RETENTION_DAYS"):
            retention_days()


@pytest.mark.django_db(transaction=True)
def test_worker_prunes_old_finished_jobs_and_keeps_the_rest():
    old_rows()

    settings = {"KLERK_RETENTION_DAYS": 2}
    with running_worker("--queue", "none", settings=settings):
        wait_for(lambda: not Job.objects.filter(status=JobStatus.FAILED).exists())
        wait_for(lambda: not Action.objects.filter(status="succeeded").exists())

    # The worker also runs the old pending action, as an orphan.
    assert kept() >= {"job-ready", "job-running", "action-running"}
    assert Job.objects.count() == 3
