"""System checks: every unusable KLERK_* setting is reported at start-up."""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings
from django.core.checks import run_checks

NAN, INF = float("nan"), float("inf")

INVALID = [
    ("KLERK_LEASE_SECONDS", 0, "E001"),
    ("KLERK_LEASE_SECONDS", -5, "E001"),
    ("KLERK_LEASE_SECONDS", NAN, "E001"),
    ("KLERK_LEASE_SECONDS", INF, "E001"),
    ("KLERK_HEARTBEAT_SECONDS", "1", "E001"),
    ("KLERK_RECOVERY_SECONDS", None, "E001"),
    ("KLERK_POLL_SECONDS", 1e300, "E001"),
    ("KLERK_POLL_SECONDS", True, "E001"),
    ("KLERK_BACKOFF_BASE_SECONDS", -1, "E002"),
    ("KLERK_BACKOFF_BASE_SECONDS", NAN, "E002"),
    ("KLERK_BACKOFF_MAX_SECONDS", INF, "E002"),
    ("KLERK_BACKOFF_MAX_SECONDS", 1e12, "E002"),
    ("KLERK_SHUTDOWN_GRACE_SECONDS", NAN, "E002"),
    ("KLERK_ACTION_ORPHAN_SECONDS", -0.5, "E002"),
    ("KLERK_MAX_ATTEMPTS", 0, "E003"),
    ("KLERK_MAX_ATTEMPTS", 2.0, "E003"),
    ("KLERK_MAX_ATTEMPTS", 2**31, "E003"),
    ("KLERK_WORKER_CONCURRENCY", True, "E003"),
    ("KLERK_ACTION_THREADS", 0, "E003"),
    ("KLERK_ACTIONS_MODE", "eager", "E004"),
    ("KLERK_BACKOFF_JITTER", 1.5, "E005"),
    ("KLERK_BACKOFF_JITTER", NAN, "E005"),
    ("KLERK_MAX_ARGUMENTS_BYTES", 0, "E006"),
    ("KLERK_MAX_ARGUMENTS_BYTES", True, "E006"),
    ("KLERK_MAX_ARGUMENTS_BYTES", 1.5, "E006"),
    ("KLERK_DATABASE", "missing", "E007"),
    ("KLERK_RETENTION_DAYS", -1, "E011"),
    ("KLERK_RETENTION_DAYS", "30", "E011"),
    ("KLERK_RETENTION_DAYS", NAN, "E011"),
    ("KLERK_BACKOFF_FACTOR", 0.5, "E009"),
    ("KLERK_BACKOFF_FACTOR", NAN, "E009"),
    ("KLERK_BACKOFF_FACTOR", INF, "E009"),
    ("KLERK_BACKOFF_FACTOR", "3", "E009"),
    ("KLERK_DEFAULT_QUEUE", "no spaces", "E010"),
    ("KLERK_DEFAULT_QUEUE", "default\n", "E010"),
    ("KLERK_DEFAULT_QUEUE", None, "E010"),
    ("KLERK_QUEUES", "mail", "E014"),
]


def klerk_messages() -> list:
    # No database named: like ``manage.py check``, Django 6 then leaves out
    # the checks tagged "database", and none of them opens a connection.
    messages = run_checks(databases=[])
    return [m for m in messages if m.id.startswith("klerk_django.")]


def test_default_settings_pass_every_check():
    assert klerk_messages() == []


@pytest.mark.parametrize("name, value, code", INVALID)
def test_invalid_setting_is_an_error_naming_it(settings, name, value, code):
    setattr(settings, name, value)

    messages = klerk_messages()

    assert [m.id for m in messages] == [f"klerk_django.{code}"]
    assert name in messages[0].msg
    assert repr(value) in messages[0].msg
    assert not messages[0].msg.endswith("..")


