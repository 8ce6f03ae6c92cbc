"""Commands: registered classes that change data, and the service running them.

``handle`` runs a command in one transaction on the jobs' database:

1. with an idempotency token, claim the token by inserting the command's
   record under it; the database's unique constraint makes a second caller
   wait for the first one's commit and then answers it with the outcome
   stored for that token, so the command runs at most once;
2. in a savepoint, and in this order: check the declared inputs; take the
   command lock named by ``lock_key()`` (``select_for_update`` on a lock
   row), so commands sharing a key run one at a time across processes and
   machines; check that the objects the caller saw are unchanged; check the
   command's rules (``validate``); check authorization; then execute. Jobs
   and actions it asks for are stored in the same transaction;
3. on rejection or error, roll the savepoint back, so nothing the command
   wrote, enqueued or requested survives;
4. write the command record, and commit.

Inside an outer transaction (``ATOMIC_REQUESTS`` or the caller's own
``atomic``), ``handle`` joins it: the lock is held, and actions wait, until
the outermost commit, and an outer rollback removes everything the command
did, its record and token included.

A command runs secondary commands by calling ``handle`` in ``execute``.
They join its transaction, all or nothing: a rejected secondary raises
``Rejected`` with its problems into the primary, a failing one raises its
error, and the primary's result lists their jobs and actions as its own.

A dry run does all of this, then rolls everything back, the lock row and
the record included: it leaves no data, job, action, record or token, and
releases no action, whether or not it runs inside an outer transaction.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

from django import forms
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, OperationalError, models, transaction

from . import arguments, authorization, database, guards, scope, versions
from .attempts import current_job
from .authorization import ALLOW, DENY, FORBIDDEN, SYSTEM, Decision, Rule
from .conf import settings
from .exceptions import ScheduledCommandFailed, SettingsError, UnknownCommand
from .jobs import job
from .models import Action, CommandLock, CommandRecord, Job
from .registry import Registry

logger = logging.getLogger(__name__)

GLOBAL_LOCK = "global"
LOOKUP_BATCH = 500
REDACTED = "********"
MAX_TOKEN_LENGTH = 200
MAX_LOCK_KEY_LENGTH = 200

SUCCEEDED = CommandRecord.Outcome.SUCCEEDED
REJECTED = CommandRecord.Outcome.REJECTED
FAILED = CommandRecord.Outcome.FAILED
# Not stored: the answer to a caller whose token another call still holds.
IN_PROGRESS = "in_progress"

# The stages that may reject a command, in the order they run.
STAGES = ("token", "inputs", "conflict", "rules", "authorization", "execute")

# Errors that end a wait for another transaction's token: lock timeouts,
# cancelled statements and deadlocks, as PostgreSQL SQLSTATEs and as
# MariaDB and MySQL error numbers.
BUSY_ERRORS = frozenset({"55P03", "57014", "40P01", 1205, 1213})


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
    stage: str | None = None
    repeated: bool = False
    token: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == SUCCEEDED


class Rejected(Exception):
    """Raised inside a command to reject it with problems."""

    def __init__(self, problems: Iterable[Problem], stage: str | None = None) -> None:
        self.problems = list(problems)
        self.stage = stage
        super().__init__("; ".join(problem.message for problem in self.problems))


class NoInputs(forms.Form):
    pass


registry: Registry[type[Command]] = Registry("command", UnknownCommand)


class Command:
    """Base class of commands; subclasses are registered by their ``name``.

    Declare inputs as a Django form class in ``Inputs``; override
    ``validate`` to check rules against current data (return or yield
    problems) and ``execute`` to change data, enqueue jobs and request
    actions. Declare who may run it with ``permission``, ``authorization``
    rules or ``authorize``. ``execute`` must not perform side effects.
    """

    name: ClassVar[str] = ""
    Inputs: ClassVar[type[forms.Form]] = NoInputs
    abstract: ClassVar[bool] = True
    permission: ClassVar[str | Sequence[str] | None] = None
    authorization: ClassVar[Sequence[Rule]] = ()
    redacted_inputs: ClassVar[Sequence[str]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        authorization.permissions_of(cls)
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

    def authorize(self, actor: Any) -> Decision | Problem | None:
        """Return ALLOW, DENY (or a Problem saying why) or None."""
        return None

    def execute(self) -> Any:
        """Change data; the return value becomes the result's value."""
        raise NotImplementedError(f"{type(self).__name__} must define execute().")

    def lock_key(self) -> str:
        """Return the key of the lock row this command runs under.

        Called once the inputs are valid: ``self.inputs`` holds them.
        """
        return GLOBAL_LOCK


