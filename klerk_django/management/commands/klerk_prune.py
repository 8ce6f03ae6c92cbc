"""Management command that deletes old finished jobs and actions."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from klerk_django import retention


class Command(BaseCommand):
    help = (
        "Delete finished jobs (with their attempts) and finished actions "
        "older than N days; ready and running ones are never deleted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than-days",
            type=float,
            default=None,
            help="Age in days; KLERK_RETENTION_DAYS when left out.",
        )
        parser.add_argument(
            "--batch-size", type=int, default=1000, help="Rows per transaction."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        days, batch_size = options["older_than_days"], options["batch_size"]
        if batch_size < 1:
            raise CommandError(f"--batch-size must be at least 1, got {batch_size}.")
        if days is None:
            days = retention.retention_days()
            if days is None:
                self.stdout.write("KLERK_RETENTION_DAYS is None: nothing pruned")
                return
        elif not _usable(days):
            raise CommandError(
                "--older-than-days must be a number from 0 to "
                f"{retention.MAX_DAYS}, got {days!r}."
            )

        pruned = retention.prune(days, batch_size=batch_size)
        self.stdout.write(
            f"deleted jobs={pruned.jobs} attempts={pruned.attempts} "
            f"actions={pruned.actions}"
        )


def _usable(days: float) -> bool:
    try:
        retention.check_days(days)
    except ValueError:
        return False
    return True
