"""Who runs a command, and the rules that allow or deny it.

Authorization is the last check before ``execute``: it runs once the inputs
are valid and the command's own rules found no problem. Every rule receives
the actor and the command and answers ``ALLOW``, ``DENY`` or ``None`` (no
opinion); a ``Problem`` counts as a deny that says why. Any deny rejects
the command; with no allow at all it is rejected too, with the code
"forbidden". The rules come from, in this order:

1. the system actor, which is allowed every command;
2. the command's ``permission``: allowed when the actor has every named
   Django permission;
3. the command's ``authorization``: a sequence of rule functions;
4. the command's ``authorize(actor)`` method.

An actor is a Django user, ``AnonymousUser`` or ``SYSTEM``, the actor of
work no person asked for: workers, schedules and code calling ``handle``
without an actor.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any

FORBIDDEN = "forbidden"


class Decision(enum.Enum):
    """What an authorization rule says about an actor and a command."""

    ALLOW = "allow"
    DENY = "deny"


ALLOW = Decision.ALLOW
DENY = Decision.DENY

Rule = Callable[[Any, Any], Any]


class SystemActor:
    """The actor of work that no person asked for; use ``SYSTEM``."""

    _instance: SystemActor | None = None

    is_active = True
    is_anonymous = False
    is_authenticated = True
    is_staff = False
    is_superuser = False
    pk = None

    def __new__(cls) -> SystemActor:
        # One instance per process, so that ``actor is SYSTEM`` always works,
        # after a copy or a pickle too.
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __reduce__(self) -> tuple[type[SystemActor], tuple[()]]:
        return (SystemActor, ())

    def __str__(self) -> str:
        return "system"

    def __repr__(self) -> str:
        return "klerk_django.SYSTEM"

    def has_perm(self, perm: str, obj: Any = None) -> bool:
        return True

    def has_perms(self, perms: Sequence[str], obj: Any = None) -> bool:
        return True


SYSTEM = SystemActor()


def permissions_of(command_class: type) -> tuple[str, ...]:
    """Return the permissions a command class declares, as a tuple.

    Raises TypeError for a ``permission`` that is neither a string nor a
    list or tuple of strings.
    """
    declared = getattr(command_class, "permission", None)
    if declared is None:
        return ()
    if isinstance(declared, str):
        names: tuple[Any, ...] = (declared,)
    elif isinstance(declared, (list, tuple)):
        names = tuple(declared)
    else:
        names = ()
    if not names or not all(isinstance(name, str) and name for name in names):
        raise TypeError(
            f"{command_class.__name__}.permission must be a permission name "
            f"such as 'shop.add_order' or a sequence of them, got {declared!r}."
        )
    return names


def has_permissions(actor: Any, names: Sequence[str]) -> bool:
    """Return whether ``actor`` holds every permission in ``names``."""
    check = getattr(actor, "has_perms", None)
    return callable(check) and bool(check(list(names)))


def has_perm(*names: str) -> Rule:
    """Return a rule that allows actors holding every one of ``names``."""

    def rule(actor: Any, command: Any) -> Decision | None:
        return ALLOW if has_permissions(actor, names) else None

    rule.__qualname__ = f"has_perm{names!r}"
    return rule


def is_staff(actor: Any, command: Any) -> Decision | None:
    """Allow active staff users."""
    if getattr(actor, "is_active", False) and getattr(actor, "is_staff", False):
        return ALLOW
    return None


def is_authenticated(actor: Any, command: Any) -> Decision | None:
    """Allow any signed-in user (and the system actor)."""
    return ALLOW if getattr(actor, "is_authenticated", False) else None
