"""Retry delays: capped before they are computed, jittered within bounds."""

from __future__ import annotations

import math
import random
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from klerk_django import attempts, leases, retry
from klerk_django.models import Attempt, Job, JobStatus
from tests.testapp.more_jobs import explode

WORKER = uuid.UUID(int=3)
HUGE_ATTEMPTS = [1, 16, 64, 1025, 10**6]


class Draw(random.Random):
    """A random source that always draws ``value``."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize("attempt", HUGE_ATTEMPTS)
@pytest.mark.parametrize("base, cap", [(3.0, 3600.0), (0.5, 60.0), (1e-6, 1e7)])
def test_delay_is_finite_and_capped_for_any_attempt(attempt, base, cap):
    delay = retry.backoff_seconds(attempt, base, cap, factor=3.0, jitter=0.0)

    assert math.isfinite(delay)
    assert 0 < delay <= cap


def test_delay_grows_by_the_factor_until_the_cap():
    delays = [retry.backoff_seconds(n, 2.0, 100.0, jitter=0.0) for n in range(1, 7)]

    assert delays == [2.0, 6.0, 18.0, 54.0, 100.0, 100.0]


@pytest.mark.parametrize("jitter", [0.0, 0.2, 0.5, 1.0])
def test_jitter_removes_at_most_its_share(jitter):
    full = retry.backoff_seconds(3, 2.0, 100.0, jitter=0.0)
    rng = random.Random(7)

    delays = [retry.backoff_seconds(3, 2.0, 100.0, jitter=jitter, rng=rng)]
    delays += [
        retry.backoff_seconds(3, 2.0, 100.0, jitter=jitter, rng=Draw(draw))
        for draw in (0.0, 0.5, 0.999999)
    ]

    assert all(full * (1 - jitter) - 1e-9 <= delay <= full for delay in delays)
    assert delays[1] == full


@pytest.mark.parametrize("jitter", [-1.0, 2.0, float("nan"), float("inf")])
def test_jitter_out_of_range_is_clamped(jitter):
    delay = retry.backoff_seconds(2, 10.0, 100.0, jitter=jitter, rng=Draw(0.5))

    assert 0 <= delay <= 30.0


@pytest.mark.parametrize("base, cap", [(0, 60.0), (3.0, 0), (-1.0, 60.0), (3.0, -5)])
def test_zero_or_negative_backoff_means_no_delay(base, cap):
    assert retry.backoff_seconds(5, base, cap) == 0.0


@pytest.mark.parametrize(
    "base, cap, factor",
    [
        (float("nan"), 60.0, 3.0),
        (3.0, float("nan"), 3.0),
        (3.0, float("inf"), 3.0),
        (float("inf"), float("inf"), 3.0),
        (1e300, 1e300, 3.0),
        (3.0, 60.0, float("nan")),
        (3.0, 60.0, float("inf")),
        (3.0, 1e300, 1e300),
    ],
)
@pytest.mark.parametrize("attempt", HUGE_ATTEMPTS)
def test_any_numbers_give_a_delay_a_clock_can_add(attempt, base, cap, factor):
    delay = retry.backoff_seconds(attempt, base, cap, factor=factor, jitter=0.2)

    assert 0 <= delay <= retry.MAX_DELAY_SECONDS
    assert timezone.now() + timedelta(seconds=delay)


def test_first_attempt_waits_the_base_even_with_an_infinite_factor():
    assert retry.backoff_seconds(1, 3.0, 60.0, factor=float("inf"), jitter=0) == 3.0


def fail_on_attempt(attempt: int, **row: float) -> Job:
    job = explode.enqueue(f"attempt {attempt}")
    Job.objects.filter(pk=job.pk).update(
        attempts=attempt - 1, max_attempts=attempt + 5, **row
    )
    [claimed] = leases.claim(WORKER, None, 1)
    assert claimed.attempt == attempt

    assert attempts.run(claimed, WORKER) == JobStatus.READY
    job.refresh_from_db()
    return job


@pytest.mark.django_db
@pytest.mark.parametrize("attempt", HUGE_ATTEMPTS)
def test_failed_attempt_is_rescheduled_within_the_cap(attempt):
    before = timezone.now()

    job = fail_on_attempt(attempt)

    after = timezone.now()
    assert job.status == JobStatus.READY
    assert job.lease_expires_at is None
    assert before < job.run_after <= after + timedelta(seconds=60)
    assert Attempt.objects.get(job=job).number == attempt


@pytest.mark.django_db
def test_retry_of_a_row_with_absurd_backoff_stays_on_the_calendar():
    job = fail_on_attempt(10**6, backoff_base_seconds=1e300, backoff_max_seconds=1e308)

    limit = timezone.now() + timedelta(seconds=retry.MAX_DELAY_SECONDS)
    assert job.status == JobStatus.READY
    assert job.run_after <= limit