def get_command(name: str) -> type[Command]:
    """Return the command class registered as ``name`` or raise."""
    return registry.get(name)


def handle(
    command: Command,
    *,
    actor: Any = None,
    dry_run: bool = False,
    token: str | None = None,
    unchanged_since: Mapping[models.Model, Any] | None = None,
) -> CommandResult:
    """Run ``command`` under the command lock and return its result.

    Runs in a transaction on the jobs' database, joining the caller's if
    there is one. ``actor`` None means the actor of the enclosing command,
    or ``SYSTEM`` outside one. A rejection or an exception in the command
    rolls back everything it did and comes back as a result with problems;
    only errors of the database itself propagate. Called inside another
    command's ``execute``, it runs a secondary command, which raises
    instead of returning a rejection or failure. ``dry_run`` rolls
    everything back and writes no record. ``token`` makes a repeat return
    the first call's outcome. ``unchanged_since`` maps objects to the
    version the caller saw. Raises ValueError or TypeError for unusable
    ``token`` or ``unchanged_since`` values.
    """
    guards.install()
    outer = scope.current()
    _check_token(token, outer)
    seen = versions.resolve(unchanged_since)
    command.actor = _resolve_actor(actor, outer)
    current = scope.CommandScope(
        record_id=uuid.uuid4(),
        name=command.name,
        dry_run=dry_run or bool(outer and outer.dry_run),
        actor=command.actor,
    )
    started = time.monotonic()

    if outer is not None:
        result = _handle_secondary(command, current, outer, seen, started)
    else:
        result = _handle_primary(command, current, seen, token, started)

    _log(result, command.actor, started)
    return result


def take_lock(db: str, key: str) -> None:
    """Lock the command lock row ``key`` until the transaction ends."""
    if not isinstance(key, str) or not key or len(key) > MAX_LOCK_KEY_LENGTH:
        raise ValueError(
            "lock_key() must return a non-empty string of at most "
            f"{MAX_LOCK_KEY_LENGTH} characters, got {key!r}."
        )
    conn = database.connection()
    database.take_write_lock(conn)
    locked = CommandLock.objects.using(db).select_for_update().filter(key=key)
    if not locked.exists():
        CommandLock.objects.using(db).get_or_create(key=key)
        locked.exists()


def _resolve_actor(actor: Any, outer: scope.CommandScope | None) -> Any:
    if actor is not None:
        return actor
    return outer.actor if outer is not None else SYSTEM


def _check_token(token: Any, outer: scope.CommandScope | None) -> None:
    if token is None:
        return
    if outer is not None:
        raise ValueError(
            "A secondary command takes no token: it runs once with its "
            "primary command, so give the token to the primary's handle()."
        )
    if (
        not isinstance(token, str)
        or not token
        or len(token) > MAX_TOKEN_LENGTH
        or "\x00" in token
    ):
        raise ValueError(
            f"A token must be a non-empty string of at most {MAX_TOKEN_LENGTH} "
            f"characters without NUL characters, got {token!r}."
        )


class _TokenBusy(Exception):
    """The database ended the wait for another call holding the token."""


