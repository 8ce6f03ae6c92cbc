"""Commands: registered classes that change data, and the service running them.

``handle`` runs a command in one transaction on the jobs' database:

1. take the command lock (``select_for_update`` on a lock row), so commands
   run one at a time across processes and machines;
2. in a savepoint, validate the declared inputs, check the command's rules,
   then execute it; jobs and actions it asks for are stored in the same
   transaction;
3. on rejection or error, roll the savepoint back, so nothing the command
   wrote, enqueued or requested survives;
4. write a command record, and commit.

Inside an outer transaction (``ATOMIC_REQUESTS`` or the caller's own
``atomic``), ``handle`` joins it: the lock is held, and actions wait, until
the outermost commit, and an outer rollback removes everything the command
did, its record included.

A command runs secondary commands by calling ``handle`` in ``execute``.
They join its transaction, all or nothing: a rejected secondary raises
``Rejected`` with its problems into the primary, a failing one raises its
error, and the primary's result lists their jobs and actions as its own.

A dry run does all of this, then rolls everything back, the lock row and
the record included: it leaves no data, job, action or record, and
releases no action, whether or not it runs inside an outer transaction.
"""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from django import forms
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction

from . import arguments, database, scope
from .exceptions import UnknownCommand
from .models import Action, CommandLock, CommandRecord, Job
from .registry import Registry

logger = logging.getLogger(__name__)

GLOBAL_LOCK = "global"
LOOKUP_BATCH = 500


@dataclass(frozen=True)
class Problem:
    """Why a command was rejected: a message for people, a code for code."""

    message: str
    code: str = "invalid"
    field: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "message": self.message, "code": self.code}


@dataclass
class CommandResult:
    """What a command did, or the problems that stopped it."""

    name: str
    outcome: str
    value: Any = None
    problems: list[Problem] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    record_id: uuid.UUID | None = None
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome == CommandRecord.Outcome.SUCCEEDED


class Rejected(Exception):
    """Raised inside a command to reject it with problems."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(problem.message for problem in self.problems))


class NoInputs(forms.Form):
    pass


registry: Registry[type[Command]] = Registry("command", UnknownCommand)


class Command:
    """Base class of commands; subclasses are registered by their ``name``.

    Declare inputs as a Django form class in ``Inputs``; override
    ``validate`` to check rules against current data (return or yield
    problems) and ``execute`` to change data, enqueue jobs and request
    actions. ``execute`` must not perform side effects itself.
    """

    name: ClassVar[str] = ""
    Inputs: ClassVar[type[forms.Form]] = NoInputs
    abstract: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("abstract", False):
            return
        if not cls.__dict__.get("name"):
            cls.name = f"{cls.__module__}.{cls.__qualname__}"
        registry.add(cls.name, cls, cls)

    def __init__(self, **inputs: Any) -> None:
        self.raw_inputs = inputs
        self.inputs: dict[str, Any] = {}
        self.actor: Any = None

    def validate(self) -> Iterable[Problem] | None:
        """Return the problems that forbid this command now, if any."""
        return None

    def execute(self) -> Any:
        """Change data; the return value becomes the result's value."""
        raise NotImplementedError(f"{type(self).__name__} must define execute().")

    def lock_key(self) -> str:
        """Return the key of the lock row this command runs under."""
        return GLOBAL_LOCK


def get_command(name: str) -> type[Command]:
    """Return the command class registered as ``name`` or raise."""
    return registry.get(name)


def handle(
    command: Command, *, actor: Any = None, dry_run: bool = False
) -> CommandResult:
    """Run ``command`` under the command lock and return its result.

    Runs in a transaction on the jobs' database, joining the caller's if
    there is one. A rejection or an exception in the command rolls back
    everything it did and comes back as a result with problems; only errors
    of the database itself propagate. Called inside another command's
    ``execute``, it runs a secondary command, which raises instead of
    returning a rejection or failure. ``dry_run`` rolls everything back and
    writes no record.
    """
    db = database.alias()
    command.actor = actor
    outer = scope.current()
    current = scope.CommandScope(
        record_id=uuid.uuid4(),
        name=command.name,
        dry_run=dry_run or bool(outer and outer.dry_run),
    )
    started = time.monotonic()

    if outer is not None:
        result = _handle_secondary(command, current, outer, started)
    else:
        with transaction.atomic(using=db):
            take_lock(db, command.lock_key())
            result, error = _run_in_savepoint(command, current)
            _close(command, result, error, started)

    _log(result, actor, started)
    return result


def take_lock(db: str, key: str) -> None:
    """Lock the command lock row ``key`` until the transaction ends."""
    conn = database.connection()
    database.take_write_lock(conn)
    locked = CommandLock.objects.using(db).select_for_update().filter(key=key)
    if not locked.exists():
        CommandLock.objects.using(db).get_or_create(key=key)
        locked.exists()


def _run_in_savepoint(
    command: Command, current: scope.CommandScope
) -> tuple[CommandResult, str]:
    token = scope.enter(current)
    try:
        with transaction.atomic(using=database.alias()):
            value = _validate_and_execute(command)
            _drop_rolled_back(current)
    except Rejected as rejection:
        return _failed(current, "rejected", rejection.problems), ""
    except Exception as exc:
        logger.exception("command raised command=%s", command.name)
        problem = Problem(f"The command failed: {type(exc).__name__}.", "internal")
        return _failed(current, "failed", [problem]), traceback.format_exc()
    finally:
        scope.leave(token)

    return _succeeded(current, value), ""


