"""The shop's commands: the only way orders are placed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from django import forms

from klerk_django import Command, Problem

from .actions import send_receipt
from .jobs import charge_card, follow_up, fraud_check
from .models import Customer, Order

LIMIT_CENTS = 1_000_00
FOLLOW_UP_DELAY = timedelta(seconds=3)


class PlaceOrder(Command):
    """Place an order, charge it, check it, follow it up, send a receipt."""

    name = "shop.place_order"
    # Who may place orders: users with the permission, and the system.
    permission = "shop.add_order"

    class Inputs(forms.Form):
        customer = forms.CharField(max_length=100)
        amount_cents = forms.IntegerField(min_value=1)

    def validate(self) -> Iterator[Problem]:
        name = self.inputs["customer"]
        self.customer = Customer.objects.filter(name=name).first()
        if self.customer is None:
            yield Problem(f"No customer is called {name!r}.", "unknown", "customer")

        amount = self.inputs["amount_cents"]
        if amount > LIMIT_CENTS:
            yield Problem(
                f"Orders are limited to {LIMIT_CENTS} cents, got {amount}.",
                "over_limit",
                "amount_cents",
            )

    def execute(self) -> int:
        order = Order.objects.create(
            customer=self.customer, amount_cents=self.inputs["amount_cents"]
        )

        # Stored in this transaction: they exist if and only if the order does.
        charge_card.enqueue(order.pk)
        fraud_check.enqueue(order.pk)
        follow_up.using(delay=FOLLOW_UP_DELAY).enqueue(order.pk, self.customer.name)
        send_receipt.request(order.pk)
        return order.pk
