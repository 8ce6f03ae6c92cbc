"""Idempotency tokens: at most one run per token, across threads too."""

from __future__ import annotations

import threading

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction

from klerk_django import commands as service
from klerk_django import handle
from klerk_django.models import Action, CommandRecord, Job
from tests.testapp import commands, threads
from tests.testapp.commands import AddNote, ApartHook, RunHook
from tests.testapp.models import Note
from tests.workers import wait_for

SUCCEEDED = CommandRecord.Outcome.SUCCEEDED
REJECTED = CommandRecord.Outcome.REJECTED
FAILED = CommandRecord.Outcome.FAILED
CALLERS = 8


@pytest.fixture(autouse=True)
def clean_commands():
    commands.stages.clear()
    commands.hooks.clear()
    yield
    commands.stages.clear()
    commands.hooks.clear()


@pytest.fixture
def server_database(vendor):
    if vendor == "sqlite":
        pytest.skip("needs concurrent writers, which SQLite runs one at a time")


def note_once(runs: list[str]):
    def hook(command):
        runs.append(command.raw_inputs["key"])
        return Note.objects.create(text="once").pk

    return hook


@pytest.mark.django_db
def test_repeat_returns_the_first_outcome_without_running_again(
    django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks(execute=True):
        first = handle(AddNote(text="hello"), token="req-1")
        again = handle(AddNote(text="hello"), token="req-1")

    assert first.ok and not first.repeated
    assert again.ok and again.repeated
    assert again.record_id == first.record_id
    assert again.value == first.value
    assert [job.pk for job in again.jobs] == [job.pk for job in first.jobs]
    assert [a.pk for a in again.actions] == [a.pk for a in first.actions]
    assert commands.stages.count("execute") == 1
    assert Note.objects.count() == Job.objects.count() == Action.objects.count() == 1
    saved = CommandRecord.objects.get()
    assert saved.token == "req-1"
    assert saved.pk == first.record_id


@pytest.mark.django_db
def test_a_stored_token_is_honoured_by_a_new_process():
    earlier = CommandRecord.objects.create(
        name="tests.add_note",
        inputs={"text": "hello", "then": ""},
        actor="system",
        outcome=SUCCEEDED,
        result=41,
        token="from-yesterday",
    )

    result = handle(AddNote(text="hello"), token="from-yesterday")

    assert result.repeated
    assert (result.record_id, result.value) == (earlier.pk, 41)
    assert not Note.objects.exists()


@pytest.mark.django_db
def test_a_rejection_uses_up_its_token():
    first = handle(AddNote(text="forbidden"), token="req-2")
    again = handle(AddNote(text="forbidden"), token="req-2")

    assert first.outcome == again.outcome == REJECTED
    assert again.repeated
    assert again.problems == first.problems
    assert commands.stages.count("validate") == 1
    assert CommandRecord.objects.get().token == "req-2"


@pytest.mark.django_db
def test_a_failure_leaves_its_token_free_for_a_retry():
    first = handle(AddNote(text="hello", then="raise"), token="req-3")

    failed = CommandRecord.objects.get()
    assert first.outcome == FAILED
    assert failed.token is None

    again = handle(AddNote(text="hello", then="raise"), token="req-3")
    assert again.outcome == FAILED and not again.repeated
    assert commands.stages.count("execute") == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    "second",
    [
        lambda: handle(AddNote(text="other"), token="req-4"),
        lambda: handle(RunHook(key="hello"), token="req-4"),
        lambda: handle(
            AddNote(text="hello"),
            token="req-4",
            actor=User.objects.create(username="x"),
        ),
    ],
    ids=["other inputs", "other command", "other actor"],
)
def test_a_token_used_for_another_request_is_rejected(second):
    assert handle(AddNote(text="hello"), token="req-4").ok

    result = second()

    assert result.outcome == REJECTED
    assert result.stage == "token"
    assert [problem.code for problem in result.problems] == ["token_reused"]
    assert result.record_id is None
    assert CommandRecord.objects.count() == 1
    assert Note.objects.count() == 1


