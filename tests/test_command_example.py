"""The example shop's use of commands: rules, permission, token, dry run."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from shop import demo
from shop.commands import PlaceOrder
from shop.models import Customer, Order

from klerk_django import handle
from klerk_django.models import CommandRecord, Job

pytestmark = pytest.mark.django_db


@pytest.fixture
def customers() -> None:
    for name, email in demo.CUSTOMERS.items():
        Customer.objects.create(name=name, email=email)


def test_placing_the_example_orders_previews_repeats_and_refuses(customers):
    lines: list[str] = []

    placed = demo.place_orders(lines.append)

    output = "\n".join(lines)
    assert (
        "  preview (dry run): north-bakery, 12.50 would store 3 jobs and 1 "
        "action; nothing kept" in output
    )
    first = placed.order_ids[0]
    assert (
        f"  sent again with the same token: order {first}, answered from its record"
        in output
    )
    assert "  rejected: visitor, north-bakery" in output
    assert "You need the permission 'shop.add_order'" in output
    assert "rejected: unknown-shop, 2500.00" in output
    assert Order.objects.count() == len(placed.order_ids) == 4
    assert placed.rejected == 1


def test_orders_are_placed_by_the_clerk_under_a_token(customers):
    demo.place_orders(lambda line: None)

    clerk = User.objects.get(username=demo.CLERK)
    records = CommandRecord.objects.filter(name="shop.place_order")
    placed = records.filter(outcome="succeeded")
    assert placed.count() == 4
    assert all(r.actor == f"user:clerk (id={clerk.pk})" for r in placed)
    assert all(r.token.startswith("example-") for r in placed)
    refused = records.get(actor__startswith="user:visitor")
    assert refused.problems[0]["code"] == "forbidden"


def test_a_user_with_the_permission_may_place_an_order(customers):
    clerk, visitor = demo.shop_users()

    assert handle(PlaceOrder(customer="river-cafe", amount_cents=5_00), actor=clerk).ok
    refused = handle(
        PlaceOrder(customer="river-cafe", amount_cents=5_00), actor=visitor
    )

    assert refused.stage == "authorization"
    assert Job.objects.count() == 3
