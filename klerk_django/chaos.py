"""The chaos job: a job that records overlapping or repeated runs of itself.

It is registered only where it is used: in the process of the chaos run,
which lives in ``chaos_run.py``, and in the workers that run starts, which
find the chaos folder in their environment (see ``apps.py``). While it
runs, the job holds a marker file, created exclusively, in a folder shared
by all processes of the chaos run. A run that finds a live marker of
another process overlaps it; a run of a job whose success is already stored
repeats a finished job. Both count as duplicated.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import database
from .attempts import current_job
from .jobs import job
from .models import Attempt

QUEUE = "klerk-chaos"
FOLDER_VARIABLE = "KLERK_CHAOS_DIR"


@job(name="klerk.chaos", queue=QUEUE, max_attempts=25, backoff_seconds=0.2)
def chaos_job(key: int, seconds: float, fail_first: bool) -> None:
    """Sleep a little, maybe fail once; record overlapping or repeated runs."""
    folder = Path(os.environ.get(FOLDER_VARIABLE, "/nonexistent"))
    if not folder.is_dir():
        return
    marker = folder / f"{key}.running"

    _enter(folder, key, marker)
    try:
        time.sleep(seconds)
        context = current_job()
        if fail_first and context is not None and context.attempt == 1:
            raise RuntimeError(f"chaos failure key={key}")
    finally:
        marker.unlink(missing_ok=True)


def _enter(folder: Path, key: int, marker: Path) -> None:
    if _success_recorded():
        _duplicate(folder, key, "ran again after its success was recorded")
    try:
        descriptor = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        holder = _pid_in(marker)
        if holder and holder != os.getpid() and _alive(holder):
            _duplicate(folder, key, f"overlaps a live run in pid {holder}")
        marker.write_text(str(os.getpid()))
        return
    with os.fdopen(descriptor, "w") as handle_:
        handle_.write(str(os.getpid()))


def _success_recorded() -> bool:
    # A run after the job body finished but before its success was stored
    # (the worker died in between) is the at-least-once promise at work;
    # only a run after a stored success is a duplicate.
    context = current_job()
    if context is None:
        return False
    attempts = Attempt.objects.using(database.alias())
    return attempts.filter(job_id=context.job_id, outcome="succeeded").exists()


def _duplicate(folder: Path, key: int, why: str) -> None:
    with open(folder / "duplicates.log", "a") as log:
        log.write(f"{key} {why}\n")


def _pid_in(marker: Path) -> int:
    try:
        return int(marker.read_text() or 0)
    except (OSError, ValueError):
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed worker that its parent has not reaped yet is a zombie: it
    # runs nothing any more.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True
