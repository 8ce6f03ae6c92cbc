"""Management command that pauses, resumes and lists queues."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from klerk_django import queues
from klerk_django.exceptions import EnqueueOptionError


class Command(BaseCommand):
    help = "Pause or resume a queue for every worker, or list the queues."

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(dest="action", required=True)
        for action, text in (
            ("pause", "Stop all workers from claiming the queue's jobs."),
            ("resume", "Let workers claim the queue's jobs again."),
        ):
            subcommand = subcommands.add_parser(action, help=text)
            subcommand.add_argument("name", help="The queue's name.")
        subcommands.add_parser("list", help="Show queues, paused or not.")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "list":
            self._list()
            return
        change = queues.pause_queue if action == "pause" else queues.resume_queue
        try:
            change(options["name"])
        except EnqueueOptionError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"queue {options['name']} {action}d")

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
                f"running={state.running}"
            )
