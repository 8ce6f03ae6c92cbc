"""Start real ``klerk_worker`` processes against the test database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent

# Frequent heartbeats and a short lease, so that a worker passes a cancel
# request on, and notices a stuck job, within a second or two.
FAST = {
    "KLERK_LEASE_SECONDS": 6,
    "KLERK_HEARTBEAT_SECONDS": 1,
    "KLERK_RECOVERY_SECONDS": 1,
}


def worker_env(settings: dict[str, Any] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "example_project")])
    env["KLERK_TEST_DATABASE_NAME"] = str(connection.settings_dict["NAME"])
    env["KLERK_TEST_SETTINGS"] = json.dumps(settings or {})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_worker(
    *options: str, settings: dict[str, Any] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``manage.py klerk_worker`` with ``options`` in a new process."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "django", "klerk_worker", *options],
        cwd=ROOT,
        env=worker_env(settings),
        stdout=out,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
    )


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """End a worker this test started: SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(timeout)


@contextmanager
def running_worker(
    *options: str, settings: dict[str, Any] | None = None, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    process = start_worker(*options, settings=settings, log=log)
    try:
        yield process
    finally:
        stop(process)


def wait_for(
    condition: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1
) -> Any:
    """Return the first truthy value of ``condition`` or fail after timeout.

    The timeout is a safety net against a hung test, never a measurement.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {condition}")
        time.sleep(interval)
