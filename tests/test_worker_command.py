"""The ``klerk_worker`` management command: options, exit codes, signals."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from klerk_django.models import Worker as WorkerRecord
from tests.workers import ROOT, start_worker, stop, worker_env


@pytest.mark.django_db(transaction=True)
def test_burst_worker_exits_zero_when_nothing_is_ready():
    process = start_worker("--burst")
    try:
        assert process.wait(60) == 0
    finally:
        stop(process)

    record = WorkerRecord.objects.get()
    assert record.stopped_at is not None


SIGNAL_WHILE_LOCKED = textwrap.dedent(
    """
    import signal
    import django

    django.setup()
    from klerk_django.worker import Worker, WorkerOptions

    worker = Worker(WorkerOptions())
    worker.stop_on_signals()
    # A signal may land while the main loop holds the wake-up's lock.
    with worker.wake._cond:
        signal.raise_signal(signal.SIGTERM)
    print("stopping" if worker.stopping.wait(30) else "running")
    """
)


@pytest.mark.django_db
def test_stop_signal_is_safe_while_the_main_loop_holds_a_lock():
    finished = subprocess.run(
        [sys.executable, "-c", SIGNAL_WHILE_LOCKED],
        cwd=ROOT,
        env=worker_env(),
        capture_output=True,
        timeout=60,
    )

    assert finished.stdout.strip() == b"stopping", finished.stderr
