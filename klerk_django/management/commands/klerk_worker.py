"""Management command that runs one klerk worker process."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from klerk_django.conf import settings
from klerk_django.jobs import QUEUE_NAME
from klerk_django.worker import Worker, WorkerOptions, queues_from


class Command(BaseCommand):
    help = "Claim and run klerk jobs until stopped with SIGTERM or SIGINT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--queue",
            "-q",
            action="append",
            default=[],
            help="Queue to serve; repeat or separate with commas. Default: all.",
        )
        parser.add_argument(
            "--concurrency",
            "-c",
            type=int,
            default=None,
            help="Jobs run at once, one thread each (KLERK_WORKER_CONCURRENCY).",
        )
        parser.add_argument(
            "--burst",
            action="store_true",
            help="Exit once no job is ready and none is running.",
        )
        parser.add_argument(
            "--name", default="", help="Display name; each start still gets a new id."
        )
        parser.add_argument(
            "--poll-seconds",
            type=float,
            default=None,
            help="Longest wait between looks for ready jobs (KLERK_POLL_SECONDS).",
        )
        parser.add_argument(
            "--grace-seconds",
            type=float,
            default=None,
            help="How long running jobs may finish after SIGTERM "
            "(KLERK_SHUTDOWN_GRACE_SECONDS).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        worker = Worker(self._options(options))
        worker.stop_on_signals()
        _show_logs(int(options["verbosity"]))

        code = worker.run()
        if worker.running:
            # Job threads cannot be stopped from outside; their attempts are
            # already recorded as interrupted, so end the process now.
            logging.shutdown()
            os._exit(code)
        if code:
            sys.exit(code)

    def _options(self, options: dict[str, Any]) -> WorkerOptions:
        queues = queues_from(options["queue"])
        for queue in queues:
            if not QUEUE_NAME.match(queue):
                raise CommandError(
                    f"--queue {queue!r} is not a queue name: use 1 to 100 "
                    "letters, digits or _.:-"
                )

        concurrency = _pick(options["concurrency"], settings.WORKER_CONCURRENCY)
        if not isinstance(concurrency, int) or concurrency < 1:
            raise CommandError(f"--concurrency must be 1 or more, got {concurrency!r}.")
        poll = _pick(options["poll_seconds"], settings.POLL_SECONDS)
        if poll <= 0:
            raise CommandError(f"--poll-seconds must be above 0, got {poll!r}.")
        grace = _pick(options["grace_seconds"], settings.SHUTDOWN_GRACE_SECONDS)
        if grace < 0:
            raise CommandError(f"--grace-seconds must be 0 or more, got {grace!r}.")

        return WorkerOptions(
            queues=queues,
            concurrency=concurrency,
            burst=options["burst"],
            name=options["name"],
            poll_seconds=float(poll),
            grace_seconds=float(grace),
            listen=bool(settings.LISTEN),
        )


def _pick(value: Any, fallback: Any) -> Any:
    return fallback if value is None else value


def _show_logs(verbosity: int) -> None:
    """Send klerk's logs to stderr unless the project configured them."""
    logger = logging.getLogger("klerk_django")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
