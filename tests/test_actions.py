"""Actions: released after commit, at most once, each failure on its own."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from klerk_django import action, actions
from klerk_django.models import Action, ActionStatus
from tests.testapp import threads
from tests.testapp.actions import broken_action, note_action
from tests.testapp.models import Run
from tests.testapp.more_actions import exit_action


def ran(kind: str = "action") -> list[str]:
    return list(Run.objects.filter(kind=kind).values_list("key", flat=True))


def status(action: Action) -> str:
    return Action.objects.get(pk=action.pk).status


@pytest.fixture
def server_database(vendor):
    if vendor == "sqlite":
        pytest.skip("needs two sessions writing at once")


@pytest.mark.django_db
def test_action_runs_only_after_commit(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        requested = note_action.request("after")
        assert ran() == []
        assert status(requested) == ActionStatus.PENDING

    assert len(callbacks) == 1
    assert ran() == ["after"]
    stored = Action.objects.get(pk=requested.pk)
    assert stored.status == ActionStatus.SUCCEEDED
    assert stored.started_at and stored.finished_at
    assert stored.arguments == {"args": ["after"], "kwargs": {}}


@pytest.mark.django_db(transaction=True)
def test_action_outside_a_transaction_runs_at_once():
    requested = note_action.request("now")

    assert ran() == ["now"]
    assert status(requested) == ActionStatus.SUCCEEDED


@pytest.mark.django_db(transaction=True)
def test_action_threads_run_actions_after_commit(settings):
    settings.KLERK_ACTIONS_MODE = "thread"

    with transaction.atomic():
        first = broken_action.request("first")
        second = note_action.request("second")
    actions.wait_for_actions()

    assert ran() == ["second"]
    assert status(first) == ActionStatus.FAILED
    assert status(second) == ActionStatus.SUCCEEDED


@pytest.mark.django_db
def test_failing_action_does_not_stop_the_next_and_is_recorded(
    django_capture_on_commit_callbacks, caplog
):
    with django_capture_on_commit_callbacks(execute=True):
        failing = broken_action.request("first")
        after = note_action.request("second")

    assert ran("broken-action") == ["first"]
    assert ran() == ["second"]
    stored = Action.objects.get(pk=failing.pk)
    assert stored.status == ActionStatus.FAILED
    assert stored.error == "RuntimeError: action failing on purpose: first"
    assert "Traceback" in stored.traceback
    assert status(after) == ActionStatus.SUCCEEDED
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        f"action failed action_id={failing.pk} action=tests.broken_action"
    ]


@pytest.mark.django_db
def test_action_that_exits_is_recorded_before_the_exit_goes_on(
    django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks():
        leaving = exit_action.request("bye")

    with pytest.raises(SystemExit):
        actions.run(leaving.pk)

    stored = Action.objects.get(pk=leaving.pk)
    assert stored.status == ActionStatus.FAILED
    assert "SystemExit" in stored.error


@pytest.mark.django_db
def test_action_of_a_rolled_back_savepoint_never_runs(
    django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            kept = note_action.request("kept")
            try:
                with transaction.atomic():
                    note_action.request("dropped")
                    raise RuntimeError("undo the savepoint")
            except RuntimeError:
                pass

    assert ran() == ["kept"]
    assert list(Action.objects.values_list("pk", flat=True)) == [kept.pk]


@pytest.mark.django_db(transaction=True)
def test_nothing_runs_when_the_outer_transaction_rolls_back():
    with pytest.raises(RuntimeError), transaction.atomic():
        with transaction.atomic():
            note_action.request("inner committed")
        raise RuntimeError("the outer block fails")

    assert ran() == []
    assert not Action.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_commit_elsewhere_does_not_release_another_sessions_action(server_database):
    requested, go = threading.Event(), threading.Event()

    def other_session():
        with transaction.atomic():
            note_action.request("other")
            requested.set()
            assert go.wait(threads.JOIN_TIMEOUT_SECONDS)

    other = threads.start(other_session)
    assert requested.wait(threads.JOIN_TIMEOUT_SECONDS)
    with transaction.atomic():
        note_action.request("mine")

    assert ran() == ["mine"]
    go.set()
    other.join()
    assert sorted(ran()) == ["mine", "other"]


@pytest.mark.django_db
def test_action_runs_at_most_once_when_released_twice(
    django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks(execute=True):
        requested = note_action.request("once")

    actions.release(requested.pk)
    assert actions.run(requested.pk) is False

    assert ran() == ["once"]


@pytest.mark.django_db
def test_unknown_action_name_is_recorded_as_a_failure():
    gone = Action.objects.create(
        name="tests.gone", arguments={"args": [], "kwargs": {}}
    )

    assert actions.run(gone.pk) is True

    stored = Action.objects.get(pk=gone.pk)
    assert stored.status == ActionStatus.FAILED
    assert "tests.gone" in stored.error


def pending(key: str, age: timedelta, **fields) -> Action:
    return Action.objects.create(
        name="tests.note_action",
        arguments={"args": [key], "kwargs": {}},
        created_at=timezone.now() - age,
        **fields,
    )


@pytest.mark.django_db
def test_orphaned_pending_actions_are_run(settings):
    settings.KLERK_ACTION_ORPHAN_SECONDS = 60
    orphan = pending("orphan", timedelta(minutes=5))
    young = pending("young", timedelta(seconds=1))
    running = pending("running", timedelta(hours=1), status=ActionStatus.RUNNING)
    done = pending("done", timedelta(hours=1), status=ActionStatus.SUCCEEDED)

    assert actions.run_orphans() == 1

    assert ran() == ["orphan"]
    assert status(orphan) == ActionStatus.SUCCEEDED
    assert status(young) == ActionStatus.PENDING
    assert status(running) == ActionStatus.RUNNING
    assert status(done) == ActionStatus.SUCCEEDED


@pytest.mark.django_db
def test_running_orphans_inside_a_transaction_leaves_it_usable():
    pending("orphan", timedelta(hours=1))

    with transaction.atomic():
        assert actions.run_orphans() == 1
        assert Action.objects.count() == 1

    assert not connection.needs_rollback
    assert ran() == ["orphan"]


def test_action_name_longer_than_its_column_is_refused():
    def undecorated() -> None:
        """Never registered: its name is too long."""

    with pytest.raises(ValueError, match="at most 200 characters"):
        action(name="a" * 201)(undecorated)


@pytest.mark.django_db(transaction=True)
def test_an_outcome_write_that_fails_once_is_retried(monkeypatch):
    from django.db import OperationalError
    from django.db.models import QuerySet

    from klerk_django import actions as actions_module
    from tests.testapp.actions import note_action

    real_update = QuerySet.update
    failures = []

    def flaky_update(self, **changes):
        if changes.get("status") == "succeeded" and not failures:
            failures.append(1)
            raise OperationalError("database is locked")
        return real_update(self, **changes)

    monkeypatch.setattr(QuerySet, "update", flaky_update)
    monkeypatch.setattr(actions_module.time, "sleep", lambda seconds: None)

    stored = note_action.request("flaky")

    stored.refresh_from_db()
    assert failures == [1]
    assert stored.status == "succeeded"
