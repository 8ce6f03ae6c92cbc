"""Management command that benchmarks klerk_django on this database."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from klerk_django import benchmark

CEILINGS = {
    "enqueue_per_s": "insert_ceiling_per_s",
    "bulk_enqueue_per_s": "insert_ceiling_per_s",
    "commands_per_s": "insert_ceiling_per_s",
    "drain_per_s_1_worker": "claim_finish_ceiling_per_s",
    "drain_per_s_2_workers": "claim_finish_ceiling_per_s",
}


class Command(BaseCommand):
    help = "Measure enqueue, drain, pickup latency and memory; print figures."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--json", action="store_true", help="Print one JSON object."
        )
        parser.add_argument(
            "--quick", action="store_true", help="Small counts, for a smoke run."
        )
        parser.add_argument(
            "--concurrency", type=int, default=4, help="Threads per worker process."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        counts = benchmark.BenchOptions.quick() if options["quick"] else None
        bench = counts or benchmark.BenchOptions()
        bench = benchmark.BenchOptions(
            **{**bench.__dict__, "concurrency": options["concurrency"]}
        )

        figures = benchmark.run(bench, lambda line: self.stderr.write(line))

        if options["json"]:
            self.stdout.write(json.dumps(figures))
        else:
            self.stdout.write(_table(figures))


def _table(figures: dict[str, Any]) -> str:
    lines = [f"{'figure':32} {'value':>12}  vs ceiling"]
    for key, value in figures.items():
        if isinstance(value, dict):
            shown = " / ".join(f"{name} {number}" for name, number in value.items())
            lines.append(f"{key:32} {shown}")
            continue
        ratio = ""
        ceiling = figures.get(CEILINGS.get(key, ""))
        if isinstance(value, float) and ceiling:
            ratio = f"  {value / ceiling:.2f}x {CEILINGS[key]}"
        shown = f"{value:12.1f}" if isinstance(value, float) else f"{value:>12}"
        lines.append(f"{key:32} {shown}{ratio}")
    return "\n".join(lines)
