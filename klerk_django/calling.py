"""Calling job and action functions, plain or ``async def``.

A coroutine function runs to its end in a new event loop on the calling
thread (``asyncio.run``), so a worker's job thread or an action thread
treats it like any other call: it returns a value or raises.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any


def call(target: Callable[..., Any], args: Any, kwargs: dict[str, Any]) -> Any:
    """Call ``target`` and, if it gave an awaitable, run that to its end."""
    value = target(*args, **kwargs)
    if inspect.isawaitable(value):
        return asyncio.run(_awaited(value))
    return value


async def _awaited(awaitable: Any) -> Any:
    # asyncio.run takes coroutines only; this takes any awaitable.
    return await awaitable
