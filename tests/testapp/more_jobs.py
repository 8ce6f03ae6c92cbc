"""Job functions for the tests of enqueueing, retries and time zones."""

from klerk_django import current_job, job

from .models import Run


def _mark(kind: str, key: str) -> None:
    context = current_job()
    Run.objects.create(kind=kind, key=key, attempt=context.attempt if context else 0)


@job(name="tests.noop")
def noop(*args, **kwargs) -> None:
    """Do nothing; tests enqueue it to look at the stored job."""


@job(name="tests.explode", backoff_seconds=1.0, backoff_max_seconds=60.0)
def explode(key: str) -> None:
    _mark("explode", key)
    raise RuntimeError(f"exploding on purpose: {key}")


@job(name="tests.once", max_attempts=1, backoff_seconds=0.0)
def once(key: str) -> None:
    _mark("once", key)
    raise RuntimeError(f"failing the only attempt: {key}")


@job(name="tests.four_times", max_attempts=4, backoff_seconds=0.0)
def four_times(key: str) -> None:
    _mark("four_times", key)
    raise RuntimeError(f"failing every attempt: {key}")


@job(name="tests.odd_result")
def odd_result() -> dict:
    """Return what no database stores as it is."""
    return {"nul": "a\x00b", "escaped": "\\u0000", "nan": float("nan"), "key\x00": 1}


@job(name="tests.odd_error", max_attempts=1)
def odd_error() -> None:
    raise RuntimeError("bad \x00 byte \ud800")
