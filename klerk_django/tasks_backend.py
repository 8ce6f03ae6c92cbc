"""The Django Tasks backend: ``@task`` functions run as klerk jobs.

Configure it as ``TASKS = {"default": {"BACKEND":
"klerk_django.tasks_backend.KlerkBackend"}}`` (Django 6.0 or newer).

1. ``enqueue`` stores one job in the caller's transaction, as
   ``JobFunction.enqueue`` does: a rollback removes it, and
   ``task_enqueued`` is sent once it commits.
2. A ``klerk_worker`` claims the job and calls the job function that stands
   for the task; that function sends ``task_started``, runs the task and
   sends ``task_finished`` before the attempt is recorded.
3. ``get_result`` reads the job and its attempts back as a ``TaskResult``.

A job names its task by the task's module path, and a worker resolves that
name only through klerk's job registry. A task enters the registry when a
Klerk backend validates it, which Django does as the ``@task`` decorator
runs, and workers import the ``tasks`` module of every installed app at
start-up. A row can therefore only run a function that was decorated with
``@task`` for a Klerk backend, never import a path of its choosing.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from traceback import format_exception
from typing import Any, cast

from django.conf import settings as django_settings
from django.db import transaction
from django.dispatch import Signal
from django.tasks import Task, TaskContext, TaskResult, TaskResultStatus
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import TaskError
from django.tasks.exceptions import (
    InvalidTask,
    InvalidTaskBackend,
    TaskResultDoesNotExist,
)
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils import timezone
from django.utils.json import normalize_json
from django.utils.module_loading import autodiscover_modules, import_string

from . import arguments, database, jobs
from .attempts import JobContext, current_job
from .exceptions import EnqueueOptionError, KlerkError, RegistryConflict
from .models import Attempt, Job, JobStatus

logger = logging.getLogger(__name__)

OPTIONS = {
    "MAX_ATTEMPTS": "max_attempts",
    "BACKOFF_SECONDS": "backoff_seconds",
    "BACKOFF_MAX_SECONDS": "backoff_max_seconds",
}

STATUSES = {
    JobStatus.READY: TaskResultStatus.READY,
    JobStatus.RUNNING: TaskResultStatus.RUNNING,
    JobStatus.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    JobStatus.FAILED: TaskResultStatus.FAILED,
    # Django has no cancelled state; a cancelled task did not run to its end.
    JobStatus.CANCELLED: TaskResultStatus.FAILED,
}

RESULT_ID = re.compile(r"^[0-9]{1,19}$")
NAME_LENGTH: int = Job._meta.get_field("name").max_length or 200


class JobFailure(KlerkError):
    """A task failure that no exception of the task caused.

    Its path stands in ``TaskResult.errors`` for an attempt cut short by a
    lost or stopped worker, an outcome the database refused, and a
    cancelled job; the error's traceback holds the explanation.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class KlerkTask(Task):
    """A Django task with klerk's retry options; None keeps the defaults.

    On Django 6.1 ``@task(max_attempts=3)`` creates one when the task's
    backend is a ``KlerkBackend``; ``using`` accepts the options as well.
    """

    max_attempts: int | None = None
    backoff_seconds: float | None = None
    backoff_max_seconds: float | None = None

    def using(  # type: ignore[override]
        self,
        *,
        max_attempts: int | None = None,
        backoff_seconds: float | None = None,
        backoff_max_seconds: float | None = None,
        **changes: Any,
    ) -> KlerkTask:
        """Return this task with other defaults, klerk's options included."""
        retry = {
            "max_attempts": max_attempts,
            "backoff_seconds": backoff_seconds,
            "backoff_max_seconds": backoff_max_seconds,
        }
        retry = {name: value for name, value in retry.items() if value is not None}

        # A slots dataclass breaks the bare super() of its methods.
        task: Any = Task.using(self, **changes)
        return replace(task, **retry) if retry else task