def _handle_primary(
    command: Command,
    current: scope.CommandScope,
    seen: list[versions.Seen],
    token: str | None,
    started: float,
) -> CommandResult:
    db = database.alias()
    try:
        with transaction.atomic(using=db):
            # SQLite: take the write lock before the token is read, so that
            # no other writer can get in between the read and the claim.
            database.take_write_lock(database.connection())
            if token is not None:
                earlier = _answer_for_token(command, current, token)
                if earlier is not None:
                    return earlier

            result, error = _run_in_savepoint(command, current, seen)
            result.token = token
            _close(command, result, error, started, token)
    except _TokenBusy:
        return _in_progress(current, token)
    return result


def _run_in_savepoint(
    command: Command, current: scope.CommandScope, seen: list[versions.Seen]
) -> tuple[CommandResult, str]:
    entered = scope.enter(current)
    error, text = None, ""
    try:
        with transaction.atomic(using=database.alias()):
            value = _validate_and_execute(command, seen)
            _drop_rolled_back(current)
    except Rejected as rejection:
        result = _failed(current, REJECTED, rejection.problems, rejection.stage)
    except Exception as exc:
        error, text = exc, traceback.format_exc()
        problem = Problem(f"The command failed: {type(exc).__name__}.", "internal")
        result = _failed(current, FAILED, [problem], None)
    else:
        result = _succeeded(current, value)
    finally:
        scope.leave(entered)

    # Logged outside the command's scope, so that a logging handler that
    # mails errors is not refused as a side effect of the command.
    if error is not None:
        logger.error("command raised command=%s", command.name, exc_info=error)
    return result, text


def _handle_secondary(
    command: Command,
    current: scope.CommandScope,
    outer: scope.CommandScope,
    seen: list[versions.Seen],
    started: float,
) -> CommandResult:
    db = database.alias()
    entered = scope.enter(current)
    try:
        with transaction.atomic(using=db):
            value = _validate_and_execute(command, seen)
            _drop_rolled_back(current)
            result = _succeeded(current, value)
            if current.dry_run and not outer.dry_run:
                transaction.set_rollback(True, using=db)
                return result
    finally:
        scope.leave(entered)

    outer.jobs.extend(current.jobs)
    outer.actions.extend(current.actions)
    if not current.dry_run:
        _close(command, result, "", started, None)
    return result


def _validate_and_execute(command: Command, seen: list[versions.Seen]) -> Any:
    _stage("inputs", lambda: _input_problems(command))
    take_lock(database.alias(), command.lock_key())
    _stage("conflict", lambda: versions.conflicts(seen))
    _stage("rules", command.validate)
    _stage("authorization", lambda: _authorization_problems(command))

    try:
        return command.execute()
    except Rejected as rejection:
        rejection.stage = rejection.stage or "execute"
        raise


def _stage(name: str, check: Callable[[], Iterable[Problem] | None]) -> None:
    """Run one stage of validation; raise Rejected with what it found."""
    try:
        problems = list(check() or ())
    except Rejected as rejection:
        rejection.stage = rejection.stage or name
        raise
    for problem in problems:
        if not isinstance(problem, Problem):
            raise TypeError(
                f"The {name} stage must give Problem objects, got {problem!r}."
            )
    if problems:
        raise Rejected(problems, stage=name)


def _input_problems(command: Command) -> list[Problem]:
    """Check the declared inputs; when they are valid, set command.inputs."""
    form = command.Inputs(data=command.raw_inputs)
    problems = [
        Problem(f"Unknown input {name!r}.", "unknown_input", name)
        for name in sorted(set(form.data) - set(form.fields))
    ]
    if form.is_valid():
        if not problems:
            command.inputs = form.cleaned_data
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


