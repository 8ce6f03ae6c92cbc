"""Job functions under rate and concurrency limits, for the limit tests."""

import time
from pathlib import Path

from klerk_django import current_job, job
from klerk_django.limits import ConcurrencyLimit, RateLimit

from .jobs import _mark


def by_customer(customer: str, *args: object, **kwargs: object) -> str:
    return customer


def odd_key(customer: str) -> str:
    """Raise or return a non-string for some customers, as bad keys do."""
    if customer == "boom":
        raise KeyError(customer)
    if customer == "number":
        return 7  # type: ignore[return-value]
    return customer


@job(name="tests.limits.rated", rate_limit=RateLimit(2, per=1.0, key=by_customer))
def rated(customer: str, key: str) -> str:
    _mark("rated", key)
    return key


@job(name="tests.limits.rated_wide", rate_limit=RateLimit(2, per=60))
def rated_wide(key: str) -> str:
    _mark("rated-wide", key)
    return key


@job(
    name="tests.limits.paired",
    concurrency_limit=ConcurrencyLimit(2, key=by_customer),
)
def paired(customer: str, key: str, seconds: float) -> str:
    _mark("paired-start", key)
    time.sleep(seconds)
    _mark("paired-end", key)
    return key


@job(
    name="tests.limits.alone",
    backoff_seconds=0.0,
    concurrency_limit=ConcurrencyLimit(1, key=by_customer),
)
def alone(customer: str, key: str, gate: str) -> str:
    """Wait for the file ``gate``, one job per customer at a time."""
    # Bounded, so that a worker nobody kills cannot wait for ever.
    deadline = time.monotonic() + 300
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    _mark("alone", key)
    return key


@job(name="tests.limits.odd", rate_limit=RateLimit(5, per=10, key=odd_key))
def odd(customer: str) -> str:
    return customer


@job(
    name="tests.limits.flaky",
    max_attempts=3,
    backoff_seconds=0.0,
    rate_limit=RateLimit(3, per=1.0, key=by_customer),
    concurrency_limit=ConcurrencyLimit(1, key=by_customer),
)
def flaky(customer: str, key: str) -> str:
    """Fail the first attempt, so that the retry goes through the limits."""
    _mark("flaky-start", key)
    context = current_job()
    _mark("flaky-end", key)
    if context is not None and context.attempt == 1:
        raise RuntimeError(f"first attempt of {key} fails")
    return key
