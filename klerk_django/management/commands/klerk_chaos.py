"""Management command that runs the chaos check against this database."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from klerk_django import chaos_run as chaos


class Command(BaseCommand):
    help = (
        "For test databases only: on the configured database, start workers "
        "on the klerk-chaos queue, enqueue chaos jobs for --seconds while "
        "killing those workers at random (SIGKILL or SIGTERM), drain, and "
        "print lost and duplicated jobs. It deletes and leaves behind jobs "
        "of the klerk-chaos queue."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--seconds", type=float, default=60.0)
        parser.add_argument("--workers", type=int, default=3)
        parser.add_argument("--concurrency", type=int, default=2)
        parser.add_argument("--lease-seconds", type=float, default=3.0)
        parser.add_argument("--drain-seconds", type=float, default=300.0)

    def handle(self, *args: Any, **options: Any) -> None:
        for name in ("seconds", "workers", "concurrency", "lease_seconds"):
            if options[name] <= 0:
                flag = "--" + name.replace("_", "-")
                raise CommandError(f"{flag} must be above 0, got {options[name]!r}.")
        settings = chaos.ChaosOptions(
            seconds=options["seconds"],
            workers=options["workers"],
            concurrency=options["concurrency"],
            lease_seconds=options["lease_seconds"],
            drain_seconds=options["drain_seconds"],
        )

        with tempfile.TemporaryDirectory(prefix="klerk-chaos-") as folder:
            report = chaos.run(settings, Path(folder))

        for detail in report.details:
            self.stderr.write(detail)
        self.stdout.write(report.line())
        if report.lost or report.duplicated:
            raise CommandError("chaos found lost or duplicated jobs", returncode=1)
