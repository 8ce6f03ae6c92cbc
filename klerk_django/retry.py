"""Retry delays: exponential backoff with a cap and jitter."""

from __future__ import annotations

import math
import random


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
    before it is ever computed in full, so attempt 10**6 is as safe as attempt
    1. Jitter then removes up to ``jitter`` of it, so retries of many jobs
    that failed together spread out and never pass the cap.
    """
    if base_seconds <= 0 or max_seconds <= 0:
        return 0.0

    delay = _capped_exponential(attempt, base_seconds, max_seconds, factor)
    spread = min(max(jitter, 0.0), 1.0)
    draw = (rng or random).random()
    return delay * (1.0 - spread * draw)


def _capped_exponential(attempt: int, base: float, cap: float, factor: float) -> float:
    exponent = max(attempt - 1, 0)
    if factor <= 1.0 or base >= cap:
        return min(base, cap)

    # The power is raised only below the exponent that reaches the cap, so
    # a huge attempt number never overflows a float or, later, a datetime.
    if exponent >= math.log(cap / base, factor):
        return cap
    return min(base * factor**exponent, cap)