class TaskJob(jobs.JobFunction):
    """The job function a worker calls to run one Django task."""

    def __init__(self, task: Task, options: jobs.JobOptions) -> None:
        def run(*args: Any, **kwargs: Any) -> Any:
            return _run(task, args, kwargs)

        # The registry tells a harmless re-registration from a conflict by
        # the module and name of the target, so they are the task's.
        functools.update_wrapper(run, task.func)
        # Enqueueing checks each call against this; the worker passes the
        # context itself.
        run.__signature__ = _call_signature(task)  # type: ignore[attr-defined]
        super().__init__(run, task.module_path, options)
        self.task = task


class KlerkBackend(BaseTaskBackend):
    """Store Django tasks as klerk jobs that ``klerk_worker`` runs.

    ``OPTIONS`` may set ``MAX_ATTEMPTS``, ``BACKOFF_SECONDS`` and
    ``BACKOFF_MAX_SECONDS`` for the backend's tasks; ``KLERK_MAX_ATTEMPTS``
    and the ``KLERK_BACKOFF_*`` settings apply otherwise.
    """

    task_class = KlerkTask

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.retry = self._retry_options()

        for queue in self.queues:
            if not isinstance(queue, str) or not jobs.QUEUE_NAME.match(queue):
                raise InvalidTaskBackend(
                    f"TASKS[{alias!r}]['QUEUES'] holds {queue!r}, which is not a "
                    "klerk queue name: use 1 to 100 letters, digits or _.:-"
                )

    def validate_task(self, task: Task) -> None:
        """Raise InvalidTask unless this backend can store and run ``task``."""
        super().validate_task(task)
        if len(task.module_path) > NAME_LENGTH:
            raise InvalidTask(
                f"Task path {task.module_path!r} is longer than the "
                f"{NAME_LENGTH} characters a job name holds."
            )

        options = self._checked_options(task)
        _register(task, options)

    def enqueue(
        self, task: Task, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> TaskResult:
        """Store a job for ``task`` in the current transaction.

        Runs in the caller's transaction on the jobs' database (autocommit
        outside one); ``task_enqueued`` is sent after it commits. Raises
        InvalidTask for a task this backend cannot run, and TypeError or
        ValueError for arguments that are not JSON.
        """
        self.validate_task(task)
        function = TaskJob(task, self._checked_options(task))

        stored_args = cast(list[Any], normalize_json(args))
        stored_kwargs = cast(dict[str, Any], normalize_json(kwargs))
        job = function.enqueue(*stored_args, **stored_kwargs)

        result = _result(job, [], task, self.alias)
        transaction.on_commit(
            functools.partial(task_enqueued.send, type(self), task_result=result),
            using=database.alias(),
            robust=True,
        )
        return result

    def get_result(self, result_id: str) -> TaskResult:
        """Return the result of the task job ``result_id`` as stored now.

        Raises TaskResultDoesNotExist when no job has that id or the job
        is not a Django task known to this process.
        """
        job = _find_job(result_id)
        task = _task_named(job.name)
        if task is None:
            raise TaskResultDoesNotExist(result_id)

        attempts = Attempt.objects.using(database.alias()).filter(job_id=job.pk)
        return _result(job, list(attempts.order_by("number")), task, self.alias)

    def _retry_options(self) -> dict[str, Any]:
        unknown = sorted(set(self.options) - set(OPTIONS))
        if unknown:
            raise InvalidTaskBackend(
                f"TASKS[{self.alias!r}]['OPTIONS'] has unknown keys {unknown!r}; "
                f"expected some of {sorted(OPTIONS)!r}."
            )

        retry = {OPTIONS[key]: value for key, value in self.options.items()}
        try:
            jobs.validate_options(_options(None, retry))
        except EnqueueOptionError as exc:
            raise InvalidTaskBackend(
                f"TASKS[{self.alias!r}]['OPTIONS'] is not usable: {exc}"
            ) from exc
        return retry

    def _checked_options(self, task: Task) -> jobs.JobOptions:
        try:
            return jobs.validate_options(_options(task, self.retry))
        except EnqueueOptionError as exc:
            raise InvalidTask(str(exc)) from exc


def discover_tasks() -> None:
    """Import every installed app's ``tasks`` module if a backend is ours.

    Called when klerk_django is ready, so that a worker knows the tasks its
    jobs name before it claims any.
    """
    backends = getattr(django_settings, "TASKS", {}).values()
    if any(_is_klerk(params.get("BACKEND")) for params in backends):
        autodiscover_modules("tasks")


def _is_klerk(path: Any) -> bool:
    try:
        backend = import_string(str(path))
    except ImportError:
        return False
    return isinstance(backend, type) and issubclass(backend, KlerkBackend)


def _options(task: Task | None, retry: Mapping[str, Any]) -> jobs.JobOptions:
    """Return the job options of ``task``; None leaves one to the settings."""

    def pick(name: str) -> Any:
        for value in (getattr(task, name, None), retry.get(name)):
            if value is not None:
                return value
        return None

    return jobs.JobOptions(
        queue=task.queue_name if task else None,
        priority=task.priority if task else 0,
        max_attempts=pick("max_attempts"),
        backoff_base_seconds=pick("backoff_seconds"),
        backoff_max_seconds=pick("backoff_max_seconds"),
        run_after=task.run_after if task else None,
    )


def _call_signature(task: Task) -> inspect.Signature:
    signature = inspect.signature(task.func)
    if not task.takes_context:
        return signature
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def _register(task: Task, options: jobs.JobOptions) -> None:
    name = task.module_path
    if name in jobs.registry:
        known = jobs.registry.get(name)
        if isinstance(known, TaskJob) and known.task.func is task.func:
            return

    try:
        jobs.registry.add(name, TaskJob(task, options), task.func)
    except RegistryConflict as exc:
        raise InvalidTask(str(exc)) from exc


def _task_named(name: str) -> Task | None:
    if name in jobs.registry:
        known = jobs.registry.get(name)
        return known.task if isinstance(known, TaskJob) else None

    # A task created while another backend was configured (a test that
    # overrides TASKS, say) is found in its imported module; nothing is
    # imported here, and no module __getattr__ runs.
    module_name, _, attribute = name.rpartition(".")
    module = sys.modules.get(module_name)
    found = vars(module).get(attribute) if module is not None else None
    if isinstance(found, Task) and found.module_path == name:
        return found
    return None


def _find_job(result_id: Any) -> Job:
    text = str(result_id)
    if not RESULT_ID.match(text) or int(text) >= 2**63:
        raise TaskResultDoesNotExist(result_id)
    job = Job.objects.using(database.alias()).filter(pk=int(text)).first()
    if job is None:
        raise TaskResultDoesNotExist(result_id)
    return job


def _result(job: Job, attempts: list[Attempt], task: Task, alias: str) -> TaskResult:
    """Return the task result that ``job`` and its ``attempts`` describe."""
    args, kwargs = arguments.unpack(job.arguments)
    worker_ids = [str(attempt.worker_id or "") for attempt in attempts]
    if job.status == JobStatus.RUNNING:
        # The running attempt gets its row only once it ends.
        worker_ids.append(str(job.worker_id or ""))

    result: TaskResult[Any, Any] = TaskResult(
        task=_task_as_enqueued(task, job, alias),
        id=str(job.pk),
        status=STATUSES[JobStatus(job.status)],
        enqueued_at=job.created_at,
        started_at=attempts[0].started_at if attempts else job.started_at,
        finished_at=job.finished_at if job.is_final else None,
        last_attempted_at=job.started_at,
        args=args,
        kwargs=kwargs,
        backend=alias,
        errors=_errors(job, attempts),
        worker_ids=worker_ids,
    )
    if job.status == JobStatus.SUCCEEDED:
        object.__setattr__(result, "_return_value", job.result)
    return result


def _task_as_enqueued(task: Task, job: Job, alias: str) -> Task:
    deferred = job.run_after if job.run_after > job.created_at else None
    try:
        return task.using(
            priority=job.priority,
            queue_name=job.queue,
            run_after=deferred,
            backend=alias,
        )
    except InvalidTask:
        # The job was stored under settings this backend no longer accepts
        # (a queue since removed from QUEUES); report the task as defined.
        return task


def _errors(job: Job, attempts: list[Attempt]) -> list[TaskError]:
    errors = [
        _error(attempt)
        for attempt in attempts
        if attempt.outcome != Attempt.Outcome.SUCCEEDED
    ]
    if job.status == JobStatus.CANCELLED:
        errors.append(
            TaskError(
                exception_class_path=_path(JobFailure),
                traceback=f"Job {job.pk} was cancelled.",
            )
        )
    return errors


def _error(attempt: Attempt) -> TaskError:
    path = None
    if attempt.outcome == Attempt.Outcome.FAILED:
        path = _exception_path(attempt.error, attempt.traceback)
    return TaskError(
        exception_class_path=path or _path(JobFailure),
        traceback=attempt.traceback or attempt.error,
    )


def _exception_path(error: str, text: str) -> str | None:
    """Return the class path that the last line of ``text`` names.

    Attempts store ``Name: message`` and the formatted traceback, whose
    final exception line carries the module too (none for builtins).
    """
    name = error.split(":", 1)[0]
    if not name.isidentifier():
        return None

    line = re.compile(rf"^[ |]*(?:([\w.]+)\.)?{re.escape(name)}(?::|$)")
    for candidate in reversed(text.splitlines()):
        match = line.match(candidate)
        if match:
            return f"{match.group(1) or 'builtins'}.{name}"
    return None


def _path(exception: type[BaseException]) -> str:
    return f"{exception.__module__}.{exception.__qualname__}"


def _run(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run ``task`` as the current job's attempt, sending Django's signals."""
    context = current_job()
    if context is None:
        # Called directly, outside a worker: no job, so no result to report.
        return task.call(*args, **kwargs)

    sender = type(task.get_backend())
    result = _running_result(task, context)
    _send(task_started, sender, result, context)

    try:
        if task.takes_context:
            value = task.call(TaskContext(task_result=result), *args, **kwargs)
        else:
            value = task.call(*args, **kwargs)
        value = normalize_json(value)
    except BaseException as exc:
        # Inside the handler, so that receivers can read sys.exc_info().
        _record_failure(result, exc, context)
        _send(task_finished, sender, result, context)
        raise

    object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
    object.__setattr__(result, "finished_at", timezone.now())
    object.__setattr__(result, "_return_value", value)
    _send(task_finished, sender, result, context)
    return value


def _running_result(task: Task, context: JobContext) -> TaskResult:
    db = database.alias()
    job = Job.objects.using(db).get(pk=context.job_id)
    attempts = Attempt.objects.using(db).filter(job_id=job.pk).order_by("number")
    return _result(job, list(attempts), task, task.backend)


def _record_failure(
    result: TaskResult, exc: BaseException, context: JobContext
) -> None:
    result.errors.append(
        TaskError(
            exception_class_path=_path(type(exc)),
            traceback="".join(format_exception(exc)),
        )
    )
    if context.attempt < context.max_attempts:
        object.__setattr__(result, "status", TaskResultStatus.READY)
    else:
        object.__setattr__(result, "status", TaskResultStatus.FAILED)
        object.__setattr__(result, "finished_at", timezone.now())


def _send(
    signal: Signal, sender: type, result: TaskResult, context: JobContext
) -> None:
    # A receiver's error must not become the task's: after a success it
    # would make the job run again.
    for receiver, response in signal.send_robust(sender, task_result=result):
        if isinstance(response, Exception):
            logger.error(
                "task signal receiver failed job_id=%s job=%s attempt=%s "
                "worker=%s receiver=%r",
                context.job_id,
                context.name,
                context.attempt,
                context.worker_id,
                receiver,
                exc_info=response,
            )
