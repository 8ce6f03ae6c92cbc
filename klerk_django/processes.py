"""Worker processes started by klerk's own management commands.

The benchmark and the chaos run start ``klerk_worker`` in a new process
with this process's settings and import path, and end it again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping


def start_worker(
    *options: str, extra_env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``manage.py klerk_worker`` with ``options`` in a new process."""
    env = dict(os.environ, **(extra_env or {}))
    # The new process must import what this one can, manage.py's own
    # additions to sys.path included.
    env["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
    return subprocess.Popen(
        [sys.executable, "-m", "django", "klerk_worker", *options],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def end_worker(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Stop a worker with SIGTERM; SIGKILL it if it outlasts ``timeout``."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)
