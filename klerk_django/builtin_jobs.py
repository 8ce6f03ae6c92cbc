"""Jobs that klerk_django itself registers in every process."""

from __future__ import annotations

from typing import Any

from . import commands  # noqa: F401  (registers "klerk.command")
from .jobs import job


@job(name="klerk.noop", max_attempts=1)
def noop(*args: Any, **kwargs: Any) -> None:
    """Do nothing: for health checks of workers and for benchmarks."""