def _handle_secondary(
    command: Command,
    current: scope.CommandScope,
    outer: scope.CommandScope,
    started: float,
) -> CommandResult:
    db = database.alias()
    token = scope.enter(current)
    try:
        with transaction.atomic(using=db):
            take_lock(db, command.lock_key())
            value = _validate_and_execute(command)
            _drop_rolled_back(current)
            result = _succeeded(current, value)
            if current.dry_run and not outer.dry_run:
                transaction.set_rollback(True, using=db)
                return result
    finally:
        scope.leave(token)

    outer.jobs.extend(current.jobs)
    outer.actions.extend(current.actions)
    if not current.dry_run:
        _close(command, result, "", started)
    return result


def _validate_and_execute(command: Command) -> Any:
    form = command.Inputs(data=command.raw_inputs)
    problems = _input_problems(form)
    if problems:
        raise Rejected(problems)
    command.inputs = form.cleaned_data

    problems = list(command.validate() or ())
    if problems:
        raise Rejected(problems)

    return command.execute()


def _input_problems(form: forms.Form) -> list[Problem]:
    problems = [
        Problem(f"Unknown input {name!r}.", "unknown_input", name)
        for name in sorted(set(form.data) - set(form.fields))
    ]
    if form.is_valid():
        return problems
    for field_name, errors in form.errors.as_data().items():
        for error in errors:
            for message in error.messages:
                problems.append(
                    Problem(
                        message=message,
                        code=error.code or "invalid",
                        field=None if field_name == "__all__" else field_name,
                    )
                )
    return problems


def _drop_rolled_back(current: scope.CommandScope) -> None:
    """Forget the jobs and actions that savepoints in the command undid."""
    current.jobs = _still_stored(Job, current.jobs)
    current.actions = _still_stored(Action, current.actions)


def _still_stored(model: type[Job] | type[Action], rows: list[Any]) -> list[Any]:
    ids = [row.pk for row in rows if row.pk is not None]
    if not ids:
        return rows

    stored: set[int] = set()
    manager = model.objects.using(database.alias())
    for start in range(0, len(ids), LOOKUP_BATCH):
        batch = ids[start : start + LOOKUP_BATCH]
        stored.update(manager.filter(pk__in=batch).values_list("pk", flat=True))
    # SQLite may give a rolled-back row's id to a later row, so the last
    # row with an id is the one stored under it.
    last = {row.pk: index for index, row in enumerate(rows)}
    return [
        row
        for index, row in enumerate(rows)
        if row.pk is None or (row.pk in stored and last[row.pk] == index)
    ]


def _succeeded(current: scope.CommandScope, value: Any) -> CommandResult:
    return CommandResult(
        name=current.name,
        outcome=CommandRecord.Outcome.SUCCEEDED,
        value=value,
        jobs=current.jobs,
        actions=current.actions,
        record_id=None if current.dry_run else current.record_id,
        dry_run=current.dry_run,
    )


def _failed(
    current: scope.CommandScope, outcome: str, problems: list[Problem]
) -> CommandResult:
    return CommandResult(
        name=current.name,
        outcome=outcome,
        problems=problems,
        record_id=None if current.dry_run else current.record_id,
        dry_run=current.dry_run,
    )


def _close(command: Command, result: CommandResult, error: str, started: float) -> None:
    db = database.alias()
    if result.dry_run:
        # Undoes the lock row, the command's writes and their after-commit
        # callbacks, whether this block is the outermost one or a savepoint.
        transaction.set_rollback(True, using=db)
        return

    CommandRecord.objects.using(db).create(
        id=result.record_id,
        name=command.name,
        inputs=_storable(command.inputs or command.raw_inputs),
        actor=_actor_text(command.actor),
        outcome=result.outcome,
        problems=_storable([problem.as_dict() for problem in result.problems]),
        result=_storable(result.value),
        error=arguments.scrub_text(error),
        duration_ms=(time.monotonic() - started) * 1000,
    )


def _storable(value: Any) -> Any:
    # Inputs and results come from users and commands; a record must be
    # written whatever they hold, so odd values are stored as text.
    return arguments.scrub(value, default=_as_json)


def _as_json(value: Any) -> Any:
    try:
        return DjangoJSONEncoder().default(value)
    except TypeError:
        return repr(value)


def _actor_text(actor: Any) -> str:
    return arguments.scrub_text(_describe(actor))[:255]


def _describe(actor: Any) -> str:
    if actor is None:
        return "system"
    if getattr(actor, "is_anonymous", False):
        return "anonymous"
    username = getattr(actor, "get_username", None)
    if callable(username):
        return f"user:{username()} (id={actor.pk})"
    return str(actor)


def _log(result: CommandResult, actor: Any, started: float) -> None:
    duration_ms = (time.monotonic() - started) * 1000
    if result.outcome == CommandRecord.Outcome.FAILED:
        log = logger.error
    else:
        log = logger.info
    log(
        "command %s command=%s record_id=%s actor=%s dry_run=%s duration_ms=%.1f",
        result.outcome,
        result.name,
        result.record_id,
        _actor_text(actor),
        result.dry_run,
        duration_ms,
    )
