"""The example run: place orders, run workers until done, print what ran.

1. migrate, and add the customers and the clerk if they are missing;
2. preview the first order with a dry run, then place the orders through
   ``handle`` as the clerk, each with an idempotency token; one order is
   rejected by the command's rules. Send the first order again with its
   token (it is not placed twice), and let a visitor without the
   permission try one (authorization rejects it);
3. run ``manage.py klerk_worker --burst`` in a new process until none of
   this run's jobs is ready or running, sleeping until the next job is due
   in between, so that retries and the scheduled follow-ups run too;
4. print every job and action of this run, then the counts;
5. check the periodic schedules as a worker does, and print when the
   shop's morning summary ticks next.

Only this run's jobs are waited for and shown, so the example can run again
and again on the same database.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import QuerySet
from django.utils import timezone

from klerk_django import CommandResult, handle
from klerk_django.actions import wait_for_actions
from klerk_django.models import (
    Action,
    ActionStatus,
    Attempt,
    Job,
    JobStatus,
    Schedule,
)
from klerk_django.schedules import check_schedules, declared

from .commands import FOLLOW_UP_DELAY, PlaceOrder
from .jobs import QUEUE, follow_up
from .models import Customer, Order

MANAGE_PY = Path(__file__).resolve().parent.parent / "manage.py"
CUSTOMERS = {
    "north-bakery": "orders@north-bakery.example",
    "harbour-books": "accounts@harbour-books.example",
    "river-cafe": "hello@river-cafe.example",
}
ORDERS = [
    ("north-bakery", 12_50),
    ("harbour-books", 89_00),
    ("river-cafe", 640_00),
    ("north-bakery", 23_75),
    ("unknown-shop", 2_500_00),
]
CLERK = "clerk"
VISITOR = "visitor"
# Safety nets against a hung run, not expectations of how long it takes.
DEADLINE_SECONDS = 300.0
WORKER_TIMEOUT_SECONDS = 120.0
LONGEST_SLEEP_SECONDS = 5.0

Write = Callable[[str], object]


@dataclass
class Placed:
    """What the accepted orders asked for, as returned by ``handle``."""

    order_ids: list[int] = field(default_factory=list)
    job_ids: list[int] = field(default_factory=list)
    action_ids: list[int] = field(default_factory=list)
    scheduled_ids: set[int] = field(default_factory=set)
    rejected: int = 0


@dataclass(frozen=True)
class Summary:
    """The counts the run ends with."""

    jobs: int
    succeeded: int
    retried: int
    scheduled: int
    actions: int
    actions_succeeded: int
    rejected: int


def run(write: Write) -> Summary:
    """Run the whole example, writing what happens with ``write``."""
    call_command("migrate", verbosity=0)
    for name, email in CUSTOMERS.items():
        Customer.objects.get_or_create(name=name, defaults={"email": email})

    placed = place_orders(write)
    run_workers(placed.job_ids, write)
    wait_for_actions()

    summary = report(placed, write)
    show_schedules(write)
    return summary


def place_orders(write: Write) -> Placed:
    """Place every example order through ``handle`` and collect the results."""
    write("Placing orders")
    clerk, visitor = shop_users()
    tokens = [
        f"example-{uuid.uuid4().hex[:12]}-{index}" for index in range(len(ORDERS))
    ]

    preview(clerk, write)
    placed = Placed()
    for (customer, amount_cents), token in zip(ORDERS, tokens, strict=True):
        command = PlaceOrder(customer=customer, amount_cents=amount_cents)
        result = handle(command, actor=clerk, token=token)
        if result.ok:
            _remember(placed, result)
            write(
                f"  order {result.value} placed: {customer}, "
                f"{_money(amount_cents)}, {len(result.jobs)} jobs, "
                f"{len(result.actions)} action"
            )
        else:
            placed.rejected += 1
            _write_rejection(result, f"{customer}, {_money(amount_cents)}", write)

    send_again(clerk, tokens[0], write)
    try_without_permission(visitor, write)
    return placed


def shop_users() -> tuple[User, User]:
    """Return the clerk, who may place orders, and a visitor, who may not."""
    clerk, _ = User.objects.get_or_create(username=CLERK)
    clerk.user_permissions.add(
        Permission.objects.get(content_type__app_label="shop", codename="add_order")
    )
    visitor, _ = User.objects.get_or_create(username=VISITOR)
    # Fresh objects: Django caches permissions on the instance.
    return User.objects.get(pk=clerk.pk), User.objects.get(pk=visitor.pk)


def preview(clerk: User, write: Write) -> None:
    """Dry-run the first order: what it would do, with nothing kept."""
    customer, amount_cents = ORDERS[0]
    command = PlaceOrder(customer=customer, amount_cents=amount_cents)
    result = handle(command, actor=clerk, dry_run=True)
    write(
        f"  preview (dry run): {customer}, {_money(amount_cents)} would store "
        f"{len(result.jobs)} jobs and {len(result.actions)} action; nothing kept"
    )


def send_again(clerk: User, token: str, write: Write) -> None:
    """Send the first order again with its token, as a client retrying."""
    customer, amount_cents = ORDERS[0]
    command = PlaceOrder(customer=customer, amount_cents=amount_cents)
    result = handle(command, actor=clerk, token=token)
    state = "answered from its record" if result.repeated else "placed again"
    write(f"  sent again with the same token: order {result.value}, {state}")


def try_without_permission(visitor: User, write: Write) -> None:
    """Let a user without the shop.add_order permission try an order."""
    customer, amount_cents = ORDERS[0]
    command = PlaceOrder(customer=customer, amount_cents=amount_cents)
    result = handle(command, actor=visitor)
    _write_rejection(result, f"{visitor.username}, {customer}", write)


def _write_rejection(result: CommandResult, what: str, write: Write) -> None:
    write(f"  {result.outcome}: {what}")
    for problem in result.problems:
        write(f"    - {problem.field or 'order'}: {problem.message}")


def _remember(placed: Placed, result: CommandResult) -> None:
    placed.order_ids.append(result.value)
    for job in result.jobs:
        placed.job_ids.append(job.pk)
        if job.run_after > job.created_at:
            placed.scheduled_ids.add(job.pk)
    placed.action_ids.extend(action.pk for action in result.actions)


def run_workers(job_ids: list[int], write: Write) -> None:
    """Run burst workers until none of ``job_ids`` is ready or running."""
    write("")
    write("Running workers until every job has ended")
    deadline = time.monotonic() + DEADLINE_SECONDS
    for number in itertools.count(1):
        _run_worker(number, write)

        pending = Job.objects.filter(
            pk__in=job_ids, status__in=[JobStatus.READY, JobStatus.RUNNING]
        )
        if not pending.exists():
            return
        if time.monotonic() > deadline:
            raise CommandError(
                f"Jobs still unfinished after {DEADLINE_SECONDS:.0f} seconds: "
                f"{sorted(pending.values_list('pk', flat=True))}."
            )

        pause = _seconds_until_due(pending)
        write(f"  next job due in {pause:.1f} s, waiting")
        time.sleep(pause)


def _run_worker(number: int, write: Write) -> None:
    # The worker inherits this process's settings module, so the example
    # also works under other settings (the test suite's, for one).
    env = dict(os.environ, DJANGO_SETTINGS_MODULE=settings.SETTINGS_MODULE)
    command = [
        sys.executable,
        str(MANAGE_PY),
        "klerk_worker",
        "--burst",
        "--queue",
        QUEUE,
    ]
    done = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_SECONDS,
        check=False,
    )

    write(f"  worker run {number}: exit code {done.returncode}")
    for line in (done.stdout + done.stderr).splitlines():
        write(f"    | {line}")
    if done.returncode != 0:
        raise CommandError(f"klerk_worker exited with code {done.returncode}.")


def _seconds_until_due(pending: QuerySet[Job]) -> float:
    ready = Job.objects.filter(pk__in=pending, status=JobStatus.READY)
    earliest = ready.order_by("run_after").values_list("run_after", flat=True)
    first = earliest.first()
    if first is None:
        # Running in a worker started elsewhere: look again shortly.
        return 0.5
    seconds = (first - timezone.now()).total_seconds()
    return min(max(seconds, 0.1), LONGEST_SLEEP_SECONDS)


def _write_held_back(jobs: list[Job], write: Write) -> None:
    """Print the follow-ups that waited for their customer's rate limit."""
    # A held-back job's run_after moves to when its window has room.
    held = [
        job
        for job in jobs
        if job.name == follow_up.name
        and job.run_after > job.created_at + FOLLOW_UP_DELAY
    ]
    if not held:
        return
    write("")
    write("Follow-ups held back by the rate limit of one per customer")
    for job in held:
        waited = job.run_after - (job.created_at + FOLLOW_UP_DELAY)
        customer = job.arguments["args"][1]
        write(
            f"  job {job.pk} ({customer}): held back until "
            f"{waited.total_seconds():.1f} s after it was due"
        )


