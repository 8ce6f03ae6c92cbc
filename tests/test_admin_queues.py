"""Pausing and resuming queues from the admin's queues page."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from klerk_django.models import Queue
from tests.testapp.jobs import record

QUEUES = reverse("admin:klerk_django_job_queues")
PAUSE = reverse("admin:klerk_django_job_pause_queue")
RESUME = reverse("admin:klerk_django_job_resume_queue")


def _staff(client, *codenames):
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    for codename in ("view_job", *codenames):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(user)
    return user


@pytest.mark.django_db
def test_an_operator_pauses_and_resumes_a_queue(client):
    _staff(client, "change_queue")
    record.enqueue("waiting")

    page = client.get(QUEUES)
    assert page.status_code == 200 and b"Pause" in page.content

    paused = client.post(PAUSE, {"queue": "default"}, follow=True)
    assert Queue.objects.get(name="default").paused
    assert b"paused" in paused.content and b"Resume" in paused.content

    client.post(RESUME, {"queue": "default"})
    assert not Queue.objects.get(name="default").paused


@pytest.mark.django_db
def test_a_viewer_sees_the_state_but_cannot_switch(client):
    _staff(client)
    record.enqueue("waiting")

    page = client.get(QUEUES)
    refused = client.post(PAUSE, {"queue": "default"})

    assert b"Pause" not in page.content and b"active" in page.content
    assert refused.status_code == 403
    assert not Queue.objects.filter(paused=True).exists()


@pytest.mark.django_db
def test_get_switches_nothing_and_a_bad_name_is_reported(client):
    _staff(client, "change_queue")

    assert client.get(PAUSE, {"queue": "default"}).status_code == 405
    assert not Queue.objects.exists()

    answer = client.post(PAUSE, {"queue": "bad name!"}, follow=True)
    assert b"Queue name must be" in answer.content
    assert not Queue.objects.exists()


@pytest.mark.django_db
def test_resuming_a_queue_that_is_not_paused_says_so(client):
    _staff(client, "change_queue")

    answer = client.post(RESUME, {"queue": "never-paused"}, follow=True)

    assert b"Queue &#x27;never-paused&#x27; is not paused." in answer.content
    assert not Queue.objects.exists()
