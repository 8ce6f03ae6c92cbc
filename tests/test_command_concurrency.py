"""Lock keys and optimistic concurrency: who waits, and stale objects."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from klerk_django import handle, version_of
from klerk_django.models import CommandLock, CommandRecord
from tests.testapp import commands, threads
from tests.testapp.commands import KeyedHook, RunHook
from tests.testapp.models import Note, Run
from tests.workers import wait_for

REJECTED = CommandRecord.Outcome.REJECTED


@pytest.fixture(autouse=True)
def clean_commands():
    commands.hooks.clear()
    yield
    commands.hooks.clear()


@pytest.fixture
def server_database(vendor):
    if vendor == "sqlite":
        pytest.skip("needs row locks held by concurrent sessions")


@pytest.fixture
def versioned_runs(monkeypatch):
    monkeypatch.setattr(Run, "klerk_version_field", "created_at", raising=False)
    return Run.objects.create(kind="seen", key="a")


def nothing(command):
    return None


@pytest.mark.django_db
def test_lock_key_reads_the_clean_inputs():
    commands.hooks["nothing"] = nothing

    assert handle(KeyedHook(key="nothing", account="007")).ok

    assert CommandLock.objects.filter(key="account:7").exists()


@pytest.mark.django_db
def test_invalid_inputs_are_rejected_before_the_lock_key_is_asked():
    result = handle(KeyedHook(key="nothing", account="seven"))

    assert (result.outcome, result.stage) == (REJECTED, "inputs")
    assert not CommandLock.objects.filter(key__startswith="account:").exists()


@pytest.mark.django_db
def test_a_lock_key_that_is_not_a_string_fails_the_command(monkeypatch):
    monkeypatch.setattr(KeyedHook, "lock_key", lambda command: None)
    commands.hooks["nothing"] = nothing

    result = handle(KeyedHook(key="nothing", account=1))

    assert result.outcome == CommandRecord.Outcome.FAILED
    assert "lock_key() must return a non-empty string" in (
        CommandRecord.objects.get().error
    )


@pytest.mark.django_db
def test_unchanged_object_lets_the_command_run(versioned_runs):
    commands.hooks["write"] = lambda command: Note.objects.create(text="x").pk
    seen = version_of(versioned_runs)

    result = handle(RunHook(key="write"), unchanged_since={versioned_runs: seen})

    assert result.ok, result.problems
    assert Note.objects.exists()


@pytest.mark.django_db
def test_changed_object_rejects_the_command_with_a_conflict(versioned_runs):
    commands.hooks["write"] = lambda command: Note.objects.create(text="x").pk
    seen = versioned_runs.created_at
    Run.objects.filter(pk=versioned_runs.pk).update(
        created_at=seen + timedelta(seconds=1)
    )

    result = handle(RunHook(key="write"), unchanged_since={versioned_runs: seen})

    assert (result.outcome, result.stage) == (REJECTED, "conflict")
    assert [(p.code, p.message) for p in result.problems] == [
        (
            "conflict",
            f"Run {versioned_runs.pk} was changed since you saw it; reload it.",
        )
    ]
    assert not Note.objects.exists()
    assert CommandRecord.objects.get().outcome == REJECTED


@pytest.mark.django_db
def test_deleted_object_rejects_the_command_with_a_conflict(versioned_runs):
    seen = version_of(versioned_runs)
    pk = versioned_runs.pk
    Run.objects.filter(pk=pk).delete()
    versioned_runs.pk = pk

    result = handle(RunHook(key="write"), unchanged_since={versioned_runs: seen})

    assert [p.message for p in result.problems] == [
        f"Run {pk} was deleted since you saw it."
    ]


@pytest.mark.django_db
def test_a_version_number_must_match_exactly(monkeypatch):
    monkeypatch.setattr(Run, "klerk_version_field", "attempt", raising=False)
    run = Run.objects.create(kind="seen", key="a", attempt=3)
    commands.hooks["nothing"] = nothing

    same = handle(RunHook(key="nothing"), unchanged_since={run: 3})
    older = handle(RunHook(key="nothing"), unchanged_since={run: "2"})

    assert same.ok
    assert [p.code for p in older.problems] == ["conflict"]


@pytest.mark.django_db
def test_the_version_seen_may_come_as_text_from_a_form(versioned_runs):
    commands.hooks["nothing"] = nothing
    seen = versioned_runs.created_at.isoformat()

    assert handle(RunHook(key="nothing"), unchanged_since={versioned_runs: seen}).ok


@pytest.mark.django_db
def test_conflicts_are_checked_before_the_rules(versioned_runs):
    commands.stages.clear()
    Run.objects.filter(pk=versioned_runs.pk).update(
        created_at=timezone.now() + timedelta(days=1)
    )

    result = handle(
        commands.AddNote(text="forbidden"),
        unchanged_since={versioned_runs: versioned_runs.created_at},
    )

    assert result.stage == "conflict"
    assert "validate" not in commands.stages


@pytest.mark.django_db
def test_a_model_without_a_version_field_is_refused():
    note = Note.objects.create(text="x")

    with pytest.raises(ValueError, match="Note has no version field"):
        handle(RunHook(key="nothing"), unchanged_since={note: 1})


@pytest.mark.django_db
@pytest.mark.parametrize(
    "mapping",
    [lambda run: {"run 1": timezone.now()}, lambda run: {run: "not a time"}],
    ids=["not a model", "unreadable"],
)
def test_unusable_unchanged_since_is_refused(versioned_runs, mapping):
    with pytest.raises(ValueError, match="unchanged_since|version seen"):
        handle(RunHook(key="nothing"), unchanged_since=mapping(versioned_runs))

    assert not CommandRecord.objects.exists()


# Lock keys on a server database: observed through the server's own view
# of who waits for a lock, never through timing.


def hold(entered: threading.Event, go: threading.Event):
    def hook(command):
        entered.set()
        assert go.wait(threads.JOIN_TIMEOUT_SECONDS)
        return "held"

    return hook


@pytest.mark.django_db(transaction=True)
def test_same_lock_key_waits_and_another_key_does_not(server_database):
    entered, go = threading.Event(), threading.Event()
    commands.hooks["hold"] = hold(entered, go)
    commands.hooks["quick"] = lambda command: "quick"
    holder = threads.start(lambda: handle(KeyedHook(key="hold", account=1)))
    assert entered.wait(threads.JOIN_TIMEOUT_SECONDS)

    session: list[int] = []

    def same_account():
        session.append(threads.session_id())
        return handle(KeyedHook(key="quick", account=1))

    waiting = threads.start(same_account)
    wait_for(lambda: session and threads.waits_for_lock(session[0]))

    # Runs to the end while the first account's lock is still held.
    other = threads.start(lambda: handle(KeyedHook(key="quick", account=2)))
    other.join()
    assert other.value.ok
    assert waiting.is_alive() and threads.waits_for_lock(session[0])

    go.set()
    holder.join()
    waiting.join()
    assert holder.value.ok and waiting.value.ok
