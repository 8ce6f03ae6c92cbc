"""Authorization: actors, permissions, rules, and the order of the stages."""

from __future__ import annotations

import copy
import pickle

import pytest
from django.contrib.auth.models import AnonymousUser, Permission, User

from klerk_django import ALLOW, DENY, SYSTEM, Command, Problem, handle
from klerk_django.authorization import has_perm, is_staff
from klerk_django.models import Action, CommandRecord, Job
from tests.testapp import commands
from tests.testapp.actions import note_action
from tests.testapp.commands import AddNote, AddNoteTwice, Permitted
from tests.testapp.jobs import record
from tests.testapp.models import Note

pytestmark = pytest.mark.django_db

REJECTED = CommandRecord.Outcome.REJECTED


@pytest.fixture(autouse=True)
def clean_commands():
    for registry in (commands.stages, commands.hooks, commands.decisions):
        registry.clear()
    yield
    for registry in (commands.stages, commands.hooks, commands.decisions):
        registry.clear()


def user(name: str, *codenames: str, **fields) -> User:
    person = User.objects.create_user(name, **fields)
    perms = Permission.objects.filter(codename__in=codenames)
    assert perms.count() == len(codenames)
    person.user_permissions.set(perms)
    return User.objects.get(pk=person.pk)


def codes(result) -> list[str]:
    return [problem.code for problem in result.problems]


def test_no_actor_means_the_system_actor_which_is_allowed():
    result = handle(Permitted(text="hello"))

    assert result.ok, result.problems
    assert CommandRecord.objects.get().actor == "system"


def test_user_without_the_permission_is_forbidden_and_nothing_is_written():
    result = handle(Permitted(text="hello"), actor=user("bob"))

    assert result.outcome == REJECTED
    assert result.stage == "authorization"
    assert result.problems == [
        Problem(
            "You need the permission 'testapp.add_note' to run this command.",
            "forbidden",
        )
    ]
    assert "execute" not in commands.stages
    assert not Note.objects.exists()
    saved = CommandRecord.objects.get()
    assert saved.outcome == REJECTED
    assert saved.actor.startswith("user:bob")
    assert saved.problems[0]["code"] == "forbidden"


def test_user_with_the_permission_is_allowed():
    result = handle(Permitted(text="hello"), actor=user("ann", "add_note"))

    assert result.ok, result.problems
    assert Note.objects.get().text == "hello"


def test_inactive_user_with_the_permission_is_forbidden():
    idle = user("idle", "add_note", is_active=False)

    assert codes(handle(Permitted(text="hello"), actor=idle)) == ["forbidden"]


def test_anonymous_user_is_forbidden_and_recorded_as_anonymous():
    result = handle(Permitted(text="hello"), actor=AnonymousUser())

    assert codes(result) == ["forbidden"]
    assert CommandRecord.objects.get().actor == "anonymous"


def test_any_deny_wins_over_an_allow():
    commands.decisions["authorize"] = DENY

    result = handle(Permitted(text="hello"), actor=user("ann", "add_note"))

    assert result.problems == [
        Problem("You are not allowed to run this command.", "forbidden")
    ]
    assert not Note.objects.exists()


def test_the_system_actor_is_denied_by_an_explicit_deny():
    commands.decisions["rule"] = DENY

    assert codes(handle(Permitted(text="hello"))) == ["forbidden"]


def test_a_problem_denies_with_its_own_message():
    commands.decisions["authorize"] = Problem(
        "Only the author may change a note.", "forbidden", "text"
    )

    result = handle(Permitted(text="hello"))

    assert result.problems == [
        Problem("Only the author may change a note.", "forbidden", "text")
    ]


def test_every_deny_is_reported():
    commands.decisions["rule"] = Problem("Closed on Sundays.", "forbidden")
    commands.decisions["authorize"] = DENY

    result = handle(Permitted(text="hello"))

    assert [problem.message for problem in result.problems] == [
        "Closed on Sundays.",
        "You are not allowed to run this command.",
    ]


