"""The Django Tasks backend: enqueue, results, signals and real workers."""

from __future__ import annotations

import sys
import uuid
from datetime import timedelta

import django
import pytest

pytest.importorskip(
    "django.tasks",
    reason=f"django.tasks needs Django 6.0 or newer, found {django.get_version()}",
)

from asgiref.sync import async_to_sync  # noqa: E402
from django.db import transaction  # noqa: E402
from django.tasks import (  # noqa: E402
    TaskResultStatus,
    default_task_backend,
    task,
    task_backends,
)
from django.tasks.exceptions import (  # noqa: E402
    InvalidTask,
    InvalidTaskBackend,
    TaskResultDoesNotExist,
    TaskResultMismatch,
)
from django.tasks.signals import (  # noqa: E402
    task_enqueued,
    task_finished,
    task_started,
)
from django.utils import timezone  # noqa: E402

from klerk_django import attempts, leases, tasks_backend  # noqa: E402
from klerk_django.jobs import cancel_jobs  # noqa: E402
from klerk_django.models import FINAL_STATUSES, Job, JobStatus  # noqa: E402
from klerk_django.tasks_backend import JobFailure, KlerkBackend  # noqa: E402
from tests.testapp import tasks  # noqa: E402
from tests.testapp.jobs import record  # noqa: E402
from tests.testapp.models import Run  # noqa: E402
from tests.workers import running_worker, wait_for  # noqa: E402

BACKEND = "klerk_django.tasks_backend.KlerkBackend"
TASKS = {
    "default": {
        "BACKEND": BACKEND,
        "QUEUES": ["default", "emails"],
        "OPTIONS": {"MAX_ATTEMPTS": 2, "BACKOFF_SECONDS": 0},
    }
}
FAILURE_PATH = f"{JobFailure.__module__}.{JobFailure.__qualname__}"


def plain(value):
    return value


@task
def defined_elsewhere(value):
    """A task this module created while the default backend was another."""
    return value


@pytest.fixture
def backend(settings):
    settings.TASKS = TASKS
    return task_backends["default"]


@pytest.fixture
def signals():
    sent = []

    def receive(kind, sender, task_result, **kwargs):
        sent.append((kind, sender, task_result.status, task_result.attempts))

    receivers = {
        "enqueued": task_enqueued,
        "started": task_started,
        "finished": task_finished,
    }
    handlers = {}
    for name, signal in receivers.items():
        handlers[name] = lambda name=name, **kw: receive(name, **kw)
        signal.connect(handlers[name], weak=False)
    yield sent
    for name, signal in receivers.items():
        signal.disconnect(handlers[name])


def run_one(worker_id: uuid.UUID) -> str:
    """Claim the next ready job and run one attempt here, as a worker does."""
    (claimed,) = leases.claim(worker_id, None, 1)
    return attempts.run(claimed, worker_id)


@pytest.mark.django_db
def test_rolled_back_enqueue_leaves_no_job(backend, signals):
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            tasks.add.enqueue(1, 2)
            raise RuntimeError("roll back")

    assert not Job.objects.exists()
    assert signals == []


@pytest.mark.django_db
def test_enqueue_stores_one_job_named_by_the_task_path(backend):
    result = tasks.add.enqueue(1, b=2)

    job = Job.objects.get()
    assert job.name == "tests.testapp.tasks.add"
    assert (job.queue, job.priority, job.status) == ("default", 0, JobStatus.READY)
    assert job.arguments == {"args": [1], "kwargs": {"b": 2}}
    assert (job.max_attempts, job.backoff_base_seconds) == (2, 0)
    assert result.id == str(job.pk)
    assert result.status == TaskResultStatus.READY
    assert (result.args, result.kwargs) == ([1], {"b": 2})
    assert result.enqueued_at == job.created_at
    assert result.backend == "default"
    assert result.task.func is tasks.add.func


