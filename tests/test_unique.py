"""Unique jobs: one ready or running job per key, enforced by the database."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.db import connection, transaction

from klerk_django import attempts, cancel_jobs, leases, retry_jobs
from klerk_django.exceptions import EnqueueOptionError
from klerk_django.models import Job, JobStatus
from tests.testapp.control_jobs import unique_noop
from tests.testapp.models import Run
from tests.testapp.more_jobs import noop
from tests.workers import wait_for


def run_one() -> str:
    worker = uuid.uuid4()
    (claimed,) = leases.claim(worker, None, 1)
    return attempts.run(claimed, worker)


@pytest.mark.django_db
def test_duplicate_returns_the_ready_job_and_says_so():
    first = unique_noop.enqueue(1, colour="red")
    again = unique_noop.enqueue(1, colour="red")
    other = unique_noop.enqueue(2, colour="red")

    assert (first.is_duplicate, again.is_duplicate) == (False, True)
    assert again.pk == first.pk
    assert other.pk != first.pk and not other.is_duplicate
    assert Job.objects.count() == 2


@pytest.mark.django_db
def test_given_key_is_shared_whatever_the_arguments():
    first = noop.using(unique_key="report:2026-12").enqueue("a")
    again = noop.using(unique_key="report:2026-12").enqueue("b")
    plain = noop.enqueue("a")
    plain_again = noop.enqueue("a")

    assert again.pk == first.pk and again.is_duplicate
    assert first.unique_key == "report:2026-12"
    assert plain.pk != plain_again.pk and plain.unique_key is None


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["", "k" * 256, 7])
def test_unusable_unique_key_is_refused(key):
    with pytest.raises(EnqueueOptionError, match="unique_key"):
        noop.using(unique_key=key)


@pytest.mark.django_db
def test_duplicate_leaves_the_callers_transaction_usable():
    with transaction.atomic():
        first = unique_noop.enqueue("t")
        again = unique_noop.enqueue("t")
        Run.objects.create(kind="after", key="duplicate")

    assert again.pk == first.pk
    assert Run.objects.filter(kind="after").count() == 1


@pytest.mark.django_db
def test_unique_enqueue_many_returns_duplicates_too():
    jobs = unique_noop.enqueue_many([((1,), {}), ((2,), {}), ((1,), {})])

    assert [job.is_duplicate for job in jobs] == [False, False, True]
    assert jobs[2].pk == jobs[0].pk


@pytest.mark.django_db(transaction=True)
def test_running_job_keeps_its_key_and_a_finished_one_gives_it_up():
    first = unique_noop.enqueue("r")
    worker = uuid.uuid4()
    (claimed,) = leases.claim(worker, None, 1)
    assert unique_noop.enqueue("r").is_duplicate

    assert attempts.run(claimed, worker) == JobStatus.SUCCEEDED

    second = unique_noop.enqueue("r")
    assert not second.is_duplicate and second.pk != first.pk


@pytest.mark.django_db(transaction=True)
def test_failed_interrupted_and_cancelled_jobs_give_their_key_up():
    failing = unique_noop.using(max_attempts=1, unique_key="f").enqueue()
    worker = uuid.uuid4()
    (claimed,) = leases.claim(worker, None, 1)
    leases.interrupt(worker, [claimed.id], "test stop")
    cancelled = unique_noop.using(unique_key="c").enqueue()
    cancel_jobs([cancelled.pk])

    for key, old in (("f", failing), ("c", cancelled)):
        new = unique_noop.using(unique_key=key).enqueue()
        assert not new.is_duplicate and new.pk != old.pk
    assert Job.objects.get(pk=failing.pk).status == JobStatus.FAILED


@pytest.mark.django_db(transaction=True)
def test_retry_takes_the_key_back_only_while_no_other_job_holds_it():
    first = unique_noop.enqueue("again")
    cancel_jobs([first.pk])
    second = unique_noop.enqueue("again")

    assert retry_jobs([first.pk]) == 0
    assert Job.objects.get(pk=first.pk).status == JobStatus.CANCELLED

    cancel_jobs([second.pk])
    assert retry_jobs(Job.objects.all()) == 1
    assert unique_noop.enqueue("again").pk == Job.objects.ready().get().pk


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_concurrent_enqueues_store_one_job():
    enqueue_from_eight_threads()


@pytest.mark.mysql
@pytest.mark.django_db(transaction=True)
def test_concurrent_enqueues_store_one_job_on_mariadb():
    enqueue_from_eight_threads()


def enqueue_from_eight_threads() -> None:
    start = threading.Barrier(8)
    results: list[tuple[int, bool]] = []

    def enqueue() -> None:
        try:
            start.wait(30)
            job = unique_noop.enqueue("race")
            results.append((job.pk, job.is_duplicate))
        finally:
            connection.close()

    threads = [threading.Thread(target=enqueue) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert Job.objects.count() == 1
    assert len(results) == 8 and {pk for pk, _ in results} == {Job.objects.get().pk}
    assert [duplicate for _, duplicate in results].count(False) == 1


def _lock_waits() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return cursor.fetchone()[0]


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("ending", ["rollback", "commit"])
def test_enqueue_waits_for_a_competing_transaction(ending):
    holding, done = threading.Event(), threading.Event()
    outcome: dict[str, Job] = {}

    def compete() -> None:
        try:
            with transaction.atomic():
                outcome["first"] = unique_noop.enqueue("contested")
                holding.set()
                done.wait(60)
                if ending == "rollback":
                    transaction.set_rollback(True)
        finally:
            connection.close()

    def second() -> None:
        try:
            outcome["second"] = unique_noop.enqueue("contested")
        finally:
            connection.close()

    competitor = threading.Thread(target=compete)
    competitor.start()
    assert holding.wait(60)
    waiter = threading.Thread(target=second)
    waiter.start()
    wait_for(lambda: _lock_waits() > 0)
    done.set()
    competitor.join(60)
    waiter.join(60)

    stored = Job.objects.get()
    assert outcome["second"].pk == stored.pk
    if ending == "rollback":
        assert not outcome["second"].is_duplicate
        assert stored.pk != outcome["first"].pk
    else:
        assert outcome["second"].is_duplicate
        assert stored.pk == outcome["first"].pk
