"""Job functions that worker processes started by the tests can run."""

import os
import time

from django.db import transaction

from klerk_django import current_job, job

from .models import Run


def _mark(kind: str, key: str) -> None:
    context = current_job()
    with transaction.atomic():
        Run.objects.create(
            kind=kind,
            key=key,
            pid=os.getpid(),
            attempt=context.attempt if context else 0,
        )


@job(name="tests.record")
def record(key: str) -> str:
    _mark("record", key)
    return key


@job(name="tests.sleep")
def sleep(key: str, seconds: float) -> None:
    _mark("sleep-start", key)
    time.sleep(seconds)
    _mark("sleep-end", key)


@job(name="tests.hang", backoff_seconds=0.0)
def hang(key: str, seconds: float) -> None:
    """Sleep on the first attempt only, so that a rerun ends at once."""
    context = current_job()
    _mark("hang", key)
    if context is not None and context.attempt == 1:
        time.sleep(seconds)


@job(name="tests.fail", max_attempts=3, backoff_seconds=0.0)
def fail(key: str) -> None:
    _mark("fail", key)
    raise RuntimeError(f"failing on purpose: {key}")


@job(name="tests.fail_until", backoff_seconds=0.0)
def fail_until(key: str, succeed_on: int) -> int:
    _mark("fail_until", key)
    context = current_job()
    if context is None or context.attempt < succeed_on:
        raise RuntimeError(f"not yet: {key}")
    return context.attempt


@job(name="tests.crash", max_attempts=2, backoff_seconds=0.0)
def crash(key: str) -> None:
    """Kill the whole worker process, as the kernel's OOM killer would."""
    _mark("crash", key)
    os.kill(os.getpid(), 9)
