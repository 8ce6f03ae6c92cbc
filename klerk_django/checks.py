"""System checks: settings klerk_django cannot use, and unsafe setups."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from django.conf import settings as django_settings
from django.core.checks import Error, Tags, Warning, register

from .conf import DEFAULTS
from .jobs import INT_MAX, QUEUE_NAME
from .retry import MAX_DELAY_SECONDS

POSITIVE_SECONDS = (
    "KLERK_LEASE_SECONDS",
    "KLERK_HEARTBEAT_SECONDS",
    "KLERK_RECOVERY_SECONDS",
    "KLERK_POLL_SECONDS",
)
NON_NEGATIVE = (
    "KLERK_BACKOFF_BASE_SECONDS",
    "KLERK_BACKOFF_MAX_SECONDS",
    "KLERK_SHUTDOWN_GRACE_SECONDS",
    "KLERK_ACTION_ORPHAN_SECONDS",
)
# The most that each positive integer may be: attempts are a 32-bit column.
POSITIVE_INTEGERS = {
    "KLERK_MAX_ATTEMPTS": INT_MAX,
    "KLERK_WORKER_CONCURRENCY": None,
    "KLERK_ACTION_THREADS": None,
}
LONGEST = f"{MAX_DELAY_SECONDS:.0f}"


def _value(name: str) -> Any:
    return getattr(django_settings, name, DEFAULTS[name])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seconds(value: Any, low: float) -> bool:
    # A duration must be added to "now" without leaving the calendar.
    return (
        _is_number(value) and math.isfinite(value) and low <= value <= MAX_DELAY_SECONDS
    )


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    errors = []
    for name in POSITIVE_SECONDS:
        value = _value(name)
        if not _is_seconds(value, 0) or value == 0:
            expected = f"a number of seconds above 0 and at most {LONGEST}"
            errors.append(_error(name, value, expected, "E001"))
    for name in NON_NEGATIVE:
        value = _value(name)
        if not _is_seconds(value, 0):
            expected = f"a number of seconds from 0 to {LONGEST}"
            errors.append(_error(name, value, expected, "E002"))
    for name, most in POSITIVE_INTEGERS.items():
        value = _value(name)
        if not _is_int(value) or value < 1 or (most and value > most):
            expected = (
                f"an integer from 1 to {most}" if most else "an integer of at least 1"
            )
            errors.append(_error(name, value, expected, "E003"))

    errors += _check_choices()
    errors += _check_backoff_factor()
    errors += _check_queue()
    errors += _check_lease()
    errors += _check_retention()
    return errors


def _check_choices() -> list[Error]:
    errors = []
    mode = _value("KLERK_ACTIONS_MODE")
    if mode not in ("thread", "inline"):
        errors.append(
            _error("KLERK_ACTIONS_MODE", mode, "'thread' or 'inline'", "E004")
        )
    jitter = _value("KLERK_BACKOFF_JITTER")
    if not _is_number(jitter) or not 0 <= jitter <= 1:
        errors.append(
            _error("KLERK_BACKOFF_JITTER", jitter, "a number from 0 to 1", "E005")
        )
    limit = _value("KLERK_MAX_ARGUMENTS_BYTES")
    if limit is not None and (not _is_int(limit) or limit < 1):
        errors.append(
            _error(
                "KLERK_MAX_ARGUMENTS_BYTES", limit, "None or a positive integer", "E006"
            )
        )
    alias = _value("KLERK_DATABASE")
    if alias not in django_settings.DATABASES:
        errors.append(
            _error("KLERK_DATABASE", alias, "an alias from DATABASES", "E007")
        )
    return errors


def _check_backoff_factor() -> list[Error]:
    factor = _value("KLERK_BACKOFF_FACTOR")
    if _is_number(factor) and math.isfinite(factor) and factor >= 1:
        return []
    expected = "a finite number of at least 1"
    return [_error("KLERK_BACKOFF_FACTOR", factor, expected, "E009")]


def _check_queue() -> list[Error]:
    queue = _value("KLERK_DEFAULT_QUEUE")
    if isinstance(queue, str) and QUEUE_NAME.match(queue):
        return []
    expected = "a queue name of 1 to 100 letters, digits or _.:-"
    return [_error("KLERK_DEFAULT_QUEUE", queue, expected, "E010")]


def _check_retention() -> list[Error]:
    from .retention import MAX_DAYS, check_days

    days = _value("KLERK_RETENTION_DAYS")
    try:
        if days is not None:
            check_days(days)
    except ValueError:
        expected = f"None or a number of days from 0 to {MAX_DAYS}"
        return [_error("KLERK_RETENTION_DAYS", days, expected, "E011")]
    return []


def _check_lease() -> list[Error]:
    lease, heartbeat = _value("KLERK_LEASE_SECONDS"), _value("KLERK_HEARTBEAT_SECONDS")
    if not (_is_seconds(lease, 0) and _is_seconds(heartbeat, 0)) or lease == 0:
        return []
    if heartbeat * 2 > lease:
        return [
            Error(
                f"KLERK_HEARTBEAT_SECONDS ({heartbeat!r}) must be at most half of "
                f"KLERK_LEASE_SECONDS ({lease!r}), or leases of healthy workers "
                "expire between heartbeats.",
                id="klerk_django.E008",
            )
        ]
    return []


# Not tagged "database": Django 6 runs such checks only for the aliases
# given to ``manage.py check --database``, and these read settings alone.
@register(Tags.compatibility)
def check_database(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    alias = _value("KLERK_DATABASE")
    if alias == "default" or alias not in django_settings.DATABASES:
        return []
    return [
        Warning(
            f"Jobs and actions are stored in the database {alias!r}, not "
            "'default': they are no longer committed or rolled back together "
            "with data written to 'default'.",
            hint="Keep KLERK_DATABASE on the alias your models write to.",
            id="klerk_django.W001",
        )
    ]


@register(Tags.compatibility)
def check_sqlite_locking(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """Warn when SQLite would fail writers at once instead of queueing them."""
    entry = django_settings.DATABASES.get(_value("KLERK_DATABASE"), {})
    return sqlite_locking_warnings(entry)


def sqlite_locking_warnings(entry: dict[str, Any]) -> list[Warning]:
    if not str(entry.get("ENGINE", "")).endswith("sqlite3"):
        return []
    options = entry.get("OPTIONS", {})
    if str(options.get("transaction_mode", "")).upper() == "IMMEDIATE":
        return []
    return [
        Warning(
            "The jobs' SQLite database starts transactions deferred: with a "
            "worker and a web process writing at once, transactions fail "
            "with 'database is locked' instead of waiting for each other.",
            hint='Add "OPTIONS": {"transaction_mode": "IMMEDIATE", '
            '"timeout": 20} to this DATABASES entry.',
            id="klerk_django.W002",
        )
    ]


def _error(name: str, value: Any, expected: str, code: str) -> Error:
    return Error(
        f"{name} must be {expected}, got {value!r}.", id=f"klerk_django.{code}"
    )


def database_problems(conn: Any) -> list[str]:
    """Return what the jobs' database lacks that workers need, if anything."""
    if conn.vendor == "mysql" and not conn.features.has_select_for_update_skip_locked:
        return [
            "The jobs' MariaDB or MySQL server has no SELECT ... FOR UPDATE "
            "SKIP LOCKED, which claims need: use MariaDB 10.6 or MySQL 8.0.1 "
            "or newer."
        ]
    if conn.vendor == "sqlite" and _sqlite_version() < (3, 35, 0):
        return [
            "The jobs' SQLite library has no UPDATE ... RETURNING, which "
            f"claims need: found {_sqlite_version_text()}, need 3.35.0 or newer."
        ]
    return []


