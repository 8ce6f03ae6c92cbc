"""klerk_django: transactional commands, actions and jobs for Django."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "job": "jobs",
    "JobFunction": "jobs",
    "get_job_function": "jobs",
    "retry_jobs": "jobs",
    "cancel_jobs": "jobs",
    "periodic": "schedules",
    "action": "actions",
    "ActionFunction": "actions",
    "Command": "commands",
    "CommandResult": "commands",
    "Problem": "commands",
    "Rejected": "commands",
    "handle": "commands",
    "get_command": "commands",
    "schedule": "commands",
    "SYSTEM": "authorization",
    "ALLOW": "authorization",
    "DENY": "authorization",
    "version_of": "versions",
    "allow_side_effects": "guards",
    "current_job": "attempts",
    "get_result": "results",
    "report_progress": "attempts",
    "cancel_requested": "cancellation",
    "raise_if_cancelled": "cancellation",
    "JobCancelled": "exceptions",
    "JobTimeout": "exceptions",
    "pause_queue": "queues",
    "resume_queue": "queues",
    "forget_queue": "queues",
    "RateLimit": "limits",
    "ConcurrencyLimit": "limits",
    "JobResult": "results",
    "JobNotFound": "results",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Lazy, so that ``import klerk_django`` works before apps are loaded.
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'klerk_django' has no attribute {name!r}")
    from importlib import import_module

    module = import_module(f"klerk_django.{module_name}")
    return getattr(module, name)
