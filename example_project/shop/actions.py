"""The shop's actions: side effects that run once an order is committed."""

from __future__ import annotations

import logging

from klerk_django import action

from .models import Order, Receipt

logger = logging.getLogger(__name__)


@action(name="shop.send_receipt")
def send_receipt(order_id: int) -> None:
    """Send the receipt of a committed order, here by storing it."""
    order = Order.objects.select_related("customer").filter(pk=order_id).first()
    if order is None:
        # Deleted since it was placed: nobody is left to send a receipt to.
        logger.warning("receipt not sent, order gone order_id=%s", order_id)
        return

    Receipt.objects.get_or_create(
        order=order, defaults={"sent_to": order.customer.email}
    )
    logger.info("receipt sent order_id=%s amount=%s", order_id, order.amount)
