"""Jobs that run until they are cancelled or stopped by their time limit."""

import asyncio
import os
import signal
import subprocess
import sys
import time

from asgiref.sync import sync_to_async
from django.db import transaction

from klerk_django import current_job, job, raise_if_cancelled, report_progress

from .control_jobs import _mark_elsewhere
from .jobs import _mark
from .models import Run

# Bounded, so that a worker nobody stops cannot run them for ever.
LONGEST = 300.0


@job(name="tests.cooperative", backoff_seconds=0.0)
def cooperative(key: str) -> str:
    """Run until cancelled, checking the flag between small steps."""
    _mark("cooperative", key)
    deadline = time.monotonic() + LONGEST
    while time.monotonic() < deadline:
        raise_if_cancelled()
        time.sleep(0.02)
    return "not cancelled"


@job(name="tests.stubborn", process=True, backoff_seconds=0.0)
def stubborn(key: str) -> str:
    """Ignore the cancellation and SIGTERM: only SIGKILL ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _mark("stubborn", key)
    deadline = time.monotonic() + LONGEST
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return "not stopped"


@job(name="tests.busy", max_attempts=2, backoff_seconds=0.0, timeout=1)
def busy(key: str) -> str:
    """Keep running Python code past any short time limit."""
    _mark("busy", key)
    deadline = time.monotonic() + LONGEST
    while time.monotonic() < deadline:
        time.sleep(0.02)
    _mark("busy-end", key)
    return "ran to the end"


@job(name="tests.sleeper", process=True, backoff_seconds=0.0, max_attempts=1)
def sleeper(key: str) -> str:
    """Block in one long sleep, which only a signal can cut short."""
    _mark("sleeper", key)
    time.sleep(LONGEST)
    _mark("sleeper-end", key)
    return "slept"


@job(name="tests.async_sleeper", backoff_seconds=0.0, max_attempts=1)
async def async_sleeper(key: str) -> str:
    """Await a long sleep, which cancelling the task ends."""
    await sync_to_async(_mark_elsewhere, thread_sensitive=False)("async_sleeper", key)
    await asyncio.sleep(LONGEST)
    return "slept"


@job(name="tests.in_process", process=True, backoff_seconds=0.0, max_attempts=1)
def in_process(key: str, fail: bool = False) -> dict:
    """Report progress and return, or raise, from a child process."""
    _mark("in_process", key)
    report_progress({"pid": os.getpid()})
    if fail:
        raise ValueError(f"failing in the child: {key}")
    return {"key": key, "pid": os.getpid()}


@job(name="tests.swallower", max_attempts=1, timeout=1)
def swallower(key: str) -> str:
    """Swallow every Exception in its loop, as careless code does."""
    _mark("swallower", key)
    deadline = time.monotonic() + LONGEST
    while time.monotonic() < deadline:
        try:
            time.sleep(0.02)
        except Exception:
            _mark("swallowed", key)
    return "ran to the end"


@job(name="tests.blocked", max_attempts=1, timeout=1)
def blocked(key: str, fifo: str) -> str:
    """Block in C, opening a FIFO, until the test opens its other end."""
    _mark("blocked", key)
    with open(fifo, "rb") as pipe:
        pipe.read()
    _mark("blocked-end", key)
    return "unblocked"


@job(name="tests.atomic_writer", max_attempts=1, backoff_seconds=0.0)
def atomic_writer(key: str) -> str:
    """Write in short transactions until a time limit strikes one of them."""
    deadline = time.monotonic() + LONGEST
    while time.monotonic() < deadline:
        with transaction.atomic():
            Run.objects.create(kind="atomic", key=key)
    return "ran to the end"


@job(name="tests.short", max_attempts=3, backoff_seconds=0.0)
def short(key: str, seconds: float) -> str:
    """Busy itself for about ``seconds``, then write its mark and return."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    _mark("short", key)
    return key


@job(name="tests.ticker", process=True, backoff_seconds=0.0)
def ticker(key: str) -> str:
    """Ignore SIGTERM and write a tick every few milliseconds until killed."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    deadline = time.monotonic() + LONGEST
    while time.monotonic() < deadline:
        _mark("tick", key)
        time.sleep(0.005)
    return "not stopped"


class Unprintable(Exception):
    """An exception whose text cannot be made, nor the exception pickled."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = __import__("threading").Lock()

    def __str__(self) -> str:
        raise RuntimeError("no text for this exception")


@job(name="tests.unprintable", max_attempts=1)
def unprintable(key: str) -> None:
    _mark("unprintable", key)
    raise Unprintable()


@job(name="tests.unprintable_child", process=True, max_attempts=1)
def unprintable_child(key: str) -> None:
    _mark("unprintable_child", key)
    raise Unprintable()


@job(name="tests.forker", process=True, backoff_seconds=0.0)
def forker(key: str) -> str:
    """Start a grandchild process, note its pid, and wait."""
    grandchild = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"]
    )
    context = current_job()
    Run.objects.create(
        kind="grandchild", key=key, pid=grandchild.pid, attempt=context.attempt
    )
    deadline = time.monotonic() + LONGEST
    while time.monotonic() < deadline:
        raise_if_cancelled()
        time.sleep(0.05)
    return "not stopped"


@job(name="tests.giant_number", max_attempts=1)
def giant_number(key: str) -> int:
    """Return an int too long for Python's own int-to-text conversion."""
    _mark("giant_number", key)
    return 10**5000


@job(name="tests.giant_number_child", process=True, max_attempts=1)
def giant_number_child(key: str) -> int:
    _mark("giant_number_child", key)
    return 10**5000


@job(name="tests.vanishing", process=True, max_attempts=1)
def vanishing(key: str) -> None:
    """End the child process without a word."""
    _mark("vanishing", key)
    os._exit(0)


@job(name="tests.chatty", process=True, max_attempts=1)
def chatty(key: str, size: int) -> str:
    """Write much to stdout and stderr, and return a large result."""
    line = "x" * 1023 + "\n"
    for _ in range(size // 1024):
        sys.stdout.write(line)
        sys.stderr.write(line)
    _mark("chatty", key)
    return "y" * size


@job(name="tests.async_stubborn", backoff_seconds=0.0, max_attempts=1)
async def async_stubborn(key: str) -> str:
    """Shrug off the task's cancellation and keep the event loop busy."""
    deadline = time.monotonic() + LONGEST
    while time.monotonic() < deadline:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            pass
        time.sleep(0.01)
    return "ran to the end"
