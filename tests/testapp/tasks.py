"""Django tasks that the Tasks backend tests enqueue and workers run.

``email_users`` is the example of Django's Tasks documentation, unchanged.
The signal receivers write a ``Run`` row per signal that a Klerk backend
sends, so that tests can see what a worker process sent.
"""

import os

from django.core.mail import send_mail
from django.dispatch import receiver
from django.tasks import task
from django.tasks.signals import task_finished, task_started

from klerk_django.tasks_backend import KlerkBackend

from .models import Run


@task
def email_users(emails, subject, message):
    return send_mail(
        subject=subject, message=message, from_email=None, recipient_list=emails
    )


@task
def add(a, b):
    return a + b


@task
async def add_later(a, b):
    return a + b


@task
def explode(key):
    raise ValueError(f"exploded {key}")


@task(takes_context=True)
def attempt_of(context, key):
    return {"attempt": context.attempt, "id": context.task_result.id, "key": key}


@task(takes_context=True)
def fail_first(context, key):
    if context.attempt == 1:
        raise KeyError(key)
    return context.attempt


@receiver(task_started)
def record_start(sender, task_result, **kwargs):
    _record("task_started", sender, task_result)


@receiver(task_finished)
def record_finish(sender, task_result, **kwargs):
    _record(f"task_finished:{task_result.status}", sender, task_result)


def _record(kind, sender, task_result):
    if issubclass(sender, KlerkBackend):
        Run.objects.create(
            kind=kind, key=task_result.id, pid=os.getpid(), attempt=task_result.attempts
        )
