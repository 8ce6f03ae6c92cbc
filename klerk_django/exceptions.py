"""Exceptions of klerk_django; each carries its data as attributes."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured


class KlerkError(Exception):
    """Root of klerk_django's errors; never raised itself."""


class ArgumentError(KlerkError, TypeError):
    """Arguments of a job or action that cannot be stored as JSON."""

    def __init__(self, message: str, path: str = "", value: Any = None) -> None:
        super().__init__(message)
        self.path = path
        self.value = value


class EnqueueOptionError(KlerkError, ValueError):
    """A scheduling option (queue, priority, run time, attempts) is invalid."""

    def __init__(self, message: str, option: str, value: Any) -> None:
        super().__init__(message)
        self.option = option
        self.value = value


class JobIdError(KlerkError, ValueError):
    """A job id given to retry or cancel jobs that is no integer."""

    def __init__(self, value: Any) -> None:
        super().__init__(f"job ids must be integers, got {value!r}.")
        self.value = value


class QueueNameError(KlerkError, ValueError):
    """A queue name to pause, resume or forget that no queue may have."""

    def __init__(self, name: Any) -> None:
        super().__init__(
            f"Queue name must be 1 to 100 letters, digits or _.:-, got {name!r}."
        )
        self.name = name


class UnknownJob(KlerkError, LookupError):
    """A job name that no registered job function carries."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"No job function is registered under the name {name!r}. It may "
            "have been renamed or removed since the job was enqueued, or its "
            "module is not imported by this process: klerk_django imports the "
            "modules named in KLERK_AUTODISCOVER_MODULES (jobs, actions, "
            "commands) of every installed app."
        )
        self.name = name


class UnknownAction(KlerkError, LookupError):
    """An action name that no registered action function carries."""

    def __init__(self, name: str) -> None:
        super().__init__(f"No action is registered under the name {name!r}.")
        self.name = name


class UnknownCommand(KlerkError, LookupError):
    """A command name that no registered command class carries."""

    def __init__(self, name: str) -> None:
        super().__init__(f"No command is registered under the name {name!r}.")
        self.name = name


class RegistryConflict(KlerkError, ValueError):
    """Two different callables registered under one name."""

    def __init__(self, kind: str, name: str, existing: str = "", new: str = "") -> None:
        holders = f" ({existing} and {new})" if existing and new else ""
        super().__init__(
            f"Two different {kind}s are registered under the name "
            f"{name!r}{holders}; give one of them another name."
        )
        self.kind = kind
        self.name = name


class SettingsError(ImproperlyConfigured):
    """A ``KLERK_*`` setting with a value klerk_django cannot use."""


class CronError(KlerkError, ValueError):
    """A cron expression that cannot be parsed or names no real time."""

    def __init__(self, expression: Any, problem: str, field: str = "") -> None:
        where = f"its {field} field " if field else ""
        super().__init__(f"The cron expression {expression!r}: {where}{problem}.")
        self.expression = expression
        self.field = field
        self.problem = problem


class ScheduleError(KlerkError, ValueError):
    """A periodic schedule declared with an unusable name, zone or call."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"The schedule {name!r} {problem}.")
        self.name = name
        self.problem = problem


class LimitError(KlerkError, ValueError):
    """A rate or concurrency limit declared wrong, or a key it cannot use."""


class SideEffectInCommand(KlerkError, RuntimeError):
    """A side effect (a mail, a direct job call) tried inside a command."""

    def __init__(self, message: str, command: str) -> None:
        super().__init__(message)
        self.command = command


class ScheduledCommandFailed(KlerkError, RuntimeError):
    """A scheduled command that failed or was still running elsewhere."""

    def __init__(self, name: str, outcome: str, record_id: Any) -> None:
        super().__init__(
            f"The scheduled command {name!r} ended {outcome!r} (record "
            f"{record_id}); the job will run it again if attempts are left."
        )
        self.name = name
        self.outcome = outcome
        self.record_id = record_id


class JobStopped(BaseException):
    """A running attempt was told to stop; base of cancel and time limit.

    A BaseException, like asyncio's CancelledError, so that a job's own
    ``except Exception`` does not swallow it by accident.
    """


class JobCancelled(JobStopped):
    """Someone asked the running job to stop; it ends cancelled."""


class JobTimeout(JobStopped):
    """The attempt ran past its time limit; it fails and may be retried."""