def report(placed: Placed, write: Write) -> Summary:
    """Print the jobs, actions and orders of this run; return the counts."""
    jobs = _in_start_order(list(Job.objects.filter(pk__in=placed.job_ids)))
    actions = list(Action.objects.filter(pk__in=placed.action_ids).order_by("pk"))
    orders = list(
        Order.objects.filter(pk__in=placed.order_ids)
        .select_related("customer", "receipt")
        .order_by("pk")
    )

    _write_jobs(jobs, write)
    _write_retries(jobs, write)
    _write_held_back(jobs, write)
    _write_actions(actions, write)
    _write_orders(orders, write)

    summary = Summary(
        jobs=len(jobs),
        succeeded=sum(job.status == JobStatus.SUCCEEDED for job in jobs),
        retried=sum(job.attempts > 1 for job in jobs),
        scheduled=len(placed.scheduled_ids),
        actions=len(actions),
        actions_succeeded=sum(
            action.status == ActionStatus.SUCCEEDED for action in actions
        ),
        rejected=placed.rejected,
    )
    write("")
    write(
        f"Jobs: {summary.succeeded} of {summary.jobs} succeeded, "
        f"{summary.retried} retried, {summary.scheduled} scheduled."
    )
    write(
        f"Actions: {summary.actions_succeeded} of {summary.actions} succeeded. "
        f"Orders rejected: {summary.rejected}."
    )
    return summary


