"""Running commands from the admin: permission, CSRF, preview and run."""

from __future__ import annotations

import re
import uuid

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from klerk_django import DENY
from klerk_django.models import Action, CommandRecord, Job
from tests.testapp import commands
from tests.testapp.models import Note

pytestmark = pytest.mark.django_db

TOKEN = re.compile(r'name="_token" value="([0-9a-f]{32})"')


@pytest.fixture(autouse=True)
def clean_commands():
    commands.decisions.clear()
    yield
    commands.decisions.clear()


def run_url(name: str) -> str:
    return reverse("admin:klerk_django_commandrecord_run", args=[quote(name)])


LIST_URL = "/admin/klerk_django/commandrecord/commands/"
ADD_NOTE = "tests.add_note"


def client_for(*codenames: str, staff: bool = True, superuser: bool = False, **kw):
    person = User.objects.create_user(
        f"u-{uuid.uuid4().hex[:8]}", is_staff=staff, is_superuser=superuser
    )
    person.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client(**kw)
    client.force_login(person)
    return client, person


def nothing_stored() -> bool:
    return not (
        Note.objects.exists() or Job.objects.exists() or Action.objects.exists()
    )


def test_list_url_is_the_one_the_docs_give():
    assert reverse("admin:klerk_django_commandrecord_commands") == LIST_URL


def test_staff_with_the_permission_sees_the_form():
    client, _ = client_for("add_note")

    response = client.get(run_url(ADD_NOTE))

    assert response.status_code == 200
    content = response.content.decode()
    assert 'name="text"' in content and 'name="then"' in content
    assert 'name="_preview"' in content and 'name="_run"' in content
    assert "csrfmiddlewaretoken" in content
    assert nothing_stored() and not CommandRecord.objects.exists()


def test_list_shows_only_the_commands_the_user_may_run():
    client, _ = client_for("add_note")

    content = client.get(LIST_URL).content.decode()

    assert run_url(ADD_NOTE) in content
    assert run_url("tests.run_hook") not in content, "declares no permission"


def test_superuser_may_use_commands_without_a_declared_permission():
    client, _ = client_for(superuser=True)

    assert run_url("tests.run_hook") in client.get(LIST_URL).content.decode()
    assert client.get(run_url("tests.run_hook")).status_code == 200


def test_preview_shows_what_would_happen_and_keeps_nothing():
    client, _ = client_for("add_note")

    response = client.post(run_url(ADD_NOTE), {"text": "hello", "_preview": "1"})

    assert response.status_code == 200
    content = response.content.decode()
    assert "Preview: this would succeed" in content
    assert "tests.record" in content and "tests.note_action" in content
    assert nothing_stored()
    assert not CommandRecord.objects.exists()


def test_run_runs_the_command_as_the_user_and_shows_the_result():
    client, person = client_for("add_note")

    response = client.post(run_url(ADD_NOTE), {"text": "hello", "_run": "1"})

    assert response.status_code == 200
    note = Note.objects.get()
    saved = CommandRecord.objects.get()
    assert saved.actor == f"user:{person.username} (id={person.pk})"
    assert saved.token.startswith(f"admin:{person.pk}:")
    content = response.content.decode()
    assert "Succeeded" in content
    assert reverse("admin:klerk_django_commandrecord_change", args=[saved.pk]) in (
        content
    )
    assert reverse("admin:klerk_django_job_change", args=[Job.objects.get().pk]) in (
        content
    )
    assert saved.result == note.pk


def test_a_resent_form_does_not_run_the_command_twice():
    client, _ = client_for("add_note")
    token = TOKEN.search(client.get(run_url(ADD_NOTE)).content.decode()).group(1)
    form = {"text": "hello", "_run": "1", "_token": token}

    first = client.post(run_url(ADD_NOTE), form)
    again = client.post(run_url(ADD_NOTE), form)

    assert first.status_code == again.status_code == 200
    assert "This form was sent before" in again.content.decode()
    assert Note.objects.count() == 1
    assert CommandRecord.objects.count() == 1
    fresh = TOKEN.search(first.content.decode()).group(1)
    assert fresh != token, "after a run, the next run is a new request"