@pytest.mark.django_db
def test_call_the_task_cannot_take_is_refused_before_any_row(backend):
    with pytest.raises(TypeError, match="missing a required argument: 'b'"):
        tasks.add.enqueue(1)
    with pytest.raises(TypeError, match="Unsupported type"):
        tasks.add.enqueue(1, object())

    assert not Job.objects.exists()


@pytest.mark.django_db
def test_settings_fill_options_that_neither_task_nor_backend_set(settings):
    settings.TASKS = {"default": {"BACKEND": BACKEND}}
    settings.KLERK_MAX_ATTEMPTS = 7
    settings.KLERK_BACKOFF_MAX_SECONDS = 60.0

    result = tasks.add.enqueue(1, 2)

    job = Job.objects.get(pk=result.id)
    assert (job.max_attempts, job.backoff_max_seconds) == (7, 60.0)


@pytest.mark.django_db
def test_priority_queue_and_run_after_map_onto_the_job(backend):
    later = timezone.now() + timedelta(hours=1)
    urgent = tasks.add.using(priority=100, queue_name="emails", run_after=later)

    result = urgent.enqueue(1, 2)

    job = Job.objects.get(pk=result.id)
    assert (job.priority, job.queue, job.run_after) == (100, "emails", later)
    stored = backend.get_result(result.id)
    assert stored.task.priority == 100
    assert stored.task.queue_name == "emails"
    assert stored.task.run_after == later
    assert leases.claim(uuid.uuid4(), None, 1) == []


@pytest.mark.django_db
def test_lowest_priority_runs_after_default_priority(backend):
    low = tasks.add.using(priority=-100).enqueue(1, 1)
    normal = tasks.add.enqueue(2, 2)

    (first,) = leases.claim(uuid.uuid4(), None, 1)

    assert str(first.id) == normal.id != low.id


@pytest.mark.django_db
def test_queue_outside_queues_is_an_invalid_task(backend):
    with pytest.raises(InvalidTask, match="other"):
        tasks.add.using(queue_name="other")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"QUEUES": ["no spaces allowed"]}, "not a klerk queue name"),
        ({"OPTIONS": {"RETRIES": 3}}, "unknown keys \\['RETRIES'\\]"),
        ({"OPTIONS": {"MAX_ATTEMPTS": 0}}, "'max_attempts' must be"),
        ({"OPTIONS": {"BACKOFF_SECONDS": "soon"}}, "'soon'"),
    ],
)
def test_backend_settings_are_checked(settings, params, message):
    settings.TASKS = {"default": {"BACKEND": BACKEND, **params}}

    with pytest.raises(InvalidTaskBackend, match=message):
        task_backends["default"]


def test_tasks_modules_are_discovered_only_for_a_klerk_backend(settings, monkeypatch):
    discovered = []
    monkeypatch.setattr(tasks_backend, "autodiscover_modules", discovered.append)

    settings.TASKS = {
        "default": {"BACKEND": "django.tasks.backends.dummy.DummyBackend"}
    }
    tasks_backend.discover_tasks()
    assert discovered == []

    settings.TASKS = {"dummy": {"BACKEND": "no.such.Backend"}, **TASKS}
    tasks_backend.discover_tasks()
    assert discovered == ["tasks"]


def test_flags_say_what_the_backend_supports(backend):
    assert backend.supports_defer
    assert backend.supports_async_task
    assert backend.supports_get_result
    assert backend.supports_priority


