"""Optimistic concurrency: "the objects I saw have not changed since".

A caller that showed an object to a person and now runs a command about it
passes ``handle(..., unchanged_since={obj: seen})``, where ``seen`` is the
value of the object's version field when it was shown (``version_of``
reads it). Under the command lock, each object's row is read again with
``select_for_update``, so a writer outside commands cannot change it before
the command commits; the command is rejected with the code "conflict" when
the row is gone or its version moved on.

The version field of a model is the one named by its ``klerk_version_field``
attribute, else a field called ``version``, else one called ``updated_at``.
A date or time field counts as changed when it is later than what the
caller saw; any other field when it differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import models
from django.utils import timezone

from . import database

CONVENTIONAL_FIELDS = ("version", "updated_at")


@dataclass(frozen=True)
class Seen:
    """One object as the caller saw it: its row and its version then."""

    model: type[models.Model]
    pk: Any
    field: models.Field[Any, Any]
    value: Any

    @property
    def label(self) -> str:
        name = str(self.model._meta.verbose_name)
        return f"{name[:1].upper()}{name[1:]} {self.pk}"


def version_field(model: type[models.Model]) -> models.Field[Any, Any]:
    """Return the field that versions ``model``'s rows, or raise ValueError."""
    declared = getattr(model, "klerk_version_field", None)
    names = (declared,) if declared else CONVENTIONAL_FIELDS
    for name in names:
        try:
            return model._meta.get_field(name)  # type: ignore[return-value]
        except FieldDoesNotExist:
            continue
    raise ValueError(
        f"{model.__name__} has no version field {' or '.join(map(repr, names))}; "
        "add a 'version' or 'updated_at' field, or name one in "
        "klerk_version_field."
    )


def version_of(obj: models.Model) -> Any:
    """Return the version of ``obj`` to hand back later in unchanged_since."""
    return getattr(obj, version_field(type(obj)).attname)


def resolve(unchanged_since: Mapping[models.Model, Any] | None) -> list[Seen]:
    """Check an ``unchanged_since`` argument; raise ValueError or TypeError."""
    if not unchanged_since:
        return []
    if not isinstance(unchanged_since, Mapping):
        raise TypeError(
            "unchanged_since must map model instances to the version seen, "
            f"got {type(unchanged_since).__name__}."
        )
    return [_seen(obj, value) for obj, value in unchanged_since.items()]


def _seen(obj: Any, value: Any) -> Seen:
    if not isinstance(obj, models.Model) or obj.pk is None:
        raise ValueError(
            f"unchanged_since needs saved model instances as keys, got {obj!r}."
        )
    field = version_field(type(obj))
    try:
        value = field.to_python(value)
    except ValidationError as error:
        raise ValueError(
            f"The version seen of {obj!r} is not a valid {field.name!r}: "
            f"{value!r} ({'; '.join(error.messages)})."
        ) from None
    if value is None:
        raise ValueError(f"The version seen of {obj!r} is None.")
    _check_zone(obj, field, value)
    return Seen(type(obj), obj.pk, field, value)


def _check_zone(obj: Any, field: models.Field[Any, Any], value: Any) -> None:
    if not isinstance(field, models.DateTimeField):
        return
    if django_settings.USE_TZ and timezone.is_naive(value):
        raise ValueError(
            f"The version seen of {obj!r} must be an aware datetime, since "
            f"USE_TZ is on; got {value!r}."
        )


def conflicts(seen: list[Seen]) -> list[Any]:
    """Return a problem for each object changed or deleted since it was seen.

    Runs in the command's transaction and locks each row until it ends.
    """
    from .commands import Problem

    problems = []
    for item in seen:
        current = _current_version(item)
        if current is _GONE:
            message = f"{item.label} was deleted since you saw it."
        elif _changed(item, current):
            message = f"{item.label} was changed since you saw it; reload it."
        else:
            continue
        problems.append(Problem(message, "conflict"))
    return problems


_GONE = object()


def _current_version(item: Seen) -> Any:
    rows = (
        item.model._default_manager.using(database.alias())
        .select_for_update()
        .filter(pk=item.pk)
        .values_list(item.field.attname, flat=True)
    )
    found = list(rows[:1])
    return found[0] if found else _GONE


def _changed(item: Seen, current: Any) -> bool:
    if current is None:
        return True
    if isinstance(item.value, date):
        return bool(current > item.value)
    return bool(current != item.value)