@pytest.mark.django_db
def test_inputs_that_clean_the_same_are_the_same_request():
    commands.hooks["hello"] = lambda command: "ran"
    first = handle(commands.KeyedHook(key="hello", account="7"), token="req-5")

    again = handle(commands.KeyedHook(key="hello", account=7), token="req-5")

    assert first.ok
    assert again.repeated and again.value == "ran"


@pytest.mark.django_db
def test_a_dry_run_never_uses_up_a_token():
    preview = handle(AddNote(text="hello"), token="req-6", dry_run=True)
    real = handle(AddNote(text="hello"), token="req-6")

    assert preview.ok and not preview.repeated
    assert real.ok and not real.repeated
    assert CommandRecord.objects.get().token == "req-6"


@pytest.mark.django_db(transaction=True)
def test_a_dry_run_inside_an_outer_atomic_leaves_the_token_free():
    with transaction.atomic():
        preview = handle(
            commands.AddNoteTwice(first="one", second="two"),
            token="req-6b",
            dry_run=True,
        )

    assert preview.ok and len(preview.actions) == 1
    assert not CommandRecord.objects.exists()
    assert not Note.objects.exists() and not Job.objects.exists()
    assert handle(AddNote(text="hello"), token="req-6b").ok


@pytest.mark.django_db
def test_a_dry_run_with_a_used_token_answers_with_the_stored_outcome():
    real = handle(AddNote(text="hello"), token="req-7")

    preview = handle(AddNote(text="hello"), token="req-7", dry_run=True)

    assert preview.repeated and preview.dry_run
    assert preview.record_id == real.record_id
    assert commands.stages.count("execute") == 1


@pytest.mark.django_db
@pytest.mark.parametrize("token", ["", "t" * 201, "a\x00b", 42])
def test_an_unusable_token_is_refused_before_anything_runs(token):
    with pytest.raises(ValueError, match="token must be a non-empty string"):
        handle(AddNote(text="hello"), token=token)

    assert not CommandRecord.objects.exists()


@pytest.mark.django_db
def test_a_secondary_command_takes_no_token():
    commands.hooks["nested"] = lambda command: handle(
        AddNote(text="inner"), token="req-8"
    )

    result = handle(RunHook(key="nested"))

    assert result.outcome == FAILED
    assert "A secondary command takes no token" in CommandRecord.objects.get().error


@pytest.mark.django_db(transaction=True)
def test_a_lost_race_for_the_token_keeps_the_outer_transaction_usable(monkeypatch):
    assert handle(AddNote(text="hello"), token="req-9").ok
    # As if another caller stored the token between this one's read and
    # its insert: the insert hits the unique constraint.
    monkeypatch.setattr(service, "_stored", _blind_once(service._stored))

    with transaction.atomic():
        again = handle(AddNote(text="hello"), token="req-9")
        Note.objects.create(text="after")

    assert again.repeated and again.ok
    assert sorted(Note.objects.values_list("text", flat=True)) == ["after", "hello"]
    assert CommandRecord.objects.count() == 1


def _blind_once(stored):
    calls = []

    def lookup(token):
        calls.append(token)
        return None if len(calls) == 1 else stored(token)

    return lookup


@pytest.mark.django_db(transaction=True)
def test_outer_rollback_gives_the_token_back():
    with pytest.raises(RuntimeError), transaction.atomic():
        assert handle(AddNote(text="hello"), token="req-10").ok
        raise RuntimeError("the view failed later")

    result = handle(AddNote(text="hello"), token="req-10")

    assert result.ok and not result.repeated


# Concurrency: the unique constraint on the token, not the command lock,
# decides who runs. ApartHook takes a lock key of its own on every call.


def sessions_waiting(sessions: list[int]) -> int:
    return sum(threads.waits_for_lock(session) for session in sessions)


