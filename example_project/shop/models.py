"""The shop's data: customers, their orders, and the receipts sent."""

from __future__ import annotations

from django.db import models


class Customer(models.Model):
    """Someone allowed to place orders."""

    name = models.CharField(max_length=100, unique=True)
    email = models.EmailField()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Order(models.Model):
    """An order; its status follows the card payment."""

    class Status(models.TextChoices):
        PLACED = "placed", "placed"
        PAID = "paid", "paid"
        PAYMENT_FAILED = "payment_failed", "payment failed"

    customer = models.ForeignKey(
        Customer, on_delete=models.PROTECT, related_name="orders"
    )
    amount_cents = models.PositiveIntegerField()
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.PLACED
    )
    created_at = models.DateTimeField(auto_now_add=True)
    followed_up_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"order {self.pk} ({self.status})"

    @property
    def amount(self) -> str:
        return f"{self.amount_cents // 100}.{self.amount_cents % 100:02d}"


class Receipt(models.Model):
    """A receipt sent for an order; one per order."""

    order = models.OneToOneField(
        Order, on_delete=models.CASCADE, related_name="receipt"
    )
    sent_to = models.EmailField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"receipt for order {self.order_id}"