def show_schedules(write: Write) -> None:
    """Check the schedules as a worker does; print each one's next tick."""
    check_schedules()
    rows = Schedule.objects.in_bulk([schedule.name for schedule in declared()])
    write("")
    write("Periodic schedules")
    for schedule in declared():
        upcoming = rows[schedule.name].next_tick_at
        when = "-"
        if upcoming is not None:
            local = timezone.localtime(upcoming, schedule.zone)
            when = f"{local:%Y-%m-%d %H:%M %Z} ({upcoming:%H:%M} UTC)"
        write(
            f"  {schedule.name}: '{schedule.cron}' in {schedule.time_zone} "
            f"enqueues {schedule.job}, next tick {when}"
        )


def _in_start_order(jobs: list[Job]) -> list[Job]:
    first_runs = dict(
        Attempt.objects.filter(job__in=jobs, number=1).values_list(
            "job_id", "started_at"
        )
    )
    never = timezone.now() + timedelta(days=1)

    def key(job: Job) -> tuple[object, int, int]:
        return (first_runs.get(job.pk) or never, -job.priority, job.pk)

    return sorted(jobs, key=key)


def _write_jobs(jobs: list[Job], write: Write) -> None:
    write("")
    write("Jobs, in the order they first started")
    write(
        f"  {'id':>4}  {'name':<17} {'order':>5}  {'priority':>8}  "
        f"{'status':<9}  {'attempts':>8}  result"
    )
    for job in jobs:
        write(
            f"  {job.pk:>4}  {job.name:<17} {_order_of(job):>5}  "
            f"{job.priority:>8}  {job.status:<9}  {job.attempts:>8}  "
            f"{job.result if job.result is not None else ''}"
        )


def _write_retries(jobs: list[Job], write: Write) -> None:
    failed = Attempt.objects.filter(job__in=jobs).exclude(
        outcome=Attempt.Outcome.SUCCEEDED
    )
    if not failed.exists():
        return
    write("")
    write("Attempts that failed and were retried")
    for attempt in failed.order_by("job_id", "number"):
        write(f"  job {attempt.job_id} attempt {attempt.number}: {attempt.error}")


def _write_actions(actions: list[Action], write: Write) -> None:
    write("")
    write("Actions")
    write(f"  {'id':>4}  {'name':<17} {'order':>5}  status")
    for action in actions:
        write(
            f"  {action.pk:>4}  {action.name:<17} {_order_of(action):>5}  "
            f"{action.status}"
        )


def _write_orders(orders: list[Order], write: Write) -> None:
    write("")
    write("Orders")
    for order in orders:
        receipt = getattr(order, "receipt", None)
        write(
            f"  order {order.pk}: {order.customer.name}, {order.amount}, "
            f"{order.status}, receipt {'sent' if receipt else 'not sent'}, "
            f"{'followed up' if order.followed_up_at else 'not followed up'}"
        )


def _order_of(row: Job | Action) -> str:
    args = row.arguments.get("args") or [""]
    return str(args[0])


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"