def test_a_preview_keeps_the_token_for_the_run_that_follows():
    client, _ = client_for("add_note")
    token = TOKEN.search(client.get(run_url(ADD_NOTE)).content.decode()).group(1)

    preview = client.post(
        run_url(ADD_NOTE), {"text": "hello", "_preview": "1", "_token": token}
    )

    assert TOKEN.search(preview.content.decode()).group(1) == token


def test_invalid_inputs_show_the_problems_and_keep_the_values():
    client, _ = client_for("add_note")

    response = client.post(run_url(ADD_NOTE), {"text": "forbidden", "_run": "1"})

    assert response.status_code == 200
    content = response.content.decode()
    assert "Notes may not say &#x27;forbidden&#x27;." in content
    assert 'value="forbidden"' in content
    assert CommandRecord.objects.get().outcome == "rejected"
    assert nothing_stored()


def test_staff_without_the_permission_gets_403_and_a_denied_record():
    client, person = client_for()

    assert client.get(run_url(ADD_NOTE)).status_code == 403
    assert not CommandRecord.objects.exists()

    for button in ("_run", "_preview"):
        response = client.post(run_url(ADD_NOTE), {"text": "hello", button: "1"})
        assert response.status_code == 403

    assert nothing_stored()
    denied = CommandRecord.objects.all()
    assert denied.count() == 2
    for saved in denied:
        assert saved.outcome == "rejected"
        assert saved.problems[0]["code"] == "forbidden"
        assert saved.actor.startswith(f"user:{person.username}")


def test_staff_without_any_command_permission_gets_403_on_the_list():
    client, _ = client_for()

    assert client.get(LIST_URL).status_code == 403


def test_a_deny_from_the_command_itself_is_a_403_page():
    client, _ = client_for("add_note")
    commands.decisions["authorize"] = DENY

    response = client.post(run_url("tests.permitted"), {"text": "x", "_run": "1"})

    assert response.status_code == 403
    assert "You are not allowed to run this command." in response.content.decode()
    assert nothing_stored()


def test_users_who_are_not_staff_are_sent_to_the_login():
    client, _ = client_for("add_note", staff=False)

    for response in (
        client.get(run_url(ADD_NOTE)),
        client.post(run_url(ADD_NOTE), {"text": "hello", "_run": "1"}),
    ):
        assert response.status_code == 302
        assert "/login/" in response["Location"]
    assert not CommandRecord.objects.exists()


def test_post_without_csrf_token_is_refused():
    client, _ = client_for("add_note", enforce_csrf_checks=True)

    response = client.post(run_url(ADD_NOTE), {"text": "hello", "_run": "1"})

    assert response.status_code == 403
    assert nothing_stored() and not CommandRecord.objects.exists()


def test_get_never_runs_anything_whatever_it_carries():
    client, _ = client_for("add_note")

    response = client.get(run_url(ADD_NOTE), {"text": "hello", "_run": "1"})

    assert response.status_code == 200
    assert nothing_stored() and not CommandRecord.objects.exists()
    assert client.put(run_url(ADD_NOTE)).status_code == 405
    assert client.post(LIST_URL).status_code == 405


def test_a_post_with_no_button_runs_nothing():
    client, _ = client_for("add_note")

    assert client.post(run_url(ADD_NOTE), {"text": "hello"}).status_code == 400
    assert nothing_stored() and not CommandRecord.objects.exists()


def test_an_unknown_command_is_404():
    client, _ = client_for(superuser=True)

    assert client.get(run_url("tests.nothing_here")).status_code == 404
    assert client.post(run_url("tests.nothing_here"), {"_run": "1"}).status_code == 404


def test_only_declared_inputs_reach_the_command():
    client, _ = client_for("add_note")

    client.post(run_url(ADD_NOTE), {"text": "hello", "_run": "1", "is_superuser": "1"})

    assert set(CommandRecord.objects.get().inputs) == {"text", "then"}
