"""Retry delays: exponential backoff with a cap and jitter."""

from __future__ import annotations

import math
import random

# The longest retry delay, whatever a job row or a setting says, so that
# "now" plus a delay is always a time every database and datetime can hold.
MAX_DELAY_SECONDS = 366 * 24 * 3600.0


def backoff_seconds(
    attempt: int,
    base_seconds: float,
    max_seconds: float,
    factor: float = 3.0,
    jitter: float = 0.2,
    rng: random.Random | None = None,
) -> float:
    """Return the delay before the attempt after ``attempt`` (from 1).

    The delay is ``base * factor ** (attempt - 1)``, capped at ``max_seconds``
    (and at ``MAX_DELAY_SECONDS``) before it is ever computed in full, so
    attempt 10**6 is as safe as attempt 1. Jitter then removes up to
    ``jitter`` of it, so retries of many jobs that failed together spread
    out and never pass the cap. Values that are not finite numbers are
    clamped, never raised on: this runs while a failure is being recorded.
    """
    base = _clamp(base_seconds, 0.0, MAX_DELAY_SECONDS)
    cap = _clamp(max_seconds, 0.0, MAX_DELAY_SECONDS)
    if base <= 0 or cap <= 0:
        return 0.0

    delay = _capped_exponential(attempt, base, cap, factor)
    spread = _clamp(jitter, 0.0, 1.0)
    draw = (rng or random).random()
    return delay * (1.0 - spread * draw)


def _clamp(value: float, low: float, high: float) -> float:
    if math.isnan(value):
        return low
    return min(max(value, low), high)


def _capped_exponential(attempt: int, base: float, cap: float, factor: float) -> float:
    exponent = max(attempt - 1, 0)
    if exponent == 0 or not factor > 1.0 or base >= cap:
        return min(base, cap)

    # The power is raised only below the exponent that reaches the cap, so
    # a huge attempt number never overflows a float or, later, a datetime.
    if math.isinf(factor) or exponent >= math.log(cap / base, factor):
        return cap
    return min(base * factor**exponent, cap)
