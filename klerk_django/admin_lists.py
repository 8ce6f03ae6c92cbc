"""How the admin's lists count and filter rows of tables with millions.

A changelist normally counts every matching row and lists each filter's
choices with ``SELECT DISTINCT``: both read the whole table. Here the
unfiltered count on PostgreSQL is the planner's estimate, any other count
stops at ``COUNT_CAP`` rows, and filter choices come from the registry of
job functions and from a bounded number of the newest rows.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.functional import cached_property

from . import stats
from .admin_pages import registered_queues
from .jobs import registry

COUNT_CAP = 10_000
RECENT_ROWS = 1000


class RowCount(int):
    """A row count that knows whether it is exact, and prints as it is."""

    label: str

    def __new__(cls, value: int, label: str) -> RowCount:
        count = super().__new__(cls, value)
        count.label = label
        return count

    def __str__(self) -> str:
        return self.label


class LargeTablePaginator(Paginator):
    """A paginator that estimates or caps its count instead of counting all."""

    @cached_property
    def count(self) -> int:
        # The admin pages through querysets only.
        queryset = cast(QuerySet, self.object_list)
        estimate = _estimate(queryset)
        if estimate is not None and estimate > COUNT_CAP:
            return RowCount(estimate, f"about {estimate:,}")

        capped = queryset.order_by()[: COUNT_CAP + 1].count()
        if capped > COUNT_CAP:
            return RowCount(capped, f"{COUNT_CAP:,}+")
        return capped


def _estimate(queryset: QuerySet) -> int | None:
    # Only the planner's own row estimate is cheap, and it describes the
    # whole table, so it stands only for an unfiltered list.
    if queryset.query.has_filters() or queryset.query.is_sliced:
        return None
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        return None
    table = connection.ops.quote_name(queryset.model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)",
            [table],
        )
        row = cursor.fetchone()
    if row is None or row[0] is None or row[0] < 0:
        return None
    return int(row[0])


class KnownValuesFilter(admin.AllValuesFieldListFilter):
    """A filter whose choices come without reading the whole table."""

    def __init__(
        self,
        field: Any,
        request: HttpRequest,
        params: dict[str, Any],
        model: Any,
        model_admin: Any,
        field_path: str,
    ) -> None:
        super().__init__(field, request, params, model, model_admin, field_path)
        values = set(self.known_values(model_admin.get_queryset(request)))
        values.update(self.lookup_val or [])
        # Django's stubs type the choices as a queryset; any sequence works.
        self.lookup_choices = sorted(  # type: ignore[assignment]
            str(value) for value in values if value
        )

    def known_values(self, queryset: QuerySet) -> list[str]:
        field = self.field_path
        recent = queryset.order_by("-pk").values_list(field, flat=True)
        return [value for value in recent[:RECENT_ROWS] if value is not None]


class QueueFilter(KnownValuesFilter):
    """Queues of registered job functions and of the newest jobs."""

    def known_values(self, queryset: QuerySet) -> list[str]:
        return registered_queues() + super().known_values(queryset)


class JobNameFilter(KnownValuesFilter):
    """Names of the registered job functions; no query at all."""

    def known_values(self, queryset: QuerySet) -> list[str]:
        return registry.names()


class CreatedFilter(admin.SimpleListFilter):
    """Rows created in the last hour, day or week."""

    title = "created"
    parameter_name = "created"
    periods = {
        "1h": ("last hour", timedelta(hours=1)),
        "24h": ("last 24 hours", timedelta(days=1)),
        "7d": ("last 7 days", timedelta(days=7)),
    }

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(key, label) for key, (label, _) in self.periods.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        period = self.periods.get(self.value() or "")
        if period is None:
            return None
        return queryset.filter(created_at__gte=timezone.now() - period[1])


class AliveFilter(admin.SimpleListFilter):
    """Workers that are alive (recent heartbeat, not stopped) or gone."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("alive", "alive"), ("gone", "gone")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        if self.value() == "alive":
            return queryset.filter(stats.alive_workers())
        if self.value() == "gone":
            return queryset.exclude(stats.alive_workers())
        return None
