"""What the running command has asked for, so its result can list it.

A context variable, not a global: each thread and each task has its own, so
a command running in one thread never collects jobs enqueued in another.
"""

from __future__ import annotations

import contextvars
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import Action, Job


@dataclass
class CommandScope:
    record_id: uuid.UUID
    name: str
    dry_run: bool = False
    actor: Any = None
    jobs: list[Job] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)


_current: contextvars.ContextVar[CommandScope | None] = contextvars.ContextVar(
    "klerk_command_scope", default=None
)


def current() -> CommandScope | None:
    return _current.get()


def enter(scope: CommandScope) -> contextvars.Token[CommandScope | None]:
    return _current.set(scope)


def leave(token: contextvars.Token[CommandScope | None]) -> None:
    _current.reset(token)