def _authorization_problems(command: Command) -> list[Problem]:
    """Apply every authorization rule: any deny wins, one allow is needed."""
    actor = command.actor
    decisions: list[Any] = []
    if actor is SYSTEM:
        decisions.append(ALLOW)
    needed = authorization.permissions_of(type(command))
    if needed and authorization.has_permissions(actor, needed):
        decisions.append(ALLOW)
    for rule in command.authorization:
        decisions.append(_decision(rule(actor, command), rule))
    decisions.append(_decision(command.authorize(actor), command.authorize))

    denials = [_denial(d) for d in decisions if d is DENY or isinstance(d, Problem)]
    if denials:
        return list(dict.fromkeys(denials))
    if ALLOW in decisions:
        return []
    return [_no_allow(needed)]


def _decision(value: Any, source: Any) -> Any:
    if value is None or value is ALLOW or value is DENY or isinstance(value, Problem):
        return value
    name = getattr(source, "__qualname__", repr(source))
    raise TypeError(
        f"The authorization rule {name} returned {value!r}; return ALLOW, DENY, "
        "a Problem or None."
    )


def _denial(decision: Any) -> Problem:
    if isinstance(decision, Problem):
        return decision
    return Problem("You are not allowed to run this command.", FORBIDDEN)


def _no_allow(needed: tuple[str, ...]) -> Problem:
    if not needed:
        return Problem("You are not allowed to run this command.", FORBIDDEN)
    names = ", ".join(repr(name) for name in needed)
    noun = "permission" if len(needed) == 1 else "permissions"
    return Problem(f"You need the {noun} {names} to run this command.", FORBIDDEN)


def _answer_for_token(
    command: Command, current: scope.CommandScope, token: str
) -> CommandResult | None:
    """Return the answer stored for ``token``, or None once it is claimed."""
    stored = _stored(token)
    if stored is None and not current.dry_run:
        stored = _claim(command, current, token)
    if stored is None:
        return None
    return _repeat(command, current, stored, token)


def _stored(token: str) -> CommandRecord | None:
    return CommandRecord.objects.using(database.alias()).filter(token=token).first()


def _claim(
    command: Command, current: scope.CommandScope, token: str
) -> CommandRecord | None:
    """Insert this command's record under ``token``; return a stored one.

    The unique constraint decides, not the command lock: commands with
    other lock keys run side by side. A concurrent insert of the same token
    waits for this transaction and fails once it commits, inside its own
    savepoint, so its transaction stays usable.
    """
    db = database.alias()
    try:
        with transaction.atomic(using=db):
            # Replaced by the final record before this transaction commits.
            CommandRecord.objects.using(db).create(
                id=current.record_id,
                name=command.name,
                token=token,
                actor=_actor_text(command.actor),
                outcome=FAILED,
            )
    except IntegrityError:
        stored = _stored(token)
        if stored is None:
            raise
        return stored
    except OperationalError as exc:
        if _busy(exc):
            raise _TokenBusy from exc
        raise
    return None


def _busy(exc: OperationalError) -> bool:
    cause = exc.__cause__
    code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if code is None and exc.args:
        code = exc.args[0]
    return code in BUSY_ERRORS


def _repeat(
    command: Command, current: scope.CommandScope, stored: CommandRecord, token: str
) -> CommandResult:
    if not _same_request(command, stored):
        problem = Problem(
            "This token was already used for a different request; use a new "
            "token for a new request.",
            "token_reused",
        )
        return _failed(current, REJECTED, [problem], "token", recorded=False)

    db = database.alias()
    return CommandResult(
        name=stored.name,
        outcome=stored.outcome,
        value=stored.result,
        problems=[_problem_from(item) for item in stored.problems or []],
        jobs=list(Job.objects.using(db).filter(command_id=stored.pk).order_by("pk")),
        actions=list(
            Action.objects.using(db).filter(command_id=stored.pk).order_by("pk")
        ),
        record_id=stored.pk,
        dry_run=current.dry_run,
        repeated=True,
        token=token,
    )