def _sqlite_version() -> tuple[int, ...]:
    import sqlite3

    return tuple(sqlite3.sqlite_version_info)


def _sqlite_version_text() -> str:
    import sqlite3

    return sqlite3.sqlite_version


@register(Tags.database)
def check_database_features(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[Error]:
    """Report a jobs' database without the features claims rely on."""
    from django.db import connections

    alias = _value("KLERK_DATABASE")
    if not databases or alias not in databases:
        return []
    return [
        Error(problem, id="klerk_django.E012")
        for problem in database_problems(connections[alias])
    ]


@register(Tags.compatibility)
def check_schedules(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Report KLERK_SCHEDULES entries workers could not run."""
    from .schedules import settings_problems

    return [Error(problem, id="klerk_django.E013") for problem in settings_problems()]


@register(Tags.compatibility)
def check_queue_limits(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Report KLERK_QUEUES limits that workers could not enforce, each one."""
    from .limits import QUEUE_OPTIONS

    hint = (
        'Write it as {"mail": {"rate_limit": (10, 60), "concurrency_limit": 2}}: '
        "at most 10 starts per 60 seconds and 2 running at once; the options "
        f"are {list(QUEUE_OPTIONS)}."
    )
    return [
        Error(
            f"KLERK_QUEUES is unusable: {problem}.", hint=hint, id="klerk_django.E014"
        )
        for problem in queue_limit_problems(_value("KLERK_QUEUES"))
    ]


def queue_limit_problems(value: Any) -> list[str]:
    """Return every problem of KLERK_QUEUES, not only the first."""
    from .limits import parse_queues

    # The parser stops at the first problem, so each queue's options are
    # parsed one at a time; a bad queue name is then found once per option.
    problems: dict[str, None] = {}
    for part in _one_option_each(value):
        try:
            parse_queues(part)
        except ValueError as problem:
            problems[str(problem).removesuffix(".")] = None
    return list(problems)


def _one_option_each(value: Any) -> list[Any]:
    if not isinstance(value, Mapping):
        return [value]
    parts = []
    for queue, options in value.items():
        if isinstance(options, Mapping) and options:
            parts += [{queue: {name: option}} for name, option in options.items()]
        else:
            parts.append({queue: options})
    return parts
