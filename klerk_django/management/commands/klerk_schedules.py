"""Management command that lists periodic schedules or enqueues due ticks."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from klerk_django import database, schedules
from klerk_django.exceptions import SettingsError
from klerk_django.models import Schedule


class Command(BaseCommand):
    help = "List the periodic schedules, or enqueue the jobs of due ticks now."

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(dest="action", required=True)
        subcommands.add_parser(
            "list", help="Show each schedule, its last tick and its next one."
        )
        subcommands.add_parser(
            "check",
            help="Enqueue due ticks, as workers do; safe beside running workers.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["action"] == "check":
                jobs = schedules.check_schedules()
                self.stdout.write(f"enqueued {len(jobs)} jobs")
                return
            self._list(schedules.declared())
        except SettingsError as error:
            raise CommandError(str(error)) from None

    def _list(self, declared: list[schedules.PeriodicSchedule]) -> None:
        if not declared:
            self.stdout.write("no schedules")
            return
        rows = Schedule.objects.using(database.alias()).in_bulk(
            [schedule.name for schedule in declared]
        )
        width = max(len(schedule.name) for schedule in declared)
        for schedule in declared:
            state = rows.get(schedule.name)
            last = state.last_tick_at if state else None
            upcoming = state.next_tick_at if state else None
            self.stdout.write(
                f"{schedule.name:<{width}}  {schedule.cron}  {schedule.time_zone}  "
                f"job={schedule.job} last={_when(last)} next={_when(upcoming)}"
            )


def _when(value: Any) -> str:
    return value.isoformat() if value is not None else "-"