def _same_request(command: Command, stored: CommandRecord) -> bool:
    if stored.name != command.name or stored.actor != _actor_text(command.actor):
        return False
    try:
        _input_problems(command)
    except Exception:
        # A form that raises never got a token stored, so this is new.
        return False
    recorded = _recorded_inputs(command)
    return _json_round_trip(recorded) == stored.inputs


def _json_round_trip(value: Any) -> Any:
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def _problem_from(item: Any) -> Problem:
    if not isinstance(item, Mapping):
        return Problem(str(item))
    return Problem(
        message=str(item.get("message", "")),
        code=str(item.get("code") or "invalid"),
        field=item.get("field"),
    )


def _in_progress(current: scope.CommandScope, token: str | None) -> CommandResult:
    problem = Problem(
        "A request with this token is still being handled; ask again later "
        "for its outcome.",
        IN_PROGRESS,
    )
    result = _failed(current, IN_PROGRESS, [problem], "token", recorded=False)
    result.token = token
    return result


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
        outcome=SUCCEEDED,
        value=value,
        jobs=current.jobs,
        actions=current.actions,
        record_id=None if current.dry_run else current.record_id,
        dry_run=current.dry_run,
    )


def _failed(
    current: scope.CommandScope,
    outcome: str,
    problems: list[Problem],
    stage: str | None,
    recorded: bool = True,
) -> CommandResult:
    return CommandResult(
        name=current.name,
        outcome=outcome,
        problems=problems,
        record_id=current.record_id if recorded and not current.dry_run else None,
        dry_run=current.dry_run,
        stage=stage,
    )


def _close(
    command: Command,
    result: CommandResult,
    error: str,
    started: float,
    token: str | None,
) -> None:
    db = database.alias()
    if result.dry_run:
        # Undoes the lock row, the command's writes and their after-commit
        # callbacks, whether this block is the outermost one or a savepoint.
        transaction.set_rollback(True, using=db)
        return

    secrets = _secret_values(command)
    fields = {
        "name": command.name,
        "inputs": _recorded_inputs(command),
        "actor": _actor_text(command.actor),
        "outcome": result.outcome,
        "problems": _storable(
            [_hidden(problem.as_dict(), secrets) for problem in result.problems]
        ),
        "result": _storable(result.value),
        "error": _hide_text(arguments.scrub_text(error), secrets),
        "duration_ms": (time.monotonic() - started) * 1000,
    }
    if token is None:
        CommandRecord.objects.using(db).create(id=result.record_id, **fields)
        return

    # A failed command did nothing, so its token stays free for a retry.
    kept = None if result.outcome == FAILED else token
    records = CommandRecord.objects.using(db).filter(pk=str(result.record_id))
    records.update(token=kept, **fields)


def record_denied(
    command: Command, *, actor: Any, problem: Problem | None = None
) -> CommandResult:
    """Record that ``actor`` was refused ``command`` before it ran.

    For callers that check permissions before ``handle``, such as the
    admin. Writes a rejected record in its own transaction on the jobs'
    database (joining the caller's, if any) and returns the rejection.
    """
    command.actor = actor
    started = time.monotonic()
    refusal = problem or Problem("You are not allowed to run this command.", FORBIDDEN)
    result = CommandResult(
        name=command.name,
        outcome=REJECTED,
        problems=[refusal],
        record_id=uuid.uuid4(),
        stage="authorization",
    )

    with transaction.atomic(using=database.alias()):
        _close(command, result, "", started, None)

    _log(result, actor, started)
    return result


def _recorded_inputs(command: Command) -> Any:
    stored = _storable(command.inputs or command.raw_inputs)
    if not isinstance(stored, dict):
        return stored
    names = _redacted_names(command)
    return {
        key: REDACTED if _is_redacted(key, names) else value
        for key, value in stored.items()
    }


def _redacted_names(command: Command) -> tuple[str, ...]:
    names = settings.REDACTED_INPUTS
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise SettingsError(
            f"KLERK_REDACTED_INPUTS must be a list or tuple of input names, "
            f"got {names!r}."
        )
    everything = (*names, *command.redacted_inputs)
    return tuple(str(name).lower().replace("-", "_") for name in everything if name)


