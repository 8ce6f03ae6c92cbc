"""Job processes: running one attempt in a child process the worker can kill.

A job declared with ``@job(process=True)`` runs each attempt in a new
process started with multiprocessing's "spawn" method, which is safe in the
threaded worker: the child imports Django afresh from
``DJANGO_SETTINGS_MODULE`` and opens its own database connections. The
worker's job thread passes the job's name, arguments and context as JSON
over a pipe, and gets back the JSON result or the error text and
traceback. The worker keeps renewing the lease meanwhile.

On cancellation or timeout the worker tells the child why, sends SIGTERM,
which raises JobCancelled or JobTimeout in the child's main thread so its
``finally`` blocks run, and SIGKILL after a short grace. The child watches
the pipe and ends itself when the worker's end closes, which is what
happens when the worker dies.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import asdict
from multiprocessing.connection import Connection, wait
from typing import Any

from . import job_child
from .cancellation import Stop
from .exceptions import JobCancelled, JobStopped, JobTimeout, KlerkError

logger = logging.getLogger(__name__)

# How often the job thread looks at the stop flag while the child runs.
POLL_SECONDS = 0.2
# How long a child may take to end after SIGTERM before SIGKILL.
KILL_GRACE_SECONDS = 3.0

# The job processes this worker runs, so that it can end them all before
# it hands their jobs back when it stops.
_children: set[Any] = set()
_children_lock = threading.Lock()


class JobProcessFailed(KlerkError, RuntimeError):
    """The job raised in its child process, or the process died."""

    def __init__(self, error: str, text: str = "") -> None:
        super().__init__(error)
        self.error = error
        self.text = text


def call(context: Any, arguments_: Any, timeout: float | None, stop: Stop) -> Any:
    """Run the attempt described by ``context`` in a child; return its result.

    Raises JobProcessFailed with the child's error text, JobCancelled or
    JobTimeout after stopping the child.
    """
    spawn = multiprocessing.get_context("spawn")
    ours, theirs = spawn.Pipe()
    described = asdict(context) | {"worker_id": str(context.worker_id)}
    payload = json.dumps({"context": described, "arguments": arguments_})
    child = spawn.Process(
        target=job_child.main,
        args=(theirs, payload),
        name=f"klerk-job-{context.job_id}",
        daemon=True,
    )
    with _children_lock:
        # Checked under the lock: end_all either sees this child or the
        # hand-back request was made before it started.
        if stop.handed_back:
            raise JobStopped("its worker is stopping")
        child.start()
        _children.add(child)
    theirs.close()
    try:
        return _wait(child, ours, timeout, stop)
    finally:
        # Closing our end tells a child that answered to exit.
        ours.close()
        _end(child, at_once=False)
        with _children_lock:
            _children.discard(child)


def end_all(at_once: bool) -> int:
    """End this worker's job processes; return how many were running.

    Each gets SIGTERM, so that its ``finally`` blocks run, and SIGKILL if
    it outlives the grace; ``at_once`` sends SIGKILL straight away. The
    job threads that waited for them record nothing if their stop flags
    were handed back first.
    """
    with _children_lock:
        children = [child for child in _children if child.is_alive()]
    for child in children:
        if at_once:
            child.kill()
        else:
            child.terminate()
    deadline = time.monotonic() + KILL_GRACE_SECONDS
    for child in children:
        child.join(max(deadline - time.monotonic(), 0.0))
        if child.is_alive():
            child.kill()
        child.join()
        _end_group(child.pid)
    if children:
        logger.warning("job processes ended on stop count=%s", len(children))
    return len(children)


def _wait(child: Any, ours: Connection, timeout: float | None, stop: Stop) -> Any:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        ready = wait([ours, child.sentinel], POLL_SECONDS)
        if ours in ready or ours.poll():
            return _answer(ours, child, stop)
        if child.sentinel in ready:
            raise _died(child)
        if stop.cancelled:
            _stop(child, ours, "cancel")
            raise JobCancelled("cancelled while running")
        if deadline is not None and time.monotonic() >= deadline:
            stop.time_out()
            _stop(child, ours, "timeout")
            raise JobTimeout(f"ran past its {timeout:g} s time limit")


def _answer(ours: Connection, child: Any, stop: Stop) -> Any:
    try:
        answer = json.loads(ours.recv_bytes())
    except EOFError:
        raise _died(child) from None
    if answer.get("noticed"):
        stop.cancel()
        stop.noticed = True
    if "error" in answer:
        raise JobProcessFailed(answer["error"], answer["traceback"])
    return answer["result"]


def _died(child: Any) -> JobProcessFailed:
    # A process closes its files, the sentinel among them, a moment before
    # its exit code can be read.
    child.join(KILL_GRACE_SECONDS)
    return JobProcessFailed(
        f"JobProcessDied: the job's process ended with exit code "
        f"{child.exitcode} before it answered"
    )


def _stop(child: Any, ours: Connection, reason: str) -> None:
    try:
        ours.send_bytes(reason.encode())
    except OSError:
        pass  # the child has just ended
    logger.warning(
        "job process stopped reason=%s pid=%s name=%s", reason, child.pid, child.name
    )
    _end(child, at_once=True)


def _end(child: Any, at_once: bool) -> None:
    """End ``child``: SIGTERM, then SIGKILL if it outlives the grace."""
    if not at_once:
        child.join(KILL_GRACE_SECONDS)
    if child.is_alive():
        child.terminate()
        child.join(KILL_GRACE_SECONDS)
    if child.is_alive():
        child.kill()
    child.join()
    _end_group(child.pid)


def _end_group(pid: int) -> None:
    """Kill what the job process started: its process group, led by it."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing of it is left
