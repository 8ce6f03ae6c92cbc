"""The shop's jobs: charge the card, check for fraud, follow up later.

Each job may run more than once (a retry, or a worker lost mid-attempt), so
each one checks the order's state before it changes it.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db.models import Count, Sum
from django.utils import timezone

from klerk_django import current_job, job, periodic
from klerk_django.limits import RateLimit

from .models import Order

logger = logging.getLogger(__name__)

# The shop's workers serve this queue only; other apps' jobs in the same
# database are left to their own workers.
QUEUE = "shop"

# The shop keeps its books in Berlin: the summary comes at 06:00 there,
# in winter (05:00 UTC) and in summer (04:00 UTC) alike.
SUMMARY_TIME_ZONE = "Europe/Berlin"

# The pretend payment gateway times out on the first try for large amounts,
# so every run of the example shows a retry.
SLOW_GATEWAY_FROM_CENTS = 50_00
REVIEW_FROM_CENTS = 500_00
FOLLOW_UP_EVERY_SECONDS = 4


class GatewayTimeout(Exception):
    """The payment gateway did not answer in time."""


@job(name="shop.charge_card", queue=QUEUE, max_attempts=3)
def charge_card(order_id: int) -> str:
    """Charge the customer's card for the order and mark it paid."""
    order = Order.objects.get(pk=order_id)
    if order.status == Order.Status.PAID:
        return "already paid"

    context = current_job()
    attempt = context.attempt if context else 1
    if attempt == 1 and order.amount_cents >= SLOW_GATEWAY_FROM_CENTS:
        Order.objects.filter(pk=order_id).update(status=Order.Status.PAYMENT_FAILED)
        raise GatewayTimeout(f"no answer for order {order_id} on attempt {attempt}")

    Order.objects.filter(pk=order_id).update(status=Order.Status.PAID)
    return f"charged {order.amount}"


@job(name="shop.fraud_check", queue=QUEUE, priority=10, max_attempts=2)
def fraud_check(order_id: int) -> str:
    """Return "review" for orders large enough to need a person's look."""
    order = Order.objects.get(pk=order_id)
    if order.amount_cents >= REVIEW_FROM_CENTS:
        return "review"
    return "clear"


def by_customer(order_id: int, customer: str) -> str:
    """The rate limit key of a follow-up: each customer has their own."""
    return customer


# Unique: one pending follow-up per order, however often it is asked for.
# Rate-limited: at most one follow-up mail per customer in any 4 seconds (a
# day, in a real shop); a customer's next one waits, ready, for its window.
@job(
    name="shop.follow_up",
    queue=QUEUE,
    unique=True,
    rate_limit=RateLimit(1, per=FOLLOW_UP_EVERY_SECONDS, key=by_customer),
)
def follow_up(order_id: int, customer: str) -> str:
    """Record that the customer was asked how the order went."""
    updated = Order.objects.filter(pk=order_id, followed_up_at=None).update(
        followed_up_at=timezone.now()
    )
    logger.info("order followed up order_id=%s customer=%s", order_id, customer)
    return "asked" if updated else "already asked"


@periodic("0 6 * * *", timezone=SUMMARY_TIME_ZONE, name="shop.morning_summary")
@job(name="shop.daily_summary", queue=QUEUE)
def daily_summary() -> str:
    """Sum up the orders placed in the last 24 hours."""
    since = timezone.now() - timedelta(days=1)
    orders = Order.objects.filter(created_at__gte=since)
    totals = orders.aggregate(count=Count("pk"), cents=Sum("amount_cents"))
    logger.info(
        "daily summary orders=%s amount_cents=%s", totals["count"], totals["cents"]
    )
    return f"{totals['count']} orders, {(totals['cents'] or 0) / 100:.2f}"
