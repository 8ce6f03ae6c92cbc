"""A clock the schedule tests set for their worker processes, in a file.

When ``KLERK_TEST_CLOCK_FILE`` names a file, schedules are checked at the
time it holds instead of the jobs' clock, and after each check the time
checked at is appended to that file's name plus ``.<pid>``, so a test
knows when every worker has seen a time.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from klerk_django import schedules


def install() -> None:
    path = os.environ.get("KLERK_TEST_CLOCK_FILE")
    if not path:
        return
    clock = Path(path)
    check = schedules.check_schedules

    def check_at_file_time(now: Any = None) -> Any:
        text = clock.read_text().strip()
        jobs = check(now=datetime.fromisoformat(text))
        with open(f"{clock}.{os.getpid()}", "a") as seen:
            seen.write(text + "\n")
        return jobs

    schedules.check_schedules = check_at_file_time
    # Workers check each second here, so each step of a test is quick.
    schedules.CHECK_SECONDS = 0.5
