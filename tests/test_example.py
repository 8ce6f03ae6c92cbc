"""The example shop: its order command, and the whole run end to end."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from shop.commands import PlaceOrder
from shop.models import Customer, Order, Receipt

from klerk_django import Problem, Rejected, handle
from klerk_django.models import Action, CommandRecord, Job, JobStatus
from tests.workers import ROOT, worker_env

JOBS_LINE = re.compile(
    r"^Jobs: (\d+) of (\d+) succeeded, (\d+) retried, (\d+) scheduled\.$", re.M
)
ACTIONS_LINE = re.compile(r"^Actions: (\d+) of (\d+) succeeded\.", re.M)


@pytest.fixture
def customer() -> Customer:
    return Customer.objects.create(name="north-bakery", email="a@bakery.example")


def run_example() -> str:
    done = subprocess.run(
        [sys.executable, "example_project/manage.py", "run_example"],
        cwd=ROOT,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.django_db
def test_place_order_stores_order_jobs_and_receipt_action(customer):
    result = handle(PlaceOrder(customer=customer.name, amount_cents=12_50))

    assert result.ok, result.problems
    order = Order.objects.get(pk=result.value)
    assert order.status == Order.Status.PLACED
    jobs = {job.name: job for job in Job.objects.all()}
    assert set(jobs) == {"shop.charge_card", "shop.fraud_check", "shop.follow_up"}
    assert jobs["shop.fraud_check"].priority == 10
    assert jobs["shop.follow_up"].run_after > jobs["shop.follow_up"].created_at
    assert jobs["shop.charge_card"].arguments["args"] == [order.pk]
    assert jobs["shop.fraud_check"].arguments["args"] == [order.pk]
    # One follow-up mail per customer at a time: the customer is its key.
    assert jobs["shop.follow_up"].arguments["args"] == [order.pk, customer.name]
    assert jobs["shop.follow_up"].rate_key == customer.name
    assert list(Action.objects.values_list("name", flat=True)) == ["shop.send_receipt"]


@pytest.mark.django_db
def test_rejected_place_order_leaves_no_order_job_or_action(
    customer, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        result = handle(PlaceOrder(customer="unknown-shop", amount_cents=2_500_00))

    assert result.outcome == CommandRecord.Outcome.REJECTED
    assert {problem.field for problem in result.problems} == {
        "customer",
        "amount_cents",
    }
    assert not Order.objects.exists()
    assert not Job.objects.exists()
    assert not Action.objects.exists()
    assert callbacks == []


@pytest.mark.django_db
def test_place_order_rejected_after_writing_leaves_nothing_behind(
    customer, monkeypatch, django_capture_on_commit_callbacks
):
    place = PlaceOrder.execute

    def place_then_reject(command: PlaceOrder) -> None:
        place(command)
        raise Rejected([Problem("The card was reported stolen.", "stolen")])

    monkeypatch.setattr(PlaceOrder, "execute", place_then_reject)
    with django_capture_on_commit_callbacks() as callbacks:
        result = handle(PlaceOrder(customer=customer.name, amount_cents=12_50))

    assert result.outcome == CommandRecord.Outcome.REJECTED
    assert not Order.objects.exists()
    assert not Job.objects.exists()
    assert not Action.objects.exists()
    assert callbacks == []


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_run_example_shows_retried_scheduled_jobs_and_actions_twice():
    for _ in range(2):
        output = run_example()

        jobs = JOBS_LINE.search(output)
        actions = ACTIONS_LINE.search(output)
        assert jobs and actions, output
        succeeded, total, retried, scheduled = map(int, jobs.groups())
        assert succeeded == total >= 1, output
        assert retried >= 1, output
        assert scheduled >= 1, output
        assert int(actions.group(1)) >= 1, output
        assert "rejected: unknown-shop" in output
        # north-bakery's two follow-ups: one per customer per window.
        assert "held back by the rate limit" in output
        assert "shop.morning_summary: '0 6 * * *' in Europe/Berlin" in output

    assert Order.objects.count() == Receipt.objects.count() == 8
    assert set(Order.objects.values_list("status", flat=True)) == {"paid"}
    assert not Job.objects.exclude(status=JobStatus.SUCCEEDED).exists()
    assert Job.objects.filter(attempts__gt=1).exists()


@pytest.mark.django_db
def test_follow_up_is_asked_for_once_per_order_while_it_waits(customer):
    from shop.jobs import follow_up

    order = Order.objects.create(customer=customer, amount_cents=1_00)
    first = follow_up.enqueue(order.pk, customer.name)
    again = follow_up.enqueue(order.pk, customer.name)
    other = follow_up.enqueue(order.pk + 1, customer.name)

    assert again.pk == first.pk and again.is_duplicate
    assert not other.is_duplicate
