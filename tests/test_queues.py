"""Paused queues: no worker claims their jobs until they are resumed."""

from __future__ import annotations

import uuid
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from klerk_django import leases
from klerk_django.exceptions import QueueNameError
from klerk_django.models import Job, JobStatus, Queue
from klerk_django.queues import (
    forget_queue,
    pause_queue,
    paused_queues,
    resume_queue,
)
from tests.testapp.jobs import record
from tests.testapp.models import Run
from tests.workers import running_worker, wait_for


def claim_all() -> list[int]:
    return [job.id for job in leases.claim(uuid.uuid4(), None, 10)]


@pytest.mark.django_db(transaction=True)
def test_claim_skips_paused_queues_until_resumed():
    held = record.using(queue="slow").enqueue("held")
    free = record.using(queue="fast").enqueue("free")
    pause_queue("slow")

    assert claim_all() == [free.pk]
    assert claim_all() == []

    resume_queue("slow")
    assert claim_all() == [held.pk]


@pytest.mark.django_db(transaction=True)
def test_claim_of_named_queues_skips_a_paused_one():
    record.using(queue="slow").enqueue("held")
    pause_queue("slow")

    assert leases.claim(uuid.uuid4(), ["slow"], 5) == []


@pytest.mark.django_db
def test_pause_twice_and_resume_keep_one_switch():
    pause_queue("mail")
    pause_queue("mail")
    assert paused_queues() == ["mail"]

    resume_queue("mail")
    switch = Queue.objects.get()
    assert (switch.name, switch.paused, switch.paused_at) == ("mail", False, None)


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["", "has space", "x" * 101])
def test_bad_queue_name_is_refused(name):
    for change in (pause_queue, resume_queue, forget_queue):
        with pytest.raises(QueueNameError, match="Queue name") as refused:
            change(name)
        assert refused.value.name == name
        assert isinstance(refused.value, ValueError)
    for action in ("pause", "resume", "forget"):
        with pytest.raises(CommandError, match="Queue name"):
            call_command("klerk_queue", action, name)
    assert not Queue.objects.exists()


@pytest.mark.django_db
def test_resume_of_a_queue_that_is_not_paused_says_so_and_stores_nothing():
    out = StringIO()

    assert resume_queue("never-paused") is False
    call_command("klerk_queue", "resume", "never-paused", stdout=out)

    assert out.getvalue() == "queue never-paused is not paused\n"
    assert not Queue.objects.exists()
    pause_queue("mail")
    assert resume_queue("mail") is True
    assert resume_queue("mail") is False


@pytest.mark.django_db
def test_forget_deletes_the_switch_of_a_queue_that_is_not_paused():
    pause_queue("typo")
    pause_queue("mail")
    out = StringIO()

    with pytest.raises(CommandError, match="queue typo is paused; resume it first"):
        call_command("klerk_queue", "forget", "typo")
    assert sorted(paused_queues()) == ["mail", "typo"]
    resume_queue("typo")
    call_command("klerk_queue", "forget", "typo", stdout=out)
    call_command("klerk_queue", "forget", "typo", stdout=out)

    assert out.getvalue().splitlines() == [
        "queue typo forgotten",
        "queue typo has no switch to forget",
    ]
    assert list(Queue.objects.values_list("name", flat=True)) == ["mail"]
    listed = StringIO()
    call_command("klerk_queue", "list", stdout=listed)
    assert "typo" not in listed.getvalue()


@pytest.mark.django_db
def test_command_pauses_resumes_and_lists():
    record.using(queue="mail").enqueue("x")
    call_command("klerk_queue", "pause", "mail", stdout=StringIO())
    out = StringIO()

    call_command("klerk_queue", "list", stdout=out)

    assert out.getvalue().split() == [
        "mail",
        "paused",
        "ready=1",
        "scheduled=0",
        "running=0",
    ]
    call_command("klerk_queue", "resume", "mail", stdout=StringIO())
    assert paused_queues() == []


@pytest.mark.django_db(transaction=True)
def test_worker_leaves_a_paused_queue_alone_and_runs_it_once_resumed():
    pause_queue("slow")
    held = record.using(queue="slow").enqueue("held")
    record.using(queue="fast").enqueue("free")

    with running_worker("--concurrency", "2"):
        wait_for(lambda: Run.objects.filter(key="free").exists())
        # The worker claimed again after running "free", and skipped "held".
        record.using(queue="fast").enqueue("later")
        wait_for(lambda: Run.objects.filter(key="later").exists())
        assert Job.objects.get(pk=held.pk).status == JobStatus.READY

        resume_queue("slow")
        wait_for(lambda: Run.objects.filter(key="held").exists())


@pytest.mark.django_db
def test_list_counts_jobs_due_later_as_scheduled_not_ready():
    record.using(queue="mail").enqueue("now")
    record.using(queue="mail", delay=3600).enqueue("in an hour")
    record.using(queue="mail", delay=21 * 86400).enqueue("in three weeks")
    out = StringIO()

    call_command("klerk_queue", "list", stdout=out)

    assert out.getvalue().split() == [
        "mail",
        "active",
        "ready=1",
        "scheduled=2",
        "running=0",
    ]
