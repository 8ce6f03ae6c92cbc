"""Refuse side effects while a command runs.

A command's transaction may still roll back after ``validate`` or
``execute`` returned, so anything they do outside the database (a mail
sent, a job function called instead of enqueued) could happen for a
command that in the end did nothing. While a command runs in this thread,
the guard makes these raise ``SideEffectInCommand``:

- sending mail through ``django.core.mail``: ``send_mail``,
  ``send_mass_mail``, ``mail_admins``, ``mail_managers``,
  ``EmailMessage.send`` and opening a connection with ``get_connection``;
- calling a job function or an action function directly.

The mail hooks are installed once per process, by the first ``handle``;
they check the thread's command scope on every call, so mail sent outside
commands is never affected. Error mails of Django's ``AdminEmailHandler``
always go through, and so does anything inside ``allow_side_effects()``.
``KLERK_GUARD_SIDE_EFFECTS = False`` turns the guard off.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from . import scope
from .conf import settings
from .exceptions import SideEffectInCommand

_installed = False
_install_lock = threading.Lock()
_allowed: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "klerk_side_effects_allowed", default=False
)


@contextmanager
def allow_side_effects() -> Iterator[None]:
    """Let the code in this block have side effects inside a command.

    For the rare effect that must happen even if the command rolls back.
    """
    token = _allowed.set(True)
    try:
        yield
    finally:
        _allowed.reset(token)


def refuse_inside_command(doing: str, instead: str) -> None:
    """Raise SideEffectInCommand if a command runs in this thread now.

    ``doing`` names the side effect; ``instead`` says what to do instead.
    """
    current = scope.current()
    if current is None or _allowed.get() or not settings.GUARD_SIDE_EFFECTS:
        return
    raise SideEffectInCommand(
        f"The command {current.name!r} tried {doing} while it runs; its "
        f"transaction may still roll back. {instead}",
        command=current.name,
    )


def install() -> None:
    """Hook Django's mail functions once per process; then do nothing."""
    global _installed
    if _installed:
        return
    with _install_lock:
        if _installed:
            return
        _hook_mail()
        _installed = True


def _hook_mail() -> None:
    from django.core import mail
    from django.utils.log import AdminEmailHandler

    # These replace a function and two methods on purpose, for every caller
    # in the process, which is what mypy's method-assign check is against.
    mail.get_connection = _guarded(mail.get_connection)
    mail.EmailMessage.send = _guarded(  # type: ignore[method-assign]
        mail.EmailMessage.send
    )
    # An error report about a command is wanted even if it rolls back.
    AdminEmailHandler.send_mail = _allowing(  # type: ignore[method-assign]
        AdminEmailHandler.send_mail
    )


def _guarded(function: Callable[..., Any]) -> Callable[..., Any]:
    if getattr(function, "_klerk_guarded", False):
        return function

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        refuse_inside_command(
            "to send mail",
            "Send it from an action (run after the commit) or a job.",
        )
        return function(*args, **kwargs)

    guarded._klerk_guarded = True  # type: ignore[attr-defined]
    return guarded


def _allowing(function: Callable[..., Any]) -> Callable[..., Any]:
    if getattr(function, "_klerk_guarded", False):
        return function

    @functools.wraps(function)
    def allowing(*args: Any, **kwargs: Any) -> Any:
        with allow_side_effects():
            return function(*args, **kwargs)

    allowing._klerk_guarded = True  # type: ignore[attr-defined]
    return allowing
