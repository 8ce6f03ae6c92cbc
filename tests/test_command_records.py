"""Command records: what they keep, and the inputs they must not show."""

from __future__ import annotations

import pytest
from django.test import override_settings

from klerk_django import Problem, handle
from klerk_django.commands import record_denied
from klerk_django.exceptions import SettingsError
from klerk_django.models import CommandRecord
from tests.testapp.commands import AddNote, SignUp

pytestmark = pytest.mark.django_db

HIDDEN = "********"


def test_passwords_and_declared_inputs_are_stored_hidden():
    result = handle(SignUp(username="ann", password="s3cret-horse", pin="1234"))

    assert result.ok, result.problems
    saved = CommandRecord.objects.get()
    assert saved.inputs == {"username": "ann", "password": HIDDEN, "pin": HIDDEN}


def test_hidden_values_are_hidden_in_problems_and_errors_too():
    rejected = handle(SignUp(username="ann", password="password123"))
    failed = handle(SignUp(username="bob", password="s3cret-horse", pin="raise"))

    assert rejected.problems == [
        Problem("'password123' is too easy to guess.", "weak", "password")
    ]
    records = {r.outcome: r for r in CommandRecord.objects.all()}
    assert records["rejected"].problems[0]["message"] == (
        f"'{HIDDEN}' is too easy to guess."
    )
    assert "cannot check" in records["failed"].error
    assert "s3cret-horse" not in records["failed"].error
    assert failed.outcome == "failed"


def test_inputs_rejected_by_the_form_are_stored_hidden_as_given():
    handle(SignUp(username="ann", password="short"))

    saved = CommandRecord.objects.get()
    assert saved.inputs == {"username": "ann", "password": HIDDEN}
    assert saved.problems[0]["field"] == "password"


@override_settings(KLERK_REDACTED_INPUTS=["TEXT"])
def test_the_setting_names_inputs_to_hide_ignoring_case():
    handle(AddNote(text="diary", then=""))

    assert CommandRecord.objects.get().inputs == {"text": HIDDEN, "then": ""}


@override_settings(KLERK_REDACTED_INPUTS="password")
def test_a_setting_that_is_not_a_list_is_reported():
    with pytest.raises(SettingsError, match="KLERK_REDACTED_INPUTS"):
        handle(AddNote(text="diary"))


def test_a_repeat_with_the_same_secret_is_the_same_request():
    first = handle(SignUp(username="ann", password="s3cret-horse"), token="t-1")
    again = handle(SignUp(username="ann", password="s3cret-horse"), token="t-1")

    assert first.ok and again.repeated


def test_record_denied_writes_a_rejected_record_without_running():
    result = record_denied(AddNote(text="hello", password="pw"), actor="intruder")

    assert result.outcome == "rejected" and result.stage == "authorization"
    saved = CommandRecord.objects.get()
    assert saved.pk == result.record_id
    assert saved.actor == "intruder"
    assert saved.problems[0]["code"] == "forbidden"
    assert saved.inputs == {"text": "hello", "password": HIDDEN}


def test_record_keeps_actor_token_outcome_and_duration():
    result = handle(AddNote(text="hello"), token="t-2")

    saved = CommandRecord.objects.get()
    assert (saved.pk, saved.token, saved.outcome) == (
        result.record_id,
        "t-2",
        "succeeded",
    )
    assert saved.duration_ms >= 0
    assert saved.actor == "system"
