"""Actions: fire-and-forget side effects released after commit.

Requesting an action stores a row in the caller's transaction and asks
``transaction.on_commit`` to release it, so it runs only if that transaction
(and every transaction around it) commits; Django drops the callback along
with a savepoint that rolls back. A released action is claimed by flipping
its row from pending to running, so it runs at most once even when a worker
also sweeps up actions whose process ended before running them.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from django.db import OperationalError, close_old_connections, transaction

from . import arguments, calling, database, guards, scope
from .conf import settings
from .exceptions import UnknownAction
from .models import Action, ActionStatus
from .registry import Registry

logger = logging.getLogger(__name__)

OUTCOME_TRIES = 5

registry: Registry[ActionFunction] = Registry("action", UnknownAction)

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


class ActionFunction:
    """A registered action; call ``request`` to run it after commit."""

    def __init__(self, target: Callable[..., Any], name: str) -> None:
        self.target = target
        self.name = name
        self.__doc__ = target.__doc__
        self.__wrapped__ = target

    def __repr__(self) -> str:
        return f"<ActionFunction {self.name}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the action here and now.

        Raises SideEffectInCommand inside a command, which must request it.
        """
        guards.refuse_inside_command(
            f"to call the action {self.name!r} directly",
            f"Request it instead: {self.name}.request(...) runs it once the "
            "command commits.",
        )
        return self.target(*args, **kwargs)

    def request(self, *args: Any, **kwargs: Any) -> Action:
        """Store the action now and run it once the transaction commits.

        Runs in the caller's transaction on the jobs' database; outside one,
        the action is released at once. Raises ArgumentError for arguments
        that are not JSON.
        """
        packed = arguments.pack(args, kwargs)
        current = scope.current()
        action = Action(
            name=self.name,
            arguments=packed,
            created_at=database.python_now(),
            command_id=current.record_id if current else None,
        )
        db = database.alias()

        action.save(using=db, force_insert=True)
        transaction.on_commit(lambda: release(action.pk), using=db, robust=True)

        if current is not None:
            current.actions.append(action)
        return action


def action(target: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Register a function as an action: ``@action`` or ``@action(...)``."""

    def register(func: Callable[..., Any]) -> ActionFunction:
        action_name = name or f"{func.__module__}.{func.__qualname__}"
        action_function = ActionFunction(func, action_name)
        registry.add(action_name, action_function, func)
        return action_function

    if target is not None:
        return register(target)
    return register


def release(action_id: int) -> None:
    """Run a committed action now or on the action threads, as configured."""
    if settings.ACTIONS_MODE == "inline":
        run(action_id)
        return
    _pool().submit(_run_in_thread, action_id)


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=int(settings.ACTION_THREADS),
                thread_name_prefix="klerk-action",
            )
        return _executor


def wait_for_actions() -> None:
    """Wait until the action threads have run every released action."""
    global _executor
    with _executor_lock:
        pool, _executor = _executor, None
    if pool is not None:
        pool.shutdown(wait=True)


def _run_in_thread(action_id: int) -> None:
    try:
        run(action_id)
    finally:
        database.connection().close()


def run(action_id: int) -> bool:
    """Claim and run one pending action; return False if it was not pending.

    An action's failure is recorded and logged, and stops neither the
    caller nor the actions released after it. Only ``SystemExit`` and
    ``KeyboardInterrupt`` go on after the failure is recorded, so that the
    action never stays running.
    """
    try:
        claimed = _claim(action_id)
    except Exception:
        logger.exception("action claim failed action_id=%s", action_id)
        return False
    if claimed is None:
        return False

    started = time.monotonic()
    try:
        function = registry.get(claimed.name)
        args, kwargs = arguments.unpack(claimed.arguments)
        calling.call(function.target, args, kwargs)
    except BaseException as exc:
        _finish(claimed, ActionStatus.FAILED, exc)
        logger.error(
            "action failed action_id=%s action=%s",
            claimed.pk,
            claimed.name,
            exc_info=True,
        )
        if not isinstance(exc, Exception):
            raise
    else:
        _finish(claimed, ActionStatus.SUCCEEDED, None)
        logger.info(
            "action succeeded action_id=%s action=%s duration_ms=%.1f",
            claimed.pk,
            claimed.name,
            (time.monotonic() - started) * 1000,
        )
    return True


def _claim(action_id: int) -> Action | None:
    db = database.alias()
    pending = Action.objects.using(db).filter(pk=action_id, status=ActionStatus.PENDING)
    if not pending.update(
        status=ActionStatus.RUNNING, started_at=database.python_now()
    ):
        return None
    return Action.objects.using(db).get(pk=action_id)


def _finish(action: Action, status: str, exc: BaseException | None) -> None:
    error = text = ""
    if exc is not None:
        error = arguments.scrub_text(f"{type(exc).__name__}: {exc}")
        text = arguments.scrub_text(traceback.format_exc())
    finished = Action.objects.using(database.alias()).filter(pk=action.pk)

    # A busy or dropped database must not leave the action "running" for
    # good: the outcome write is retried a few times on a fresh connection.
    for attempt in range(1, OUTCOME_TRIES + 1):
        try:
            finished.update(
                status=status,
                finished_at=database.python_now(),
                error=error,
                traceback=text,
            )
            return
        except OperationalError:
            logger.warning(
                "action outcome not recorded, retrying action_id=%s action=%s try=%s",
                action.pk,
                action.name,
                attempt,
            )
            _discard_connection()
            time.sleep(min(0.2 * 2**attempt, 3.0))
        except Exception:
            break
    logger.error(
        "action outcome not recorded action_id=%s action=%s",
        action.pk,
        action.name,
        exc_info=True,
    )


def _discard_connection() -> None:
    conn = database.connection()
    if not conn.in_atomic_block:
        conn.close()


def run_orphans(limit: int = 100) -> int:
    """Run pending actions whose releasing process ended before running them.

    Called by workers; an action is orphaned once it has been pending for
    ``KLERK_ACTION_ORPHAN_SECONDS``. Returns how many this call ran.
    """
    db = database.alias()
    age = timedelta(seconds=float(settings.ACTION_ORPHAN_SECONDS))
    cutoff = database.python_now() - age
    orphans = Action.objects.using(db).filter(
        status=ActionStatus.PENDING, created_at__lt=cutoff
    )
    ran = 0
    for action_id in orphans.order_by("pk").values_list("pk", flat=True)[:limit]:
        if run(action_id):
            logger.warning("orphaned action run action_id=%s", action_id)
            ran += 1

    # Inside a transaction, closing its connection would break it; the
    # worker calls this between transactions.
    if not database.connection().in_atomic_block:
        close_old_connections()
    return ran
