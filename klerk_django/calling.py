"""Calling job and action functions, plain or ``async def``.

A coroutine function runs to its end in a new event loop on the calling
thread (``asyncio.run``), so a worker's job thread or an action thread
treats it like any other call: it returns a value or raises. With a time
limit, the coroutine's task is cancelled once the limit has passed.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from .exceptions import JobTimeout


def call(
    target: Callable[..., Any],
    args: Any,
    kwargs: dict[str, Any],
    timeout: float | None = None,
    on_timeout: Callable[[], Any] | None = None,
) -> Any:
    """Call ``target`` and, if it gave an awaitable, run that to its end.

    An awaitable still running after ``timeout`` seconds is cancelled,
    ``on_timeout`` is called, and JobTimeout is raised.
    """
    value = target(*args, **kwargs)
    if inspect.isawaitable(value):
        return asyncio.run(_awaited(value, timeout, on_timeout))
    return value


def described(exc: BaseException) -> str:
    """Return ``"Type: text"`` for ``exc``, even if making its text fails.

    A job's exception is recorded by the worker's own code, which must not
    fail on an exception whose ``__str__`` raises.
    """
    try:
        text = str(exc)
    except Exception as failure:
        text = f"<its text could not be made: {type(failure).__name__}>"
    return f"{type(exc).__name__}: {text}"


async def _awaited(
    awaitable: Any, timeout: float | None, on_timeout: Callable[[], Any] | None
) -> Any:
    # asyncio.run takes coroutines only; this takes any awaitable.
    if timeout is None:
        return await awaitable
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if done:
        return task.result()

    if on_timeout is not None:
        on_timeout()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    raise JobTimeout(f"ran past its {timeout:g} s time limit")
