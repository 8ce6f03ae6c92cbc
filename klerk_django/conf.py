"""Settings of klerk_django and their defaults, read lazily.

Every setting is a flat ``KLERK_*`` name in the project's settings; durations
carry their unit in the name. Nothing here is read at import time, so tests
may override settings freely.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings

DEFAULTS: dict[str, Any] = {
    # Database alias that holds the job tables. It must be the alias the
    # data lives in, or jobs stop being atomic with that data.
    "KLERK_DATABASE": "default",
    "KLERK_DEFAULT_QUEUE": "default",
    # Total attempts of a job, the first run included: 4 means 3 retries.
    "KLERK_MAX_ATTEMPTS": 4,
    # Days a finished job or action is kept; workers delete older ones once
    # an hour. None keeps them forever.
    "KLERK_RETENTION_DAYS": 30,
    "KLERK_BACKOFF_BASE_SECONDS": 3.0,
    "KLERK_BACKOFF_FACTOR": 3.0,
    "KLERK_BACKOFF_MAX_SECONDS": 3600.0,
    # Fraction of a retry delay that is randomised, 0 to 1.
    "KLERK_BACKOFF_JITTER": 0.2,
    "KLERK_LEASE_SECONDS": 60.0,
    "KLERK_HEARTBEAT_SECONDS": 10.0,
    "KLERK_RECOVERY_SECONDS": 10.0,
    "KLERK_POLL_SECONDS": 1.0,
    "KLERK_SHUTDOWN_GRACE_SECONDS": 30.0,
    "KLERK_WORKER_CONCURRENCY": 4,
    # PostgreSQL only: wake workers with LISTEN/NOTIFY; polling stays on.
    "KLERK_LISTEN": True,
    "KLERK_MAX_ARGUMENTS_BYTES": 4 * 1024 * 1024,
    # "thread": actions run on a thread pool after commit; "inline": they
    # run in the committing thread, right after commit.
    "KLERK_ACTIONS_MODE": "thread",
    "KLERK_ACTION_THREADS": 4,
    # Pending actions older than this are run by a worker: their process
    # ended between commit and run.
    "KLERK_ACTION_ORPHAN_SECONDS": 60.0,
    "KLERK_AUTODISCOVER_MODULES": ("jobs", "actions", "commands"),
    # Periodic schedules by name: {"job": ..., "cron": ..., "timezone": ...,
    # "args": [...], "kwargs": {...}}; see docs/schedules.md.
    "KLERK_SCHEDULES": {},
    # Limits per queue: {"mail": {"rate_limit": (10, 60),
    # "concurrency_limit": 2}}; see docs/rate_limits.md.
    "KLERK_QUEUES": {},
    # The admin shows the values of JSON keys that contain one of these,
    # ignoring case, as "********", at any depth.
    "KLERK_ADMIN_MASKED_KEYS": (
        "password",
        "token",
        "secret",
        "api_key",
        "authorization",
    ),
    # While a command runs, refuse mail and direct calls of job and action
    # functions: the command's transaction may still roll back.
    "KLERK_GUARD_SIDE_EFFECTS": True,
    # Command inputs whose name contains one of these, ignoring case, are
    # stored in command records as "********".
    "KLERK_REDACTED_INPUTS": ("password", "secret", "token", "api_key"),
}


class Settings:
    """Read ``KLERK_*`` settings with their defaults, on every access."""

    def __getattr__(self, name: str) -> Any:
        key = f"KLERK_{name}"
        if key not in DEFAULTS:
            raise AttributeError(f"Unknown klerk_django setting {key!r}.")
        return getattr(django_settings, key, DEFAULTS[key])


settings = Settings()
