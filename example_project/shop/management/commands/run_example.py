"""Management command that runs the example shop from start to end."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from shop import demo


class Command(BaseCommand):
    help = (
        "Migrate, place example orders, run klerk workers until their jobs "
        "end, and print what ran."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        demo.run(self.stdout.write)
