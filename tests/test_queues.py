"""Paused queues: no worker claims their jobs until they are resumed."""

from __future__ import annotations

import uuid
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from klerk_django import leases
from klerk_django.exceptions import EnqueueOptionError
from klerk_django.models import Job, JobStatus, Queue
from klerk_django.queues import pause_queue, paused_queues, resume_queue
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
    with pytest.raises(EnqueueOptionError, match="Queue name"):
        pause_queue(name)
    with pytest.raises(CommandError, match="Queue name"):
        call_command("klerk_queue", "resume", name)


@pytest.mark.django_db
def test_command_pauses_resumes_and_lists():
    record.using(queue="mail").enqueue("x")
    call_command("klerk_queue", "pause", "mail", stdout=StringIO())
    out = StringIO()

    call_command("klerk_queue", "list", stdout=out)

    assert out.getvalue().split() == ["mail", "paused", "ready=1", "running=0"]
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
