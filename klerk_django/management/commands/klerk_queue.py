"""Management command that pauses, resumes and lists queues."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from klerk_django import queues
from klerk_django.exceptions import QueueNameError


class Command(BaseCommand):
    help = (
        "Pause or resume a queue for every worker, forget the switch of a "
        "queue that is not paused, or list the queues."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(dest="action", required=True)
        for action, text in (
            ("pause", "Stop all workers from claiming the queue's jobs."),
            ("resume", "Let workers claim the queue's jobs again."),
            ("forget", "Delete the switch of a queue that is not paused."),
        ):
            subcommand = subcommands.add_parser(action, help=text)
            subcommand.add_argument("name", help="The queue's name.")
        subcommands.add_parser("list", help="Show queues, paused or not.")

    def handle(self, *args: Any, **options: Any) -> None:
        action, name = options["action"], options.get("name", "")
        try:
            if action == "list":
                self._list()
            elif action == "pause":
                queues.pause_queue(name)
                self.stdout.write(f"queue {name} paused")
            elif action == "resume":
                self._resume(name)
            else:
                self._forget(name)
        except QueueNameError as error:
            raise CommandError(str(error)) from None

    def _resume(self, name: str) -> None:
        if queues.resume_queue(name):
            self.stdout.write(f"queue {name} resumed")
        else:
            self.stdout.write(f"queue {name} is not paused")

    def _forget(self, name: str) -> None:
        if queues.forget_queue(name):
            self.stdout.write(f"queue {name} forgotten")
        elif name in queues.paused_queues():
            raise CommandError(f"queue {name} is paused; resume it first")
        else:
            self.stdout.write(f"queue {name} has no switch to forget")

    def _list(self) -> None:
        states = queues.queue_states()
        if not states:
            self.stdout.write("no queues")
            return
        width = max(len(state.name) for state in states)
        for state in states:
            switch = "paused" if state.paused else "active"
            self.stdout.write(
                f"{state.name:<{width}}  {switch:<6}  ready={state.ready} "
                f"scheduled={state.scheduled} running={state.running}"
            )
