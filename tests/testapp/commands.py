"""Commands for the tests: they write notes, enqueue jobs, request actions.

``stages`` records which stages of a command ran, in order; ``hooks`` lets
a test put its own code inside ``RunHook.execute``; ``decisions`` holds
what the authorization rules of ``Permitted`` answer. Tests reset all three.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

from django import forms

from klerk_django import ALLOW, Command, Problem, Rejected, handle

from .actions import note_action
from .jobs import record
from .models import Note

stages: list[str] = []
hooks: dict[str, Callable[[Command], Any]] = {}
decisions: dict[str, Any] = {}


class AddNote(Command):
    """Write a note, enqueue a job and request an action for it.

    ``then`` makes the command misbehave after writing: "reject" rejects
    it, "raise" raises an error.
    """

    name = "tests.add_note"
    permission = "testapp.add_note"

    class Inputs(forms.Form):
        text = forms.CharField(max_length=100)
        then = forms.CharField(required=False)

        def clean_text(self) -> str:
            stages.append("inputs")
            return self.cleaned_data["text"]

    def validate(self) -> Iterator[Problem]:
        stages.append("validate")
        if self.inputs["text"] == "forbidden":
            yield Problem("Notes may not say 'forbidden'.", "forbidden", "text")
        if self.inputs["text"] == "explode":
            raise RuntimeError("a rule failed to run")

    def authorize(self, actor: Any) -> None:
        stages.append("authorize")

    def execute(self) -> int:
        stages.append("execute")
        note = Note.objects.create(text=self.inputs["text"])
        record.enqueue(note.text)
        note_action.request(note.text)

        if self.inputs["then"] == "reject":
            raise Rejected([Problem("The note conflicts.", "conflict", "text")])
        if self.inputs["then"] == "raise":
            raise RuntimeError("execute failed after writing")
        return note.pk


class AddNoteTwice(Command):
    """Write a note, then add a second one through a secondary command."""

    name = "tests.add_note_twice"

    class Inputs(forms.Form):
        first = forms.CharField(max_length=100)
        second = forms.CharField(max_length=100)

    def execute(self) -> list[Any]:
        note = Note.objects.create(text=self.inputs["first"])
        record.enqueue(note.text)

        secondary = handle(AddNote(text=self.inputs["second"]), actor=self.actor)
        return [note.pk, secondary.value]


class LockedNote(Command):
    """Write a note under a lock of its own, not the global one."""

    name = "tests.locked_note"

    class Inputs(forms.Form):
        text = forms.CharField(max_length=100)

    def lock_key(self) -> str:
        return f"note:{self.raw_inputs.get('text')}"

    def execute(self) -> int:
        return Note.objects.create(text=self.inputs["text"]).pk


class RunHook(Command):
    """Run the test's function registered in ``hooks`` under ``key``.

    Every actor may run it: the tests decide what it does.
    """

    name = "tests.run_hook"

    class Inputs(forms.Form):
        key = forms.CharField()

    def authorize(self, actor: Any) -> Any:
        return ALLOW

    def execute(self) -> Any:
        return hooks[self.inputs["key"]](self)


class KeyedHook(RunHook):
    """Run a hook under the lock of one account, read from clean inputs."""

    name = "tests.keyed_hook"

    class Inputs(forms.Form):
        key = forms.CharField()
        account = forms.IntegerField()

    def lock_key(self) -> str:
        return f"account:{self.inputs['account']}"


class ApartHook(RunHook):
    """Run a hook under a lock key that no other call shares."""

    name = "tests.apart_hook"

    def lock_key(self) -> str:
        return f"apart:{uuid.uuid4().hex}"


def decided_by_rule(actor: Any, command: Command) -> Any:
    return decisions.get("rule")


class Permitted(Command):
    """Write a note; its rules answer what ``decisions`` holds."""

    name = "tests.permitted"
    permission = "testapp.add_note"
    authorization = (decided_by_rule,)

    class Inputs(forms.Form):
        text = forms.CharField(max_length=100)

    def validate(self) -> Iterator[Problem]:
        stages.append("validate")
        if self.inputs["text"] == "invalid":
            yield Problem("The text is invalid.", "invalid_text", "text")

    def authorize(self, actor: Any) -> Any:
        stages.append("authorize")
        return decisions.get("authorize")

    def execute(self) -> int:
        stages.append("execute")
        return Note.objects.create(text=self.inputs["text"]).pk


class SignUp(Command):
    """Take a password and a pin, which records must never show."""

    name = "tests.sign_up"
    redacted_inputs = ("pin",)

    class Inputs(forms.Form):
        username = forms.CharField(max_length=100)
        password = forms.CharField(min_length=8)
        pin = forms.CharField(required=False)

    def validate(self) -> Iterator[Problem]:
        password = self.inputs["password"]
        if password.startswith("password"):
            yield Problem(f"{password!r} is too easy to guess.", "weak", "password")
        if self.inputs["pin"] == "raise":
            raise RuntimeError(f"cannot check {password}")

    def execute(self) -> str:
        return Note.objects.create(text=self.inputs["username"]).text