@pytest.mark.django_db(transaction=True)
def test_many_callers_with_one_token_run_the_command_once(server_database):
    runs: list[str] = []
    sessions: list[int] = []
    start = threading.Barrier(CALLERS)

    def first_waits_for_the_rest(command):
        # Hold the token until every other caller waits on it, so that all
        # of them have looked the token up and found nothing.
        wait_for(lambda: sessions_waiting(sessions) == CALLERS - 1)
        return note_once(runs)(command)

    commands.hooks["once"] = first_waits_for_the_rest

    def caller():
        sessions.append(threads.session_id())
        start.wait(threads.JOIN_TIMEOUT_SECONDS)
        return handle(ApartHook(key="once"), token="order-42")

    callers = [threads.start(caller) for _ in range(CALLERS)]
    for thread in callers:
        thread.join()

    results = [thread.value for thread in callers]
    first = [result for result in results if not result.repeated]
    assert len(first) == 1 and first[0].ok
    assert runs == ["once"]
    assert Note.objects.count() == 1
    assert CommandRecord.objects.filter(token="order-42").count() == 1
    assert CommandRecord.objects.count() == 1
    for result in results:
        assert result.ok, result.problems
        assert (result.record_id, result.value) == (first[0].record_id, first[0].value)


@pytest.mark.django_db(transaction=True)
def test_a_caller_whose_wait_times_out_is_told_in_progress(server_database):
    inside, go = threading.Event(), threading.Event()

    def hold(command):
        inside.set()
        assert go.wait(threads.JOIN_TIMEOUT_SECONDS)
        return "first"

    commands.hooks["hold"] = hold
    first = threads.start(lambda: handle(ApartHook(key="hold"), token="order-43"))
    assert inside.wait(threads.JOIN_TIMEOUT_SECONDS)

    def impatient():
        _shorten_lock_waits()
        return handle(ApartHook(key="hold"), token="order-43")

    second = threads.start(impatient)
    second.join()
    go.set()
    first.join()

    assert first.value.ok
    assert second.value.outcome == service.IN_PROGRESS
    assert [problem.code for problem in second.value.problems] == ["in_progress"]
    assert not second.value.ok
    assert CommandRecord.objects.get().token == "order-43"


def _shorten_lock_waits() -> None:
    statement = {
        "postgresql": "SET lock_timeout = '50ms'",
        "mysql": "SET SESSION innodb_lock_wait_timeout = 1",
    }[connection.vendor]
    with connection.cursor() as cursor:
        cursor.execute(statement)


@pytest.mark.django_db(transaction=True)
def test_a_waiting_caller_runs_the_command_when_the_first_one_failed(
    server_database,
):
    session: list[int] = []
    runs: list[str] = []

    def fail_once_the_second_waits(command):
        runs.append("first")
        wait_for(lambda: session and threads.waits_for_lock(session[0]))
        raise RuntimeError("the first call fails")

    commands.hooks["flaky"] = fail_once_the_second_waits
    first = threads.start(lambda: handle(ApartHook(key="flaky"), token="order-44"))
    wait_for(lambda: runs)

    def second():
        session.append(threads.session_id())
        commands.hooks["flaky"] = lambda command: runs.append("second") or "ok"
        return handle(ApartHook(key="flaky"), token="order-44")

    waiting = threads.start(second)
    first.join()
    waiting.join()

    assert first.value.outcome == FAILED
    second = waiting.value
    if second.outcome == service.IN_PROGRESS:
        # InnoDB may end this wait as a deadlock: the first call's freeing
        # of the token conflicts with the waiting insert. Asking again runs.
        assert connection.vendor == "mysql"
        second = handle(ApartHook(key="flaky"), token="order-44")
    assert second.ok and not second.repeated
    assert runs == ["first", "second"]
    assert CommandRecord.objects.get(token="order-44").pk == second.record_id
