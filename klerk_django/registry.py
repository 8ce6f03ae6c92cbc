"""Name-to-callable registries for jobs, actions and commands.

Names stored in the database are resolved only here, never by importing a
dotted path read from a row, so a row cannot make a worker run arbitrary
code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .exceptions import RegistryConflict

T = TypeVar("T")

# Names are stored in 200-character columns of jobs, actions and records.
MAX_NAME_LENGTH = 200


class Registry(Generic[T]):
    def __init__(self, kind: str, missing: Callable[[str], Exception]) -> None:
        self.kind = kind
        self._missing = missing
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T, identity: object) -> None:
        """Register ``entry``; re-registering the same code is harmless.

        Raises ValueError for a name the database cannot store, and
        RegistryConflict for a name that other code already holds.
        """
        self._check_name(name)
        existing = self._entries.get(name)
        if existing is not None and _identity(existing) != _identity_of(identity):
            raise RegistryConflict(
                self.kind,
                name,
                ".".join(_identity(existing)),
                ".".join(_identity_of(identity)),
            )
        self._entries[name] = entry

    def _check_name(self, name: object) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(
                f"A {self.kind} name must be a non-empty string, got {name!r}."
            )
        if len(name) > MAX_NAME_LENGTH or "\x00" in name:
            raise ValueError(
                f"The {self.kind} name {name!r} cannot be stored: names hold at "
                f"most {MAX_NAME_LENGTH} characters and no NUL character."
            )

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise self._missing(name) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def _identity_of(target: object) -> tuple[str, str]:
    module = getattr(target, "__module__", "")
    qualname = getattr(target, "__qualname__", repr(target))
    return module, qualname


def _identity(entry: object) -> tuple[str, str]:
    # Entries wrap the user's callable; a reload of the same module
    # registers a new object with the same identity, which is no conflict.
    return _identity_of(getattr(entry, "target", entry))
