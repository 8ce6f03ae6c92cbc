"""Side effects inside commands: mail and direct calls are refused."""

from __future__ import annotations

import logging

import pytest
from django.core import mail
from django.test import override_settings
from django.utils.log import AdminEmailHandler

from klerk_django import allow_side_effects, handle
from klerk_django.exceptions import SideEffectInCommand
from klerk_django.models import CommandRecord
from tests.testapp import commands
from tests.testapp.actions import note_action
from tests.testapp.commands import RunHook
from tests.testapp.jobs import record
from tests.testapp.models import Note, Run

pytestmark = pytest.mark.django_db

FAILED = CommandRecord.Outcome.FAILED


@pytest.fixture(autouse=True)
def clean_commands():
    commands.hooks.clear()
    yield
    commands.hooks.clear()


def send_one(command):
    mail.send_mail("Hi", "Body", "shop@example.com", ["a@example.com"])


def send_message(command):
    mail.EmailMessage("Hi", "Body", to=["a@example.com"]).send()


def send_many(command):
    mail.send_mass_mail([("Hi", "Body", "shop@example.com", ["a@example.com"])])


def call_job(command):
    record("direct")


def call_action(command):
    note_action("direct")


def run_refused(hook) -> CommandRecord:
    commands.hooks["effect"] = lambda command: (
        Note.objects.create(text="written"),
        hook(command),
    )

    result = handle(RunHook(key="effect"))

    assert result.outcome == FAILED
    assert result.problems[0].message == "The command failed: SideEffectInCommand."
    assert not Note.objects.exists()
    return CommandRecord.objects.get()


@pytest.mark.parametrize("hook", [send_one, send_message, send_many])
def test_mail_sent_inside_a_command_fails_it(hook):
    saved = run_refused(hook)

    assert mail.outbox == []
    assert "tried to send mail" in saved.error
    assert "Send it from an action" in saved.error


def test_mail_on_a_connection_opened_before_the_command_is_refused_too():
    opened = mail.get_connection()

    def send_on_it(command):
        mail.EmailMessage("Hi", "Body", to=["a@example.com"], connection=opened).send()

    saved = run_refused(send_on_it)

    assert "tried to send mail" in saved.error
    assert mail.outbox == []


def test_calling_a_job_function_directly_fails_the_command():
    saved = run_refused(call_job)

    assert "call the job function 'tests.record' directly" in saved.error
    assert "tests.record.enqueue(...)" in saved.error
    assert not Run.objects.exists()


def test_calling_an_action_directly_fails_the_command():
    saved = run_refused(call_action)

    assert "call the action 'tests.note_action' directly" in saved.error
    assert not Run.objects.exists()


def test_rules_are_guarded_too(monkeypatch):
    def validate(command):
        send_one(command)
        return []

    monkeypatch.setattr(RunHook, "validate", validate)
    commands.hooks["nothing"] = lambda command: None

    result = handle(RunHook(key="nothing"))

    assert result.outcome == FAILED
    assert mail.outbox == []


def test_a_dry_run_is_guarded_too():
    commands.hooks["effect"] = send_one

    result = handle(RunHook(key="effect"), dry_run=True)

    assert result.outcome == FAILED
    assert mail.outbox == []


def test_outside_commands_mail_and_direct_calls_work():
    handle(RunHook(key="warm"), dry_run=True)

    send_one(None)
    assert record("direct") == "direct"
    note_action("direct")

    assert len(mail.outbox) == 1
    assert Run.objects.count() == 2


@override_settings(KLERK_GUARD_SIDE_EFFECTS=False)
def test_the_setting_turns_the_guard_off():
    commands.hooks["effect"] = send_one

    assert handle(RunHook(key="effect")).ok

    assert len(mail.outbox) == 1


def test_allow_side_effects_lets_one_block_through():
    def send_anyway(command):
        with allow_side_effects():
            send_one(command)
        with pytest.raises(SideEffectInCommand):
            send_one(command)

    commands.hooks["effect"] = send_anyway

    assert handle(RunHook(key="effect")).ok

    assert len(mail.outbox) == 1


@override_settings(ADMINS=[("Ops", "ops@example.com")])
def test_error_mails_of_the_admin_handler_still_go_out():
    handler = AdminEmailHandler()
    logger = logging.getLogger("tests.command_guards")
    logger.addHandler(handler)

    def log_error(command):
        logger.error("something to know about")

    commands.hooks["log"] = log_error
    try:
        assert handle(RunHook(key="log")).ok
    finally:
        logger.removeHandler(handler)

    assert [message.to for message in mail.outbox] == [["ops@example.com"]]