def test_a_rule_may_allow_an_actor_without_the_permission():
    commands.decisions["rule"] = ALLOW

    assert handle(Permitted(text="hello"), actor=user("bob")).ok


def test_a_rule_answering_something_else_fails_the_command():
    commands.decisions["authorize"] = True

    result = handle(Permitted(text="hello"))

    assert result.outcome == CommandRecord.Outcome.FAILED
    assert "return ALLOW, DENY, a Problem or None" in CommandRecord.objects.get().error


def test_authorization_runs_after_inputs_and_rules():
    bob = user("bob")

    bad_inputs = handle(Permitted(text=""), actor=bob)
    bad_rules = handle(Permitted(text="invalid"), actor=bob)

    assert (bad_inputs.stage, codes(bad_inputs)) == ("inputs", ["required"])
    assert (bad_rules.stage, codes(bad_rules)) == ("rules", ["invalid_text"])
    assert commands.stages == ["validate"]


def test_stages_run_in_order_when_all_pass():
    result = handle(AddNote(text="hello"))

    assert result.ok
    assert commands.stages == ["inputs", "validate", "authorize", "execute"]


def test_a_secondary_command_without_an_actor_runs_as_the_primary_actor():
    def second(command):
        return handle(Permitted(text="second")).value

    commands.hooks["second"] = second
    bob = user("bob")

    result = handle(commands.RunHook(key="second"), actor=bob)

    assert codes(result) == ["forbidden"]
    assert not Note.objects.exists()


def test_a_secondary_command_is_authorized_for_the_actor_it_names():
    def as_system(command):
        return handle(Permitted(text="second"), actor=SYSTEM).value

    commands.hooks["as_system"] = as_system

    result = handle(commands.RunHook(key="as_system"), actor=user("bob"))

    assert result.ok, result.problems
    assert Note.objects.get().text == "second"


def test_a_primary_without_rules_is_open_only_to_the_system_actor():
    ann = user("ann", "add_note")

    result = handle(AddNoteTwice(first="one", second="two"), actor=ann)

    assert codes(result) == ["forbidden"]
    assert handle(AddNoteTwice(first="one", second="two")).ok


def test_rule_helpers_allow_or_abstain():
    staff = user("staff", "add_note", is_staff=True)
    plain = user("plain")

    assert has_perm("testapp.add_note")(staff, None) is ALLOW
    assert has_perm("testapp.add_note")(plain, None) is None
    assert is_staff(staff, None) is ALLOW
    assert is_staff(plain, None) is None
    assert is_staff(SYSTEM, None) is None


def test_the_system_actor_is_one_object_everywhere():
    assert copy.deepcopy(SYSTEM) is SYSTEM
    assert pickle.loads(pickle.dumps(SYSTEM)) is SYSTEM
    assert str(SYSTEM) == "system"


def test_a_permission_that_is_not_a_name_is_refused_at_definition():
    with pytest.raises(TypeError, match="permission must be a permission name"):

        class Broken(Command):
            name = "tests.broken_permission"
            permission = 42


def test_writes_made_before_a_denial_are_undone(
    monkeypatch, django_capture_on_commit_callbacks
):
    def validate_and_write(command):
        Note.objects.create(text="written by a rule")
        record.enqueue("from a rule")
        note_action.request("from a rule")
        return []

    monkeypatch.setattr(Permitted, "validate", validate_and_write)

    with django_capture_on_commit_callbacks() as callbacks:
        result = handle(Permitted(text="hello"), actor=user("bob"))

    assert result.stage == "authorization"
    assert result.jobs == [] and result.actions == []
    assert callbacks == []
    assert not Note.objects.exists()
    assert not Job.objects.exists() and not Action.objects.exists()
    assert CommandRecord.objects.get().outcome == REJECTED
