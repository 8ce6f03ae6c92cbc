"""Calling job and action functions, plain or ``async def``.

A coroutine function runs to its end in a new event loop on the calling
thread, as with ``asyncio.run``, so a worker's job thread or an action
thread treats it like any other call: it returns a value or raises. With a
time limit, the coroutine's task is cancelled once the limit has passed.
Unlike ``asyncio.run``, closing the loop waits only a short while for
tasks left over: one that ignores its cancellation must not hold the
thread for ever once the time limit has stopped the call.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from .exceptions import JobTimeout

# How long tasks left over when the call ends may take to end once
# cancelled, before the loop is closed without them.
CLOSE_GRACE_SECONDS = 2.0


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
        return _run(_awaited(value, timeout, on_timeout))
    return value


def _run(coroutine: Any) -> Any:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(coroutine)
    finally:
        try:
            _close(loop)
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _close(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks left over and let them end, for a short while."""
    left = asyncio.all_tasks(loop)
    for task in left:
        task.cancel()
    if left:
        loop.run_until_complete(asyncio.wait(left, timeout=CLOSE_GRACE_SECONDS))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(loop.shutdown_default_executor())


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
