"""The child side of a job process: set Django up, run, answer, or die.

Imported by a new process before Django is set up, so it imports nothing
that needs the app registry until ``django.setup()`` has run.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import traceback
import uuid
from multiprocessing.connection import Connection
from typing import Any

logger = logging.getLogger(__name__)


def main(theirs: Connection, payload: str) -> None:
    """Run one attempt in this new process and answer over ``theirs``."""
    # The worker decides when its jobs stop; a Ctrl-C meant for it, sent
    # to the whole process group, must not end the attempt here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A group of its own, so that the processes the job starts can be
    # ended with it.
    os.setpgrp()
    try:
        import django

        django.setup()
    except BaseException as exc:
        theirs.send_bytes(json.dumps(_error(exc)).encode())
        return
    from .cancellation import Stop

    stop = Stop()
    signal.signal(signal.SIGTERM, lambda signum, frame: _raise_stop(stop))
    watcher = threading.Thread(
        target=_watch_worker, args=(theirs, stop), name="klerk-worker-watch"
    )
    watcher.daemon = True
    watcher.start()

    answer = _run_here(json.loads(payload), stop)
    answer["noticed"] = stop.noticed
    try:
        encoded = json.dumps(answer)
    except ValueError as exc:
        # A result Python cannot write as JSON (an int past its text
        # limit): the attempt fails with the reason instead.
        encoded = json.dumps(_error(exc) | {"noticed": stop.noticed})
    theirs.send_bytes(encoded.encode())


def _run_here(data: dict[str, Any], stop: Any) -> dict[str, Any]:
    from . import arguments, attempts, calling, cancellation
    from .jobs import get_job_function

    try:
        described = data["context"]
        context = attempts.JobContext(
            **described | {"worker_id": uuid.UUID(described["worker_id"])}
        )
        attempts.bind_context(context)
        cancellation.bind(stop)
        function = get_job_function(context.name)
        args, kwargs = arguments.unpack(data["arguments"])
        result = calling.call(function.target, args, kwargs)
        return {"result": arguments.scrub(result)}
    except BaseException as exc:
        if isinstance(exc, cancellation.JobCancelled):
            stop.noticed = True
        return _error(exc)
    finally:
        _close_connections()


def _error(exc: BaseException) -> dict[str, str]:
    from . import arguments
    from .calling import described

    return {
        "error": arguments.scrub_text(described(exc)),
        "traceback": arguments.scrub_text(traceback.format_exc()),
    }


def _close_connections() -> None:
    try:
        from django.db import connections

        connections.close_all()
    except Exception:
        logger.debug("job process connections not closed cleanly", exc_info=True)


def _raise_stop(stop: Any) -> None:
    from .exceptions import JobCancelled, JobStopped, JobTimeout

    if stop.cancelled:
        raise JobCancelled("cancelled while running")
    if stop.reason:
        raise JobTimeout("ran past its time limit")
    raise JobStopped("stopped by its worker")


def _watch_worker(theirs: Connection, stop: Any) -> None:
    """Learn why the worker stops this attempt; end with the worker."""
    while True:
        try:
            reason = theirs.recv_bytes().decode()
        except (EOFError, OSError):
            # The worker is gone, or answered and closed its end: nobody
            # waits for this attempt, nor for what it started, any more.
            os.killpg(0, signal.SIGKILL)
        if reason == "cancel":
            stop.cancel()
        else:
            stop.time_out()
