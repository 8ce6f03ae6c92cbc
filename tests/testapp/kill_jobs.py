"""Jobs that let a test stop a worker at a chosen point of an attempt."""

import time
from pathlib import Path

from klerk_django import job

from .jobs import _mark


@job(name="tests.gated", backoff_seconds=0.0)
def gated(key: str, gate: str) -> str:
    """Wait for the file ``gate`` before doing anything else."""
    # Bounded, so that a worker nobody kills cannot wait for ever.
    deadline = time.monotonic() + 300
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    _mark("gated", key)
    return key


@job(name="tests.finish", backoff_seconds=0.0)
def finish(key: str) -> str:
    """Commit a marker row, then return at once into the outcome write."""
    _mark("finish", key)
    return key
