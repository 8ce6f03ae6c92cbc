"""Wake-ups: notifications speed workers up but are never needed."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections, transaction

from klerk_django import notify
from klerk_django.models import Job, JobStatus
from klerk_django.models import Worker as WorkerRecord
from tests import faults
from tests.testapp.jobs import record
from tests.workers import running_worker, wait_for

# Far longer than any wait below: a job that runs was woken up.
LONG_POLL = "30"
# A safety net for the wake-up, well below the poll interval.
WOKEN_WITHIN_SECONDS = 15


def succeeded(job: Job) -> bool:
    return Job.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED


@pytest.mark.django_db(transaction=True)
def test_jobs_run_by_polling_alone_when_listen_is_off(vendor):
    label = faults.new_label()
    settings = {**faults.labelled(label), "KLERK_LISTEN": False}

    with running_worker("--poll-seconds", "0.5", settings=settings):
        wait_for(lambda: WorkerRecord.objects.exists())
        jobs = [record.enqueue(f"polled-{n}") for n in range(3)]
        wait_for(lambda: all(succeeded(job) for job in jobs))
        if vendor == "postgresql":
            assert faults.listener_sessions(label) == []


def listening_worker(label: str):
    settings = faults.labelled(label)
    return running_worker("--poll-seconds", LONG_POLL, settings=settings)


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_idle_worker_wakes_up_for_a_committed_job():
    label = faults.new_label()

    with listening_worker(label):
        wait_for(lambda: faults.listener_sessions(label))
        with transaction.atomic():
            job = record.enqueue("woken")

        wait_for(lambda: succeeded(job), timeout=WOKEN_WITHIN_SECONDS)


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_listener_reconnects_after_its_session_ends():
    label = faults.new_label()

    with listening_worker(label) as process:
        first = wait_for(lambda: faults.listener_sessions(label))
        faults.end_sessions(first)
        wait_for(lambda: set(faults.listener_sessions(label)) - set(first))

        job = record.enqueue("woken-again")

        wait_for(lambda: succeeded(job), timeout=WOKEN_WITHIN_SECONDS)
        assert process.poll() is None


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_wake_workers_notifies_only_once_committed():
    listener = connection.get_new_connection(connection.get_connection_params())
    listener.autocommit = True
    listener.execute(f"LISTEN {notify.CHANNEL}")
    try:
        with transaction.atomic():
            notify.wake_workers("reports")
            assert list(listener.notifies(timeout=0.2)) == []

        payloads = [note.payload for note in listener.notifies(timeout=5, stop_after=1)]
    finally:
        listener.close()

    assert payloads == ["reports"]


@pytest.mark.django_db
def test_wake_workers_is_quiet_without_listen(settings):
    settings.KLERK_LISTEN = False

    notify.wake_workers("default")

    assert notify.enabled() is False


class NoTimeoutConnection:
    """A connection whose ``notifies`` takes no timeout, as psycopg 3.1."""

    autocommit = False

    def __init__(self) -> None:
        self.closed = 0

    def execute(self, sql: str) -> None:
        pass

    def notifies(self):
        raise AssertionError("waits for ever for a notification")

    def close(self) -> None:
        self.closed += 1


@pytest.mark.django_db
def test_listener_without_notify_timeouts_leaves_it_to_polling(monkeypatch, caplog):
    fake = NoTimeoutConnection()
    monkeypatch.setattr(
        type(connections["default"]), "get_new_connection", lambda self, params: fake
    )
    stopping = threading.Event()
    listener = notify.Listener(lambda: None, (), stopping)

    listener.start()
    listener.join(10)
    stopping.set()

    assert not listener.is_alive()
    assert fake.closed == 1
    assert "psycopg 3.2" in caplog.text
