"""Actions for the tests of how actions end."""

import sys

from klerk_django import action

from .models import Run


@action(name="tests.exit_action")
def exit_action(key: str) -> None:
    Run.objects.create(kind="exit-action", key=key)
    sys.exit(f"action exiting on purpose: {key}")
