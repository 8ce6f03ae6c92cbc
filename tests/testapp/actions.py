"""Actions for the tests; each writes a Run row when it runs."""

from klerk_django import action

from .models import Run


@action(name="tests.note_action")
def note_action(key: str) -> None:
    Run.objects.create(kind="action", key=key)


@action(name="tests.broken_action")
def broken_action(key: str) -> None:
    Run.objects.create(kind="broken-action", key=key)
    raise RuntimeError(f"action failing on purpose: {key}")
