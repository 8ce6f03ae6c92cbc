"""The admin page of periodic schedules: read-only, one row per schedule.

Schedules are declared in code and settings; the table holds only their
state (last and next tick), so the page shows both side by side and
changes nothing. Deleting a row, with the delete permission, forgets that
state: a declared schedule then starts from now, with no missed tick.
"""

from __future__ import annotations

from django.contrib import admin
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest

from . import database, schedules
from .display import EMPTY, relative_html
from .exceptions import SettingsError
from .models import Schedule

NOT_DECLARED = "not declared"


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    """Each schedule's rule, from code or settings, and its stored state."""

    list_display = [
        "name",
        "cron",
        "time_zone",
        "job",
        "last_tick",
        "next_tick",
        "updated_at",
    ]
    search_fields = ["name"]
    fields = [
        "name",
        "cron",
        "time_zone",
        "job",
        "last_tick_at",
        "next_tick_at",
        "updated_at",
    ]
    # Plain names: the type the admin declares for read-only fields.
    readonly_fields = list(map(str, fields))

    def get_queryset(self, request: HttpRequest) -> QuerySet[Schedule]:
        return super().get_queryset(request).using(database.alias())

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: models.Model | None = None
    ) -> bool:
        return False

    @admin.display(description="cron")
    def cron(self, row: Schedule) -> str:
        schedule = _declared(row.name)
        return str(schedule.cron) if schedule else NOT_DECLARED

    @admin.display(description="time zone")
    def time_zone(self, row: Schedule) -> str:
        schedule = _declared(row.name)
        return schedule.time_zone if schedule else EMPTY

    @admin.display(description="job")
    def job(self, row: Schedule) -> str:
        schedule = _declared(row.name)
        return schedule.job if schedule else EMPTY

    @admin.display(description="last tick", ordering="last_tick_at")
    def last_tick(self, row: Schedule) -> str:
        return relative_html(row.last_tick_at)

    @admin.display(description="next tick", ordering="next_tick_at")
    def next_tick(self, row: Schedule) -> str:
        return relative_html(row.next_tick_at)


def _declared(name: str) -> schedules.PeriodicSchedule | None:
    try:
        return schedules.get(name)
    except SettingsError:
        # The system check reports it; the page still shows the state.
        return None
