"""Commands: the lock, validation order, rollback, records, nesting."""

from __future__ import annotations

import logging
import threading

import pytest
from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.db.models.signals import post_save
from django.test.utils import CaptureQueriesContext

from klerk_django import Command, Problem, Rejected, handle, jobs
from klerk_django.models import Action, CommandLock, CommandRecord, Job
from tests.testapp import commands, threads
from tests.testapp.actions import note_action
from tests.testapp.commands import AddNote, AddNoteTwice, LockedNote, RunHook
from tests.testapp.jobs import record
from tests.testapp.models import Note, Run
from tests.workers import wait_for

REJECTED = CommandRecord.Outcome.REJECTED
FAILED = CommandRecord.Outcome.FAILED
SUCCEEDED = CommandRecord.Outcome.SUCCEEDED


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
        pytest.skip("needs row locks held by concurrent sessions")


def assert_nothing_stored() -> None:
    assert not Note.objects.exists()
    assert not Job.objects.exists()
    assert not Action.objects.exists()


def only_record() -> CommandRecord:
    return CommandRecord.objects.get()


@pytest.mark.django_db
def test_handle_stores_data_job_action_and_record(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        result = handle(AddNote(text="hello"))

    assert result.ok, result.problems
    note = Note.objects.get()
    assert result.value == note.pk
    assert result.jobs == [Job.objects.get()]
    assert result.actions == [Action.objects.get()]
    assert Run.objects.filter(kind="action", key="hello").count() == 1

    saved = only_record()
    assert saved.pk == result.record_id
    assert saved.name == "tests.add_note"
    assert saved.inputs == {"text": "hello", "then": ""}
    assert saved.actor == "system"
    assert saved.outcome == SUCCEEDED
    assert saved.problems == []
    assert saved.result == note.pk
    assert saved.duration_ms >= 0
    assert Job.objects.get().command_id == saved.pk
    assert Action.objects.get().command_id == saved.pk


@pytest.mark.django_db
def test_record_names_the_actor():
    alice = User.objects.create(username="alice")

    handle(AddNote(text="hello"), actor=alice)

    assert only_record().actor == f"user:alice (id={alice.pk})"


@pytest.mark.django_db
def test_invalid_inputs_reject_before_rules_run():
    result = handle(AddNote(text="x" * 101))

    assert result.outcome == REJECTED
    assert [(p.field, p.code) for p in result.problems] == [("text", "max_length")]
    assert "validate" not in commands.stages
    assert only_record().outcome == REJECTED


@pytest.mark.django_db
def test_rules_run_after_inputs_and_before_execute(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        result = handle(AddNote(text="forbidden"))

    assert commands.stages == ["inputs", "validate"]
    assert result.outcome == REJECTED
    assert result.problems == [
        Problem("Notes may not say 'forbidden'.", "forbidden", "text")
    ]
    assert result.jobs == [] and result.actions == []
    assert callbacks == []
    assert_nothing_stored()

    saved = only_record()
    assert saved.outcome == REJECTED
    assert saved.problems == [
        {
            "field": "text",
            "message": "Notes may not say 'forbidden'.",
            "code": "forbidden",
        }
    ]


@pytest.mark.django_db
def test_unknown_inputs_are_rejected():
    result = handle(AddNote(text="hello", colour="red"))

    assert result.outcome == REJECTED
    assert [(p.field, p.code) for p in result.problems] == [("colour", "unknown_input")]
    assert "execute" not in commands.stages
    assert_nothing_stored()


@pytest.mark.django_db
def test_rejection_after_writing_leaves_none_of_the_writes(
    django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks() as callbacks:
        result = handle(AddNote(text="hello", then="reject"))

    assert result.outcome == REJECTED
    assert result.problems == [Problem("The note conflicts.", "conflict", "text")]
    assert result.jobs == [] and result.actions == []
    assert callbacks == []
    assert_nothing_stored()
    assert only_record().outcome == REJECTED


@pytest.mark.django_db
def test_error_after_writing_leaves_only_a_failed_record(
    django_capture_on_commit_callbacks, caplog
):
    with django_capture_on_commit_callbacks() as callbacks:
        result = handle(AddNote(text="hello", then="raise"))

    assert result.outcome == FAILED
    assert [(p.code, p.field) for p in result.problems] == [("internal", None)]
    assert "RuntimeError" in result.problems[0].message
    assert callbacks == []
    assert_nothing_stored()

    saved = only_record()
    assert saved.outcome == FAILED
    assert "execute failed after writing" in saved.error
    assert any(r.levelno == logging.ERROR for r in caplog.records)


@pytest.mark.django_db
def test_error_in_a_rule_fails_the_command():
    result = handle(AddNote(text="explode"))

    assert result.outcome == FAILED
    assert result.problems[0].code == "internal"
    assert "execute" not in commands.stages
    assert only_record().outcome == FAILED


@pytest.mark.django_db
def test_failed_job_insert_fails_the_whole_command(monkeypatch):
    taken = record.enqueue("taken")
    build = jobs._build

    def build_with_taken_id(*args):
        job = build(*args)
        job.pk = taken.pk
        return job

    monkeypatch.setattr(jobs, "_build", build_with_taken_id)

    result = handle(AddNote(text="hello"))

    assert result.outcome == FAILED
    assert not Note.objects.exists()
    assert not Action.objects.exists()
    assert list(Job.objects.all()) == [taken]
    assert IntegrityError.__name__ in only_record().error


@pytest.mark.django_db
def test_result_leaves_out_what_a_rolled_back_savepoint_did(
    django_capture_on_commit_callbacks,
):
    def nested(command):
        kept = record.enqueue("kept")
        try:
            with transaction.atomic():
                Note.objects.create(text="dropped")
                record.enqueue("dropped")
                note_action.request("dropped")
                raise RuntimeError("undo the savepoint")
        except RuntimeError:
            pass
        # On SQLite this job may get the id of the rolled-back one.
        after = record.enqueue("after")
        return [kept.pk, after.pk]

    commands.hooks["nested"] = nested

    with django_capture_on_commit_callbacks() as callbacks:
        result = handle(RunHook(key="nested"))

    assert result.ok, result.problems
    assert [job.arguments["args"] for job in result.jobs] == [["kept"], ["after"]]
    assert [job.pk for job in result.jobs] == result.value
    assert Job.objects.count() == 2
    assert result.actions == []
    assert callbacks == []
    assert not Note.objects.exists()


@pytest.mark.django_db
def test_nul_characters_in_inputs_are_rejected_and_recorded():
    result = handle(AddNote(text="a\x00b", **{"odd\x00name": "x"}))

    assert result.outcome == REJECTED
    assert {p.code for p in result.problems} == {
        "null_characters_not_allowed",
        "unknown_input",
    }
    saved = only_record()
    assert saved.outcome == REJECTED
    assert "\x00" not in str(saved.inputs) + str(saved.problems)


@pytest.mark.django_db
def test_values_that_are_not_json_are_recorded_as_text():
    commands.hooks["odd"] = lambda command: {"nan": float("nan"), "obj": object()}

    result = handle(RunHook(key="odd"), actor="robot\x00one")

    assert result.ok
    saved = only_record()
    assert saved.result["nan"] == "nan"
    assert saved.result["obj"].startswith("<object object")
    assert saved.actor == "robot\\x00one"


@pytest.mark.django_db
def test_lock_key_of_a_command_creates_its_lock_row():
    result = handle(LockedNote(text="mine"))

    assert result.ok
    assert CommandLock.objects.filter(key="note:mine").exists()


@pytest.mark.django_db(transaction=True)
def test_handle_inside_an_outer_atomic_releases_actions_on_outer_commit():
    with transaction.atomic():
        result = handle(AddNote(text="joined"))
        assert result.ok
        assert not Run.objects.filter(kind="action").exists()

    assert Run.objects.filter(kind="action", key="joined").count() == 1
    assert Action.objects.get().status == "succeeded"


@pytest.mark.django_db(transaction=True)
def test_outer_rollback_removes_everything_the_command_did():
    with pytest.raises(RuntimeError), transaction.atomic():
        assert handle(AddNote(text="joined")).ok
        raise RuntimeError("the view failed later")

    assert_nothing_stored()
    assert not CommandRecord.objects.exists()
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_secondary_command_joins_the_primary(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        result = handle(AddNoteTwice(first="one", second="two"))

    assert result.ok, result.problems
    assert sorted(Note.objects.values_list("text", flat=True)) == ["one", "two"]
    assert {job.arguments["args"][0] for job in result.jobs} == {"one", "two"}
    assert [action.arguments["args"] for action in result.actions] == [["two"]]
    assert len(callbacks) == 1
    outcomes = CommandRecord.objects.values_list("name", "outcome")
    assert sorted(outcomes) == [
        ("tests.add_note", SUCCEEDED),
        ("tests.add_note_twice", SUCCEEDED),
    ]


@pytest.mark.django_db
def test_rejected_secondary_command_rejects_the_primary(
    django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks() as callbacks:
        result = handle(AddNoteTwice(first="one", second="forbidden"))

    assert result.outcome == REJECTED
    assert [p.code for p in result.problems] == ["forbidden"]
    assert callbacks == []
    assert_nothing_stored()
    assert only_record().name == "tests.add_note_twice"


@pytest.mark.django_db
def test_failing_secondary_command_fails_the_primary():
    result = handle(AddNoteTwice(first="one", second="explode"))

    assert result.outcome == FAILED
    assert "a rule failed to run" in only_record().error
    assert_nothing_stored()


@pytest.mark.django_db
def test_primary_may_go_on_after_catching_a_rejected_secondary():
    def tolerant(command):
        Note.objects.create(text="kept")
        try:
            handle(AddNote(text="forbidden"))
        except Rejected as rejection:
            return [problem.code for problem in rejection.problems]

    commands.hooks["tolerant"] = tolerant

    result = handle(RunHook(key="tolerant"))

    assert result.ok
    assert result.value == ["forbidden"]
    assert list(Note.objects.values_list("text", flat=True)) == ["kept"]


@pytest.mark.django_db
def test_dry_run_stores_nothing_and_releases_nothing(
    django_capture_on_commit_callbacks,
):
    def on_commit_from_signal(sender, instance, **kwargs):
        transaction.on_commit(lambda: Run.objects.create(kind="signal", key="x"))

    post_save.connect(on_commit_from_signal, sender=Note)
    try:
        with django_capture_on_commit_callbacks() as callbacks:
            result = handle(AddNoteTwice(first="one", second="two"), dry_run=True)
    finally:
        post_save.disconnect(on_commit_from_signal, sender=Note)

    assert result.ok, result.problems
    assert result.dry_run
    assert len(result.jobs) == 2 and len(result.actions) == 1
    assert callbacks == []
    assert_nothing_stored()
    assert not CommandRecord.objects.exists()
    assert not CommandLock.objects.exclude(key="global").exists()


@pytest.mark.django_db
def test_dry_run_of_a_secondary_command_undoes_only_the_secondary(
    django_capture_on_commit_callbacks,
):
    def preview(command):
        Note.objects.create(text="kept")
        trial = handle(AddNote(text="trial"), dry_run=True)
        return [trial.ok, trial.dry_run, len(trial.jobs)]

    commands.hooks["preview"] = preview

    with django_capture_on_commit_callbacks() as callbacks:
        result = handle(RunHook(key="preview"))

    assert result.ok, result.problems
    assert result.value == [True, True, 1]
    assert result.jobs == [] and result.actions == []
    assert callbacks == []
    assert list(Note.objects.values_list("text", flat=True)) == ["kept"]
    assert not Job.objects.exists()
    assert only_record().name == "tests.run_hook"


@pytest.mark.django_db
def test_dry_run_reports_problems():
    result = handle(AddNote(text="forbidden"), dry_run=True)

    assert result.outcome == REJECTED
    assert [p.code for p in result.problems] == ["forbidden"]
    assert not CommandRecord.objects.exists()


@pytest.mark.django_db
def test_dry_run_with_a_lock_of_its_own_leaves_no_lock_row():
    assert handle(LockedNote(text="new"), dry_run=True).ok

    assert not CommandLock.objects.filter(key="note:new").exists()
    assert not Note.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_dry_run_inside_an_outer_atomic_leaves_nothing_after_commit():
    with transaction.atomic():
        Note.objects.create(text="outer")
        assert handle(AddNoteTwice(first="one", second="two"), dry_run=True).ok

    assert list(Note.objects.values_list("text", flat=True)) == ["outer"]
    assert not Job.objects.exists()
    assert not Action.objects.exists()
    assert not CommandRecord.objects.exists()
    assert not Run.objects.exists()


def hold_until(started: list[str], inside: threading.Event, go: threading.Event):
    def hook(command):
        started.append(command.raw_inputs["key"])
        inside.set()
        assert go.wait(threads.JOIN_TIMEOUT_SECONDS)
        started.append("released")

    return hook


def blocked_or_started(session: list[int], started: list[str]):
    return lambda: (
        "second" in started or (session and threads.waits_for_lock(session[0]))
    )


def start_second_command(started: list[str], session: list[int]):
    commands.hooks["second"] = lambda command: started.append("second")

    def second():
        session.append(threads.session_id())
        return handle(RunHook(key="second"))

    return threads.start(second)


@pytest.mark.django_db(transaction=True)
def test_second_command_waits_for_the_command_lock(server_database):
    started: list[str] = []
    session: list[int] = []
    inside, go = threading.Event(), threading.Event()
    commands.hooks["first"] = hold_until(started, inside, go)
    first = threads.start(lambda: handle(RunHook(key="first")))
    assert inside.wait(threads.JOIN_TIMEOUT_SECONDS)

    second = start_second_command(started, session)
    wait_for(blocked_or_started(session, started))
    assert started == ["first"]

    go.set()
    first.join()
    second.join()
    assert started == ["first", "released", "second"]
    assert first.value.ok and second.value.ok


@pytest.mark.django_db(transaction=True)
def test_command_lock_is_held_until_the_outer_commit(server_database):
    started: list[str] = []
    session: list[int] = []
    inside, go = threading.Event(), threading.Event()

    def outer():
        with transaction.atomic():
            assert handle(AddNote(text="outer")).ok
            started.append("first")
            inside.set()
            assert go.wait(threads.JOIN_TIMEOUT_SECONDS)
            started.append("released")

    first = threads.start(outer)
    assert inside.wait(threads.JOIN_TIMEOUT_SECONDS)

    second = start_second_command(started, session)
    wait_for(blocked_or_started(session, started))
    assert started == ["first"]

    go.set()
    first.join()
    second.join()
    assert started == ["first", "released", "second"]


@pytest.mark.django_db
def test_handle_locks_the_lock_row_with_select_for_update():
    commands.hooks["nothing"] = lambda command: None

    with CaptureQueriesContext(connection) as queries:
        assert handle(RunHook(key="nothing")).ok

    locking = [q["sql"] for q in queries if "klerk_command_lock" in q["sql"]]
    if connection.features.has_select_for_update:
        assert any("FOR UPDATE" in sql for sql in locking), locking
    else:
        assert locking, "SQLite takes its write lock with an UPDATE"


def test_command_name_longer_than_its_column_is_refused():
    with pytest.raises(ValueError, match="at most 200 characters"):

        class TooLong(Command):
            name = "c" * 201
