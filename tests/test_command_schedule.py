"""Scheduled commands: stored as jobs, validated and run by a worker."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from klerk_django import attempts, handle, leases, retry_jobs, schedule
from klerk_django.exceptions import ArgumentError
from klerk_django.models import Attempt, CommandRecord, Job, JobStatus
from tests.testapp import commands
from tests.testapp.commands import AddNote, Permitted, RunHook
from tests.testapp.models import Note

pytestmark = pytest.mark.django_db(transaction=True)

WORKER = uuid.UUID(int=7)


@pytest.fixture(autouse=True)
def clean_commands():
    commands.hooks.clear()
    yield
    commands.hooks.clear()


def run_due() -> list[str]:
    """Claim and run due jobs one at a time; return their statuses."""
    statuses = []
    while claimed := leases.claim(WORKER, None, 1):
        statuses.append(attempts.run(claimed[0], WORKER))
    return statuses


def test_schedule_stores_a_job_and_runs_nothing_yet():
    job = schedule(AddNote(text="later"), delay=timedelta(hours=1))

    assert job.name == "klerk.command"
    assert job.arguments["args"] == ["tests.add_note", {"text": "later"}]
    assert job.run_after > job.created_at
    assert run_due() == []
    assert not Note.objects.exists()
    assert not CommandRecord.objects.exists()


def test_a_due_scheduled_command_runs_as_the_system_actor():
    job = schedule(Permitted(text="later"))

    assert run_due() == [JobStatus.SUCCEEDED]

    saved = CommandRecord.objects.get()
    assert saved.actor == "system"
    assert saved.outcome == CommandRecord.Outcome.SUCCEEDED
    assert saved.token.startswith(f"klerk.command:{job.pk}:")
    job.refresh_from_db()
    assert job.result["outcome"] == "succeeded"
    assert job.result["record_id"] == str(saved.pk)
    assert job.result["value"] == Note.objects.get(text="later").pk


def test_inputs_are_validated_when_the_command_runs_not_before():
    job = schedule(AddNote(text="forbidden"))

    assert run_due() == [JobStatus.SUCCEEDED]

    job.refresh_from_db()
    assert job.result["outcome"] == "rejected"
    assert [p["code"] for p in job.result["problems"]] == ["forbidden"]
    assert CommandRecord.objects.get().outcome == CommandRecord.Outcome.REJECTED


def test_a_failing_scheduled_command_fails_its_attempt_and_is_retried():
    failures = []

    def flaky(command):
        if not failures:
            failures.append("once")
            raise RuntimeError("not yet")
        return "done"

    commands.hooks["flaky"] = flaky
    job = schedule(RunHook(key="flaky"), max_attempts=2)
    Job.objects.filter(pk=job.pk).update(backoff_base_seconds=0)

    assert run_due() == [JobStatus.READY, JobStatus.SUCCEEDED]

    job.refresh_from_db()
    assert job.result["value"] == "done"
    assert "ScheduledCommandFailed" in Attempt.objects.get(number=1).error
    outcomes = CommandRecord.objects.order_by("created_at")
    assert list(outcomes.values_list("outcome", flat=True)) == ["failed", "succeeded"]


def test_running_the_same_job_again_does_not_run_the_command_twice():
    job = schedule(Permitted(text="once"))
    assert run_due() == [JobStatus.SUCCEEDED]

    # As if the worker's outcome was lost and the job runs once more.
    Job.objects.filter(pk=job.pk).update(status=JobStatus.FAILED)
    retry_jobs([job.pk])
    assert run_due() == [JobStatus.SUCCEEDED]

    job.refresh_from_db()
    assert job.result["repeated"] is True
    assert Note.objects.count() == 1
    assert CommandRecord.objects.count() == 1


def test_jobs_scheduled_with_one_token_run_the_command_once():
    schedule(Permitted(text="once"), token="monthly-2026-12")
    schedule(Permitted(text="once"), token="monthly-2026-12")

    assert run_due() == [JobStatus.SUCCEEDED, JobStatus.SUCCEEDED]

    assert Note.objects.count() == 1
    assert CommandRecord.objects.get().token == "monthly-2026-12"


def test_a_command_may_schedule_another_in_its_transaction():
    def plan(command):
        schedule(AddNote(text="follow-up"), run_after=timezone.now())
        if command.raw_inputs["key"] == "plan-then-fail":
            raise RuntimeError("changed my mind")

    commands.hooks["plan"] = plan
    commands.hooks["plan-then-fail"] = plan

    kept = handle(RunHook(key="plan"))
    dropped = handle(RunHook(key="plan-then-fail"))

    assert kept.ok and not dropped.ok
    job = Job.objects.get()
    assert job.command_id == kept.record_id
    assert kept.jobs == [job]


def test_inputs_that_are_not_json_are_refused_when_scheduling():
    with pytest.raises(ArgumentError):
        schedule(AddNote(text=User(username="x")))

    assert not Job.objects.exists()


def test_only_registered_commands_can_be_scheduled():
    class Unregistered(AddNote):
        abstract = True

    with pytest.raises(ValueError, match="is not the command registered"):
        schedule(Unregistered(text="x"))