@pytest.mark.django_db
def test_task_enqueued_is_sent_once_committed(
    backend, signals, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            result = tasks.add.enqueue(1, 2)
            assert signals == []

    assert signals == [("enqueued", KlerkBackend, TaskResultStatus.READY, 0)]
    assert result.id == str(Job.objects.get().pk)


@pytest.mark.django_db
def test_get_result_finds_only_django_task_jobs(backend):
    klerk_job = record.enqueue("not a task")
    stranger = Job.objects.create(
        name="wsgiref.simple_server.demo_app", run_after=timezone.now()
    )
    imported = "wsgiref.simple_server" in sys.modules

    for result_id in ("nope", "-1", "9" * 30, "424242", klerk_job.pk, stranger.pk):
        with pytest.raises(TaskResultDoesNotExist):
            backend.get_result(str(result_id))

    assert imported or "wsgiref.simple_server" not in sys.modules


@pytest.mark.django_db
def test_worker_fails_a_job_naming_an_unregistered_path(backend):
    imported = "wsgiref.simple_server" in sys.modules
    job = Job.objects.create(
        name="wsgiref.simple_server.demo_app", run_after=timezone.now()
    )

    assert run_one(uuid.uuid4()) == JobStatus.READY

    job.refresh_from_db()
    assert "No job function is registered" in job.last_error
    assert imported or "wsgiref.simple_server" not in sys.modules


@pytest.mark.django_db
def test_get_result_finds_a_task_created_under_another_backend(backend):
    job = Job.objects.create(
        name="tests.test_tasks_backend.defined_elsewhere",
        arguments={"args": [7], "kwargs": {}},
        run_after=timezone.now(),
    )

    result = defined_elsewhere.get_result(str(job.pk))

    assert result.task.func is defined_elsewhere.func
    assert result.args == [7]


@pytest.mark.django_db
def test_get_result_through_another_task_is_a_mismatch(backend):
    result = tasks.explode.enqueue("x")

    with pytest.raises(TaskResultMismatch):
        tasks.add.get_result(result.id)
    assert tasks.explode.get_result(result.id).id == result.id


@pytest.mark.django_db
def test_worker_run_succeeds_and_sends_started_then_finished(backend, signals):
    worker_id = uuid.uuid4()
    result = tasks.add.enqueue(2, 3)

    status = run_one(worker_id)

    assert status == JobStatus.SUCCEEDED
    assert [entry[:3] for entry in signals] == [
        ("started", KlerkBackend, TaskResultStatus.RUNNING),
        ("finished", KlerkBackend, TaskResultStatus.SUCCESSFUL),
    ]
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.worker_ids == [str(worker_id)]
    assert result.attempts == 1
    assert result.errors == []
    job = Job.objects.get(pk=result.id)
    assert result.started_at == result.last_attempted_at == job.started_at
    assert result.finished_at == job.finished_at is not None


@pytest.mark.django_db
def test_failed_attempts_report_ready_then_failed_with_errors(backend, signals):
    first, second = uuid.uuid4(), uuid.uuid4()
    result = tasks.explode.enqueue("x")

    assert run_one(first) == JobStatus.READY
    result.refresh()
    assert result.status == TaskResultStatus.READY
    assert [error.exception_class for error in result.errors] == [ValueError]

    assert run_one(second) == JobStatus.FAILED
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.worker_ids == [str(first), str(second)]
    assert result.finished_at is not None
    assert len(result.errors) == 2
    for error in result.errors:
        assert error.exception_class_path == "builtins.ValueError"
        assert "exploded x" in error.traceback
    with pytest.raises(ValueError, match="failed"):
        _ = result.return_value
    assert [entry[0] + ":" + entry[2] for entry in signals] == [
        "started:RUNNING",
        "finished:READY",
        "started:RUNNING",
        "finished:FAILED",
    ]


@pytest.mark.django_db
def test_task_with_context_sees_its_attempt_and_result_id(backend):
    retried = tasks.fail_first.enqueue("k")
    counted = tasks.attempt_of.enqueue("k")

    for _ in range(3):
        run_one(uuid.uuid4())

    assert backend.get_result(retried.id).return_value == 2
    assert backend.get_result(retried.id).errors[0].exception_class is KeyError
    value = backend.get_result(counted.id).return_value
    assert value == {"attempt": 1, "id": counted.id, "key": "k"}


@pytest.mark.django_db
def test_interrupted_and_cancelled_jobs_report_job_failures(backend):
    interrupted = tasks.add.using(priority=1).enqueue(1, 1)
    cancelled = tasks.add.enqueue(2, 2)
    worker_id = uuid.uuid4()
    (claimed,) = leases.claim(worker_id, None, 1)

    leases.interrupt(worker_id, [claimed.id], "the test stopped it")
    cancel_jobs([int(cancelled.id)])

    (error,) = backend.get_result(interrupted.id).errors
    assert error.exception_class_path == FAILURE_PATH
    assert "the test stopped it" in error.traceback
    result = backend.get_result(cancelled.id)
    assert result.status == TaskResultStatus.FAILED
    assert [error.exception_class for error in result.errors] == [JobFailure]


@pytest.mark.django_db
def test_aget_result_reads_the_same_result(backend):
    result = tasks.add.enqueue(1, 2)

    fetched = async_to_sync(tasks.add.aget_result)(result.id)

    assert fetched.id == result.id
    assert fetched.status == TaskResultStatus.READY


@pytest.mark.django_db
def test_retry_options_reach_the_job_through_using(backend):
    defined = task(plain)

    result = defined.using(max_attempts=5, backoff_seconds=1.5).enqueue(1)

    job = Job.objects.get(pk=result.id)
    assert (job.max_attempts, job.backoff_base_seconds) == (5, 1.5)
    with pytest.raises(InvalidTask, match="max_attempts"):
        defined.using(max_attempts=0)


@pytest.mark.skipif(
    django.VERSION < (6, 1), reason="@task passes extra options from Django 6.1"
)
@pytest.mark.django_db
def test_task_decorator_options_reach_the_job(backend):
    defined = task(max_attempts=1, backoff_max_seconds=9.0, priority=3)(plain)

    result = defined.enqueue(1)

    job = Job.objects.get(pk=result.id)
    assert (job.max_attempts, job.backoff_max_seconds, job.priority) == (1, 9.0, 3)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_worker_process_runs_committed_tasks(backend, settings, tmp_path):
    email = tasks.email_users.enqueue(
        emails=["user@example.com"],
        subject="You have a message",
        message="Hello there!",
    )
    deferred = tasks.email_users.using(
        priority=10, run_after=timezone.now() + timedelta(minutes=5)
    ).enqueue(emails=["later@example.com"], subject="Later", message="Soon.")
    sums = tasks.add.enqueue(2, 3)
    awaited = tasks.add_later.enqueue(4, 5)
    failing = tasks.explode.enqueue("in a worker")

    with running_worker(
        settings=worker_settings(tmp_path), log=tmp_path / "worker.out"
    ):
        wait_for(lambda: not unfinished().exclude(pk=deferred.id).exists())

    email.refresh()
    assert email.status == TaskResultStatus.SUCCESSFUL
    assert email.return_value == 1
    assert "You have a message" in "".join(
        path.read_text() for path in tmp_path.glob("*.log")
    )
    assert tasks.email_users.get_result(deferred.id).status == TaskResultStatus.READY
    assert default_task_backend.get_result(sums.id).return_value == 5
    assert tasks.add_later.get_result(awaited.id).return_value == 9
    failed = tasks.explode.get_result(failing.id)
    assert failed.status == TaskResultStatus.FAILED
    assert failed.attempts == 2
    assert failed.errors[-1].exception_class is ValueError
    assert "exploded in a worker" in failed.errors[-1].traceback
    kinds = Run.objects.filter(key=failing.id).values_list("kind", flat=True)
    assert sorted(kinds) == [
        "task_finished:FAILED",
        "task_finished:READY",
        "task_started",
        "task_started",
    ]


def worker_settings(tmp_path) -> dict[str, object]:
    return {
        "TASKS": TASKS,
        "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
        "EMAIL_FILE_PATH": str(tmp_path),
    }


def unfinished():
    return Job.objects.exclude(status__in=FINAL_STATUSES)