def _is_redacted(key: Any, names: tuple[str, ...]) -> bool:
    folded = str(key).lower().replace("-", "_")
    return any(name in folded for name in names)


def _secret_values(command: Command) -> list[str]:
    """Return the text of redacted inputs, to hide it in messages too."""
    names = _redacted_names(command)
    values = []
    for inputs in (command.raw_inputs, command.inputs):
        for key, value in inputs.items():
            if _is_redacted(key, names) and value not in (None, ""):
                values.append(str(value))
    # Longest first, so that a secret containing another is hidden whole.
    return sorted(set(values), key=len, reverse=True)


def _hidden(problem: dict[str, Any], secrets: list[str]) -> dict[str, Any]:
    return {**problem, "message": _hide_text(problem["message"], secrets)}


def _hide_text(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


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
    if actor is None or actor is SYSTEM:
        return "system"
    if getattr(actor, "is_anonymous", False):
        return "anonymous"
    username = getattr(actor, "get_username", None)
    if callable(username):
        return f"user:{username()} (id={actor.pk})"
    return str(actor)


def _log(result: CommandResult, actor: Any, started: float) -> None:
    duration_ms = (time.monotonic() - started) * 1000
    log = logger.error if result.outcome == FAILED else logger.info
    log(
        "command %s command=%s record_id=%s actor=%s dry_run=%s repeated=%s "
        "duration_ms=%.1f",
        result.outcome,
        result.name,
        result.record_id,
        _actor_text(actor),
        result.dry_run,
        result.repeated,
        duration_ms,
    )


def schedule(
    command: Command,
    *,
    run_after: datetime | None = None,
    delay: timedelta | float | None = None,
    token: str | None = None,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
) -> Job:
    """Store a job that runs ``command`` later, as the system actor.

    The job is written in the caller's transaction, like any job; the
    command is validated only when it runs. Its raw inputs must be JSON.
    ``token`` makes every job scheduled with it run the command at most
    once; without one, each job runs it at most once. Raises ValueError for
    a command class that is not registered under its name.
    """
    if registry.get(command.name) is not type(command):
        raise ValueError(
            f"{type(command).__name__} is not the command registered as "
            f"{command.name!r}, so a worker could not re-create it."
        )
    _check_token(token, None)

    options = {
        "run_after": run_after,
        "delay": delay,
        "queue": queue,
        "priority": priority,
        "max_attempts": max_attempts,
    }
    chosen = {name: value for name, value in options.items() if value is not None}
    function = run_scheduled.using(**chosen) if chosen else run_scheduled
    return function.enqueue(
        command.name, dict(command.raw_inputs), token=token, nonce=uuid.uuid4().hex
    )


@job(name="klerk.command")
def run_scheduled(
    name: str, inputs: dict[str, Any], token: str | None = None, nonce: str = ""
) -> dict[str, Any]:
    """Run a scheduled command as the system actor; return its outcome.

    A rejection ends the job as succeeded, with the problems in its result:
    the command was asked, and it said no. A failure (or a token still held
    elsewhere) raises, so that the job's attempts run the command again.
    Every attempt of one job shares a token, so a command that succeeded
    is not run a second time when its job is.
    """
    context = current_job()
    if token is None and context is not None:
        token = f"klerk.command:{context.job_id}:{nonce}"

    result = handle(get_command(name)(**inputs), actor=SYSTEM, token=token)

    if result.outcome in (FAILED, IN_PROGRESS):
        raise ScheduledCommandFailed(name, result.outcome, result.record_id)
    return {
        "outcome": result.outcome,
        "record_id": str(result.record_id) if result.record_id else None,
        "repeated": result.repeated,
        "problems": [problem.as_dict() for problem in result.problems],
        "value": _storable(result.value),
    }
