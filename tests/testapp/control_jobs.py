"""Job and action functions for the tests of results, progress and async."""

import asyncio

from asgiref.sync import sync_to_async
from django.db import connection
from django.db.models import F

from klerk_django import action, current_job, job
from klerk_django.attempts import report_progress
from klerk_django.models import Job

from .models import Run


def _mark(kind: str, key: str) -> None:
    context = current_job()
    Run.objects.create(kind=kind, key=key, attempt=context.attempt if context else 0)


def _mark_elsewhere(kind: str, key: str) -> None:
    """Mark from an async function, in asgiref's thread, then close up.

    That thread outlives the call; its connection would keep the test
    database open.
    """
    try:
        _mark(kind, key)
    finally:
        connection.close()


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


@job(name="tests.async_record")
async def async_record(key: str) -> str:
    await asyncio.sleep(0)
    context = current_job()
    await sync_to_async(_mark_elsewhere)("async", f"{key}:{context.attempt}")
    return key


@job(name="tests.async_fail", max_attempts=1)
async def async_fail(key: str) -> None:
    await asyncio.sleep(0)
    raise RuntimeError(f"async failure: {key}")


@action(name="tests.async_action")
async def async_action(key: str) -> None:
    await asyncio.sleep(0)
    await sync_to_async(_mark_elsewhere)("async-action", key)


@job(name="tests.request_async_action")
def request_async_action(key: str) -> None:
    async_action.request(key)


@job(name="tests.unique_noop", unique=True)
def unique_noop(*args, **kwargs) -> None:
    """Do nothing, at most once at a time for each set of arguments."""


@job(name="tests.async_double")
async def async_double(value: int) -> int:
    await asyncio.sleep(0)
    return value * 2
