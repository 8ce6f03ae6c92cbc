"""Management command that runs one klerk worker process."""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from klerk_django import database
from klerk_django.checks import database_problems
from klerk_django.conf import settings
from klerk_django.jobs import QUEUE_NAME
from klerk_django.worker import Worker, WorkerOptions, queues_from

# Longer waits overflow the platform's timeouts; a day is plenty.
MAX_POLL_SECONDS = 86400.0


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
            help="Exit once this worker runs no job and none may start now.",
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
            "--lease-seconds",
            type=float,
            default=None,
            help="How long a claim lasts without a heartbeat before another "
            "worker may run the job again (KLERK_LEASE_SECONDS).",
        )
        parser.add_argument(
            "--grace-seconds",
            type=float,
            default=None,
            help="How long running jobs may finish after SIGTERM "
            "(KLERK_SHUTDOWN_GRACE_SECONDS).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        problems = database_problems(database.connection())
        if problems:
            raise CommandError(" ".join(problems))
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

        concurrency, source = _pick(options, "concurrency", "WORKER_CONCURRENCY")
        if not _is_int(concurrency) or concurrency < 1:
            raise _bad(source, concurrency, "an integer of at least 1")
        poll, source = _pick(options, "poll_seconds", "POLL_SECONDS")
        if not _is_number(poll) or not 0 < poll <= MAX_POLL_SECONDS:
            raise _bad(
                source,
                poll,
                f"a number of seconds above 0 and at most {MAX_POLL_SECONDS:.0f}",
            )
        lease, source = _pick(options, "lease_seconds", "LEASE_SECONDS")
        if not _is_number(lease) or not 0 < lease <= MAX_POLL_SECONDS:
            raise _bad(
                source,
                lease,
                f"a number of seconds above 0 and at most {MAX_POLL_SECONDS:.0f}",
            )
        grace, source = _pick(options, "grace_seconds", "SHUTDOWN_GRACE_SECONDS")
        if not _is_number(grace) or grace < 0:
            raise _bad(source, grace, "a number of seconds, 0 or more")

        return WorkerOptions(
            queues=queues,
            concurrency=concurrency,
            burst=options["burst"],
            name=options["name"],
            poll_seconds=float(poll),
            grace_seconds=float(grace),
            listen=bool(settings.LISTEN),
            lease_seconds=float(lease),
        )


def _pick(options: dict[str, Any], option: str, setting: str) -> tuple[Any, str]:
    """Return the option's value, or the setting's, and where it came from."""
    if options[option] is None:
        return getattr(settings, setting), f"KLERK_{setting}"
    return options[option], "--" + option.replace("_", "-")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return numeric and not math.isnan(value)


def _bad(source: str, value: Any, expected: str) -> CommandError:
    return CommandError(f"{source} must be {expected}, got {value!r}.")


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