def test_every_problem_of_klerk_queues_is_its_own_error(settings):
    settings.KLERK_QUEUES = {
        "mail": {"rate_limit": (0, 60), "concurrency_limit": 100.5},
        "bad name": {},
        "sms": {"color": "red"},
        "fine": {"concurrency_limit": 2},
        "push": "fast",
    }

    messages = klerk_messages()

    assert {m.id for m in messages} == {"klerk_django.E014"}
    texts = [m.msg for m in messages]
    assert len(texts) == 5, texts
    assert [text for text in texts if "'mail'" in text and "rate limit" in text]
    assert [text for text in texts if "'mail'" in text and "100.5" in text]
    assert [text for text in texts if "'bad name'" in text]
    assert [text for text in texts if "'sms'" in text and "color" in text]
    assert [text for text in texts if "'push'" in text and "'fast'" in text]
    assert not [text for text in texts if "'fine'" in text]
    assert not [text for text in texts if text.endswith("..")]


def test_heartbeat_longer_than_half_the_lease_is_an_error(settings):
    settings.KLERK_LEASE_SECONDS = 10.0
    settings.KLERK_HEARTBEAT_SECONDS = 6.0

    assert [m.id for m in klerk_messages()] == ["klerk_django.E008"]


def test_valid_edge_values_pass(settings):
    settings.KLERK_BACKOFF_BASE_SECONDS = 0
    settings.KLERK_BACKOFF_JITTER = 1
    settings.KLERK_BACKOFF_FACTOR = 1
    settings.KLERK_MAX_ARGUMENTS_BYTES = None
    settings.KLERK_MAX_ATTEMPTS = 1
    settings.KLERK_RETENTION_DAYS = None

    assert klerk_messages() == []


def test_jobs_on_another_database_alias_are_a_warning(settings, monkeypatch):
    databases = dict(django_settings.DATABASES)
    databases["jobs"] = dict(databases["default"])
    monkeypatch.setattr(django_settings, "DATABASES", databases)
    settings.KLERK_DATABASE = "jobs"

    messages = klerk_messages()

    assert [m.id for m in messages] == ["klerk_django.W001"]
    assert "'jobs'" in messages[0].msg


def test_sqlite_without_immediate_transactions_is_warned_about():
    from klerk_django.checks import sqlite_locking_warnings

    entry = {"ENGINE": "django.db.backends.sqlite3", "NAME": "x.sqlite3"}
    assert [w.id for w in sqlite_locking_warnings(entry)] == ["klerk_django.W002"]

    entry["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 20}
    assert sqlite_locking_warnings(entry) == []


def _connection(vendor, skip_locked=True):
    from types import SimpleNamespace

    features = SimpleNamespace(has_select_for_update_skip_locked=skip_locked)
    return SimpleNamespace(vendor=vendor, features=features)


def test_a_mariadb_without_skip_locked_is_named():
    from klerk_django.checks import database_problems

    (problem,) = database_problems(_connection("mysql", skip_locked=False))

    assert "SKIP LOCKED" in problem and "MariaDB 10.6" in problem
    assert database_problems(_connection("mysql")) == []


def test_an_old_sqlite_without_returning_is_named(monkeypatch):
    from klerk_django import checks

    monkeypatch.setattr(checks, "_sqlite_version", lambda: (3, 34, 1))

    (problem,) = checks.database_problems(_connection("sqlite"))

    assert "RETURNING" in problem and "3.35.0" in problem


@pytest.mark.django_db
def test_the_database_under_test_has_what_workers_need():
    from django.core.checks import run_checks

    errors = run_checks(databases=["default"])

    assert not [error for error in errors if error.id == "klerk_django.E012"]


def test_a_worker_on_a_database_without_the_features_refuses_to_start(monkeypatch):
    from django.core.management import CommandError, call_command

    from klerk_django.management.commands import klerk_worker

    monkeypatch.setattr(
        klerk_worker, "database_problems", lambda conn: ["The server lacks X."]
    )

    with pytest.raises(CommandError, match="The server lacks X."):
        call_command("klerk_worker", "--burst")


def test_workers_name_an_unusable_klerk_queues_without_a_double_period(settings):
    from klerk_django.exceptions import SettingsError
    from klerk_django.limits import queue_limits

    settings.KLERK_QUEUES = {"mail": {"concurrency_limit": 0}}

    with pytest.raises(SettingsError, match="got 0[.]$"):
        queue_limits()
