"""How the admin shows values: badges, masked JSON, relative times, charts.

Everything here returns safe HTML or plain data for templates and does no
database query.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone
from django.utils.html import format_html

from .conf import settings
from .stats import MinuteSeries

MASK = "********"
# What a display shows for a missing value, as the admin's lists do.
EMPTY = "-"

BADGE_COLOURS = {
    "pending": "#79aec8",
    "ready": "#417690",
    "running": "#b8860b",
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "rejected": "#b8860b",
    "cancelled": "#6b6b6b",
    "interrupted": "#6b6b6b",
}

SERIES_COLOURS = {
    "started": "#417690",
    "succeeded": "#2e7d32",
    "failed": "#c62828",
}


def badge(value: str) -> str:
    """Return ``value`` as a small coloured label."""
    colour = BADGE_COLOURS.get(value, "#6b6b6b")
    return format_html(
        '<span class="klerk-badge" style="background:{}">{}</span>', colour, value
    )


def masked_keys() -> tuple[str, ...]:
    """Return the masked key names, folded; raise ImproperlyConfigured."""
    names = settings.ADMIN_MASKED_KEYS
    if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
        raise ImproperlyConfigured(
            "KLERK_ADMIN_MASKED_KEYS must be a list or tuple of strings, "
            f"got {names!r}."
        )
    names = tuple(names)
    for name in names:
        if not isinstance(name, str) or not name:
            raise ImproperlyConfigured(
                f"KLERK_ADMIN_MASKED_KEYS must hold non-empty strings, got {name!r}."
            )
    return tuple(_fold(name) for name in names)


def _fold(key: str) -> str:
    return key.lower().replace("-", "_")


def masked(value: Any, names: tuple[str, ...] | None = None) -> Any:
    """Return ``value`` with sensitive keys' values replaced, at any depth.

    A key is sensitive when it contains one of ``names`` (by default the
    setting), ignoring case and treating "-" as "_": "X-Api-Key" matches
    "api_key".
    """
    names = masked_keys() if names is None else names
    if isinstance(value, dict):
        return {
            key: MASK if _sensitive(key, names) else masked(item, names)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [masked(item, names) for item in value]
    return value


def _sensitive(key: Any, names: tuple[str, ...]) -> bool:
    folded = _fold(str(key))
    return any(name in folded for name in names)


def pretty_json(value: Any) -> str:
    """Return ``value`` as indented JSON in ``<pre>``, secrets masked."""
    if value is None:
        return EMPTY
    shown = masked(value)
    text = json.dumps(
        shown, indent=2, sort_keys=True, ensure_ascii=False, cls=DjangoJSONEncoder
    )
    return format_html("<pre>{}</pre>", text)


def preformatted(text: str) -> str:
    """Return ``text`` in a ``<pre>`` block, or "-" if it is empty."""
    if not text:
        return EMPTY
    return format_html("<pre>{}</pre>", text)


def folded(text: str, summary: str = "show") -> str:
    """Return ``text`` in a ``<pre>`` block that opens on a click."""
    if not text:
        return EMPTY
    return format_html(
        '<details class="klerk-folded"><summary>{}</summary><pre>{}</pre></details>',
        summary,
        text,
    )


def duration(seconds: float | None) -> str:
    """Return a duration such as "850 ms", "12.4 s" or "3 min 5 s"."""
    if seconds is None:
        return EMPTY
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def span(delta: timedelta) -> str:
    """Return a rounded length of time such as "45 s", "3 min" or "2 days"."""
    seconds = abs(delta.total_seconds())
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h"
    days = int(seconds // 86400)
    return "1 day" if days == 1 else f"{days} days"


def relative_time(value: datetime | None, now: datetime | None = None) -> str:
    """Return ``value`` relative to now: "3 min ago", "in 2 h", "just now"."""
    if value is None:
        return EMPTY
    delta = (now or timezone.now()) - value
    if abs(delta) < timedelta(seconds=10):
        return "just now"
    if delta < timedelta(0):
        return f"in {span(delta)}"
    return f"{span(delta)} ago"


def relative_html(value: datetime | None) -> str:
    """Return a relative time whose tooltip holds the exact time."""
    if value is None:
        return EMPTY
    exact = timezone.localtime(value) if timezone.is_aware(value) else value
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        value.isoformat(),
        exact.strftime("%Y-%m-%d %H:%M:%S"),
        relative_time(value),
    )


@dataclass(frozen=True)
class Line:
    name: str
    colour: str
    points: str
    total: int


@dataclass(frozen=True)
class Chart:
    """A per-minute line chart, laid out for an SVG template."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    lines: list[Line]
    grid: list[tuple[float, int]]
    ticks: list[tuple[float, str, str]]
    columns: list[tuple[float, float, str]]

    @property
    def plot_height(self) -> int:
        return self.bottom - self.top

    @property
    def label_x(self) -> int:
        return self.left - 6


def minute_chart(series: MinuteSeries, width: int = 820, height: int = 220) -> Chart:
    """Lay out the three series of ``series`` as lines in one SVG chart."""
    left, right, top, bottom = 40, width - 10, 10, height - 24
    values = {
        "started": series.started,
        "succeeded": series.succeeded,
        "failed": series.failed,
    }
    peak = nice_ceiling(max(max(counts) for counts in values.values()))
    minutes = len(series.started)
    step = (right - left) / max(minutes - 1, 1)

    def x(index: int) -> float:
        return round(left + index * step, 1)

    def y(count: int) -> float:
        return round(bottom - (bottom - top) * count / peak, 1)

    lines = [
        Line(
            name,
            SERIES_COLOURS[name],
            " ".join(f"{x(i)},{y(count)}" for i, count in enumerate(counts)),
            sum(counts),
        )
        for name, counts in values.items()
    ]
    grid = [(y(value), value) for value in sorted({0, peak // 2, peak})]
    # The newest tick ends at the right edge, so its label must too.
    ticks = [
        (x(minutes - 1 - ago), f"-{ago} min", "middle")
        for ago in range(15, minutes, 15)
    ] + [(x(minutes - 1), "now", "end")]
    columns = [
        (round(x(i) - step / 2, 1), round(step, 1), _column_title(series, i))
        for i in range(minutes)
    ]
    return Chart(width, height, left, right, top, bottom, lines, grid, ticks, columns)


def _column_title(series: MinuteSeries, index: int) -> str:
    minute = series.start + timedelta(minutes=index)
    if timezone.is_aware(minute):
        minute = timezone.localtime(minute)
    return (
        f"{minute:%H:%M}: started {series.started[index]}, "
        f"succeeded {series.succeeded[index]}, failed {series.failed[index]}"
    )


def nice_ceiling(value: int) -> int:
    """Return the smallest of 1, 2, 5, 10, 20, 50... at least ``value``."""
    if value <= 1:
        return 1
    power = 10 ** int(math.floor(math.log10(value)))
    for factor in (1, 2, 5, 10):
        if factor * power >= value:
            return factor * power
    return 10 * power
