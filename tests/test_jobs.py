"""Jobs: bound to their transaction, options checked, claimed in order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from klerk_django import attempts, cancel_jobs, job, leases, retry_jobs
from klerk_django.exceptions import EnqueueOptionError, JobIdError
from klerk_django.models import Attempt, Job, JobStatus
from tests.testapp import threads
from tests.testapp.jobs import record
from tests.testapp.models import Run
from tests.testapp.more_jobs import explode, four_times, noop, once
from tests.workers import ROOT

WORKER = uuid.UUID(int=1)
INT_MAX = 2**31 - 1


def claim(limit: int = 10, queues: list[str] | None = None) -> list[int]:
    return [claimed.id for claimed in leases.claim(WORKER, queues, limit)]


def run_all() -> list[str]:
    """Claim and run jobs one at a time until none is due; return statuses."""
    statuses = []
    while claimed := leases.claim(WORKER, None, 1):
        statuses.append(attempts.run(claimed[0], WORKER))
    return statuses


@pytest.fixture
def server_database(vendor):
    if vendor == "sqlite":
        pytest.skip("needs a second session that does not wait for SQLite's lock")


@pytest.mark.django_db(transaction=True)
def test_job_enqueued_in_a_rolled_back_transaction_never_exists():
    with pytest.raises(RuntimeError), transaction.atomic():
        record.enqueue("ghost")
        raise RuntimeError("the command failed after enqueueing")

    assert not Job.objects.exists()
    assert claim() == []
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_job_enqueued_in_a_rolled_back_savepoint_never_exists():
    with transaction.atomic():
        kept = noop.enqueue("kept")
        with pytest.raises(RuntimeError), transaction.atomic():
            noop.enqueue("dropped")
            raise RuntimeError("undo the savepoint")

    assert list(Job.objects.all()) == [kept]


@pytest.mark.django_db(transaction=True)
def test_worker_cannot_claim_a_job_before_its_transaction_commits(server_database):
    with transaction.atomic():
        job_id = noop.enqueue("pending").pk
        while_open = threads.start(claim)
        while_open.join()

    after_commit = threads.start(claim)
    after_commit.join()
    assert while_open.value == []
    assert after_commit.value == [job_id]


@pytest.mark.django_db
def test_enqueue_stores_options_and_arguments():
    stored = noop.using(queue="mail", priority=7, max_attempts=2).enqueue(1, key="x")

    stored.refresh_from_db()
    assert (stored.name, stored.queue, stored.priority) == ("tests.noop", "mail", 7)
    assert (stored.status, stored.attempts, stored.max_attempts) == ("ready", 0, 2)
    assert stored.arguments == {"args": [1], "kwargs": {"key": "x"}}


@pytest.mark.parametrize(
    "queue", ["", "a b", "x" * 101, "default\n", "tab\tname", "é", 5, b"q"]
)
def test_queue_name_is_checked(queue):
    with pytest.raises(EnqueueOptionError) as caught:
        noop.using(queue=queue)

    assert caught.value.option == "queue"
    assert repr(queue) in str(caught.value)


@pytest.mark.django_db
def test_priority_zero_is_honoured():
    job = noop.using(priority=5).using(priority=0).enqueue()

    job.refresh_from_db()
    assert job.priority == 0


@pytest.mark.django_db
@pytest.mark.parametrize("priority", [-(2**31), INT_MAX])
def test_priority_may_use_the_whole_column(priority):
    job = noop.using(priority=priority).enqueue()

    job.refresh_from_db()
    assert job.priority == priority


@pytest.mark.parametrize("priority", [1.5, True, "1", INT_MAX + 1, -(2**31) - 1])
def test_priority_must_be_an_integer_the_column_holds(priority):
    with pytest.raises(EnqueueOptionError) as caught:
        noop.using(priority=priority)

    assert caught.value.option == "priority"


@pytest.mark.parametrize("max_attempts", [0, -1, 1.0, True, INT_MAX + 1])
def test_max_attempts_must_be_at_least_one(max_attempts):
    with pytest.raises(EnqueueOptionError) as caught:
        noop.using(max_attempts=max_attempts)

    assert caught.value.option == "max_attempts"
    assert "at least 1" in str(caught.value)
    assert repr(max_attempts) in str(caught.value)


def test_job_decorator_checks_its_options():
    def undecorated() -> None:
        """Never registered: its options are refused."""

    with pytest.raises(EnqueueOptionError, match="max_attempts"):
        job(name="tests.never", max_attempts=0)(undecorated)
    with pytest.raises(EnqueueOptionError, match="queue"):
        job(name="tests.never", queue="no spaces")(undecorated)


@pytest.mark.parametrize("name", ["x" * 201, "bad\x00name", "   "])
def test_job_name_the_database_cannot_store_is_refused(name):
    def undecorated() -> None:
        """Never registered: its name is refused."""

    with pytest.raises(ValueError, match="name"):
        job(name=name)(undecorated)


@pytest.mark.django_db
def test_one_attempt_runs_exactly_once_and_ends_failed():
    job = once.enqueue("only")

    assert run_all() == [JobStatus.FAILED]

    job.refresh_from_db()
    assert (job.status, job.attempts) == (JobStatus.FAILED, 1)
    assert Run.objects.filter(kind="once").count() == 1


@pytest.mark.django_db
def test_three_retries_run_exactly_four_times():
    job = four_times.enqueue("again")

    assert run_all() == [JobStatus.READY] * 3 + [JobStatus.FAILED]

    job.refresh_from_db()
    assert (job.status, job.attempts) == (JobStatus.FAILED, 4)
    assert Run.objects.filter(kind="four_times").count() == 4
    assert list(Attempt.objects.values_list("number", flat=True)) == [1, 2, 3, 4]


@pytest.mark.django_db
@pytest.mark.parametrize("delay", [0, 0.0, timedelta(0)])
def test_delay_zero_is_honoured(delay):
    job = noop.using(delay=3600).using(delay=delay).enqueue()

    assert claim() == [job.pk]


@pytest.mark.django_db
def test_delayed_job_is_not_claimed_before_its_time():
    later = noop.using(delay=timedelta(hours=1)).enqueue()
    now = noop.enqueue()

    assert claim() == [now.pk]

    Job.objects.filter(pk=later.pk).update(
        run_after=timezone.now() - timedelta(seconds=1)
    )
    assert claim() == [later.pk]


@pytest.mark.django_db
def test_job_due_at_a_past_run_after_is_claimed():
    past = noop.using(run_after=timezone.now() - timedelta(minutes=5)).enqueue()
    future = noop.using(run_after=timezone.now() + timedelta(hours=2)).enqueue()

    assert claim() == [past.pk]
    assert Job.objects.get(pk=future.pk).status == JobStatus.READY


@pytest.mark.parametrize(
    "delay",
    [-1, float("nan"), float("inf"), 1e300, timedelta(seconds=-1), "5", True],
)
def test_delay_must_be_a_finite_duration_of_zero_or_more(delay):
    with pytest.raises(EnqueueOptionError) as caught:
        noop.using(delay=delay)

    assert caught.value.option == "delay"


@pytest.mark.django_db
def test_delay_past_the_last_representable_time_is_refused(django_assert_num_queries):
    far = noop.using(delay=timedelta(days=999_999_999))

    with django_assert_num_queries(0), pytest.raises(EnqueueOptionError) as caught:
        far.enqueue()

    assert caught.value.option == "delay"


def test_naive_run_after_is_refused_when_use_tz_is_on(settings):
    settings.USE_TZ = True

    with pytest.raises(EnqueueOptionError) as caught:
        noop.using(run_after=datetime(2030, 1, 1))

    assert caught.value.option == "run_after"
    assert "aware" in str(caught.value)


def test_aware_run_after_is_refused_when_use_tz_is_off(settings):
    settings.USE_TZ = False

    with pytest.raises(EnqueueOptionError) as caught:
        noop.using(run_after=timezone.now().replace(tzinfo=dt_timezone.utc))

    assert caught.value.option == "run_after"
    assert "naive" in str(caught.value)


@pytest.mark.parametrize("run_after", ["2030-01-01", datetime(2030, 1, 1).date()])
def test_run_after_must_be_a_datetime(run_after):
    with pytest.raises(EnqueueOptionError) as caught:
        noop.using(run_after=run_after)

    assert caught.value.option == "run_after"


def test_run_after_and_delay_together_are_refused():
    with pytest.raises(EnqueueOptionError, match="either run_after or delay"):
        noop.using(run_after=timezone.now(), delay=5)
    with pytest.raises(EnqueueOptionError, match="either run_after or delay"):
        noop.using(delay=5).using(run_after=timezone.now())


@pytest.mark.parametrize("option", ["backoff_seconds", "backoff_max_seconds"])
@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), 1e300, "3"])
def test_backoff_must_be_a_finite_number_of_seconds(option, value):
    with pytest.raises(EnqueueOptionError) as caught:
        noop.using(**{option: value})

    assert caught.value.option.startswith("backoff_")
    assert repr(value) in str(caught.value)


@pytest.mark.django_db
def test_higher_priority_is_claimed_first_then_earlier_run_after():
    low = noop.using(priority=-3).enqueue()
    normal = noop.enqueue()
    first_high = noop.using(priority=5).enqueue()
    second_high = noop.using(priority=5).enqueue()

    order = [claim(limit=1) for _ in range(5)]

    assert order == [[first_high.pk], [second_high.pk], [normal.pk], [low.pk], []]


@pytest.mark.django_db
def test_claim_takes_only_the_queues_asked_for():
    mail = noop.using(queue="mail").enqueue()
    noop.enqueue()

    assert claim(queues=["mail", "absent"]) == [mail.pk]


def set_status(job: Job, status: str, attempts: int = 0) -> None:
    Job.objects.filter(pk=job.pk).update(status=status, attempts=attempts)


@pytest.fixture
def one_of_each() -> dict[str, Job]:
    jobs = {status: noop.using(max_attempts=3).enqueue() for status in JobStatus}
    for status, stored in jobs.items():
        set_status(stored, status, attempts=1)
    return jobs


@pytest.mark.django_db
def test_retry_jobs_requeues_only_failed_and_cancelled(one_of_each):
    count = retry_jobs([stored.pk for stored in one_of_each.values()])

    assert count == 2
    statuses = dict(Job.objects.values_list("pk", "status"))
    assert {status: statuses[stored.pk] for status, stored in one_of_each.items()} == {
        "ready": "ready",
        "running": "running",
        "succeeded": "succeeded",
        "failed": "ready",
        "cancelled": "ready",
    }
    assert claim() == sorted(
        one_of_each[status].pk for status in ("ready", "failed", "cancelled")
    )


@pytest.mark.django_db
def test_retried_job_out_of_attempts_gets_exactly_one_more():
    job = once.enqueue("again")
    assert run_all() == [JobStatus.FAILED]

    assert retry_jobs(Job.objects.filter(pk=job.pk)) == 1

    assert run_all() == [JobStatus.FAILED]
    job.refresh_from_db()
    assert (job.status, job.attempts, job.max_attempts) == ("failed", 2, 2)
    assert Run.objects.filter(kind="once").count() == 2


@pytest.mark.django_db
def test_retried_job_keeps_attempts_it_has_left():
    job = four_times.enqueue("left")
    set_status(job, JobStatus.FAILED, attempts=1)

    retry_jobs([job.pk])

    job.refresh_from_db()
    assert (job.status, job.max_attempts, job.finished_at) == ("ready", 4, None)


@pytest.mark.django_db
def test_cancel_jobs_ends_ready_jobs_and_asks_running_ones(one_of_each):
    scheduled = noop.using(delay=3600).enqueue()

    count = cancel_jobs(Job.objects.all(), batch_size=1)

    assert count == 3
    assert Job.objects.get(pk=scheduled.pk).status == JobStatus.CANCELLED
    assert Job.objects.get(pk=one_of_each["ready"].pk).status == "cancelled"
    running = Job.objects.get(pk=one_of_each["running"].pk)
    assert running.status == "running"
    assert running.cancel_requested_at is not None
    assert Job.objects.get(pk=one_of_each["failed"].pk).status == "failed"
    assert claim() == []


@pytest.mark.django_db
@pytest.mark.parametrize("operation", [cancel_jobs, retry_jobs])
@pytest.mark.parametrize("bad", ["x", None, 1.5, True, "", [3]])
def test_a_bad_job_id_is_named_and_nothing_changes(one_of_each, operation, bad):
    before = dict(Job.objects.values_list("pk", "status"))
    ids = [one_of_each["ready"].pk, one_of_each["failed"].pk, bad]

    with pytest.raises(JobIdError, match="job ids must be integers") as refused:
        operation(ids)

    assert refused.value.value == bad
    assert repr(bad) in str(refused.value)
    assert isinstance(refused.value, ValueError)
    assert dict(Job.objects.values_list("pk", "status")) == before


@pytest.mark.django_db
def test_job_ids_may_be_given_as_digit_strings(one_of_each):
    assert cancel_jobs([str(one_of_each["ready"].pk)]) == 1
    assert retry_jobs([str(one_of_each["failed"].pk)]) == 1


@pytest.mark.django_db
def test_due_job_is_claimed_and_later_job_is_not_in_this_time_zone():
    noop.using(delay=timedelta(hours=1)).enqueue("delayed an hour")
    noop.using(run_after=timezone.now() + timedelta(hours=1)).enqueue("in an hour")
    past = noop.using(run_after=timezone.now() - timedelta(minutes=1)).enqueue()
    due = explode.using(backoff_seconds=3600, backoff_max_seconds=7200).enqueue("x")

    claimed = leases.claim(WORKER, None, 10)
    assert [job.id for job in claimed] == [past.pk, due.pk]

    assert attempts.run(claimed[1], WORKER) == JobStatus.READY
    retry_at = Job.objects.get(pk=due.pk).run_after
    assert retry_at > timezone.now() + timedelta(minutes=30)
    assert claim() == []


def _separate_database_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url or url.startswith("sqlite"):
        return ""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "_tz"))


def _database_in(zone: str, folder) -> dict:
    """Return DATABASES for a test run whose database keeps local times."""
    from example_project import database_url

    url = _separate_database_url() or f"sqlite:///{folder / 'zone.sqlite3'}"
    entry = database_url.parse(url, ROOT)
    entry["TIME_ZONE"] = zone
    if url.startswith("sqlite"):
        entry["TEST"] = {"NAME": entry["NAME"]}
    return {"default": entry}


@pytest.mark.slow
@pytest.mark.parametrize(
    "use_tz, database_zone",
    [("0", None), ("1", None), ("1", "Europe/Berlin")],
    ids=["naive", "aware", "aware-database-in-berlin"],
)
def test_due_jobs_are_found_in_berlin(use_tz, database_zone, tmp_path):
    overrides = {"DATABASES": _database_in(database_zone, tmp_path)}
    env = dict(
        os.environ,
        KLERK_TEST_USE_TZ=use_tz,
        KLERK_TEST_TIME_ZONE="Europe/Berlin",
        KLERK_TEST_SETTINGS=json.dumps(overrides if database_zone else {}),
        DATABASE_URL=_separate_database_url(),
    )
    selected = "test_due_job_is_claimed_and_later_job_is_not_in_this_time_zone"

    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        + [f"tests/test_jobs.py::{selected}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


# Mistakes a new user makes: each gets an error that names what is wrong.


@pytest.mark.django_db
def test_an_unusable_default_queue_setting_is_named_at_enqueue(settings):
    from klerk_django import job
    from klerk_django.exceptions import SettingsError

    settings.KLERK_DEFAULT_QUEUE = "my queue"

    @job(name="tests.lazy_default_queue")
    def lazy(value):
        return value

    with pytest.raises(SettingsError, match="KLERK_DEFAULT_QUEUE"):
        lazy.enqueue(1)
    assert not Job.objects.filter(name="tests.lazy_default_queue").exists()


@pytest.mark.django_db
def test_defaults_follow_settings_changed_after_registration(settings):
    from klerk_django import job

    @job(name="tests.late_settings")
    def late(value):
        return value

    settings.KLERK_MAX_ATTEMPTS = 7
    settings.KLERK_DEFAULT_QUEUE = "later"

    stored = late.enqueue(1)

    assert (stored.max_attempts, stored.queue) == (7, "later")


def test_a_bad_backoff_is_reported_under_the_name_the_caller_used():
    from klerk_django import job
    from klerk_django.exceptions import EnqueueOptionError

    with pytest.raises(EnqueueOptionError, match="'backoff_seconds'"):

        @job(name="tests.bad_backoff", backoff_seconds=-1)
        def bad(value):
            return value


@pytest.mark.django_db
def test_arguments_the_function_cannot_accept_are_refused_before_any_sql(
    django_assert_num_queries,
):
    from klerk_django.exceptions import ArgumentError

    with django_assert_num_queries(0):
        with pytest.raises(ArgumentError, match="tests.record.*unexpected keyword"):
            record.enqueue("a", extra=2)
        with pytest.raises(ArgumentError, match="tests.record.*too many"):
            record.enqueue("a", "b", "c")


@pytest.mark.django_db
def test_enqueue_many_names_an_item_that_is_not_a_pair():
    from klerk_django.exceptions import ArgumentError

    with pytest.raises(ArgumentError, match=r"item 1 is 2"):
        record.enqueue_many([(("a",), {}), 2])
    assert not Job.objects.exists()


def test_two_functions_under_one_name_are_both_named():
    from klerk_django import job
    from klerk_django.exceptions import RegistryConflict

    @job(name="tests.clash")
    def first(value):
        return value

    with pytest.raises(RegistryConflict, match="first.*second"):

        @job(name="tests.clash")
        def second(value):
            return value


@pytest.mark.django_db
def test_retry_of_an_id_list_sends_each_id_once():
    from klerk_django.jobs import retry_jobs

    ids = [record.enqueue(str(index)).pk for index in range(25)]
    Job.objects.filter(pk__in=ids).update(status=JobStatus.FAILED)

    with CaptureQueriesContext(connection) as queries:
        changed = retry_jobs(ids, batch_size=10)

    assert changed == 25
    sent = [query["sql"] for query in queries.captured_queries]
    assert len([sql for sql in sent if "UPDATE" in sql]) == 3
    # The ids are split into batches: no query reads the jobs to page
    # through them (PostgreSQL's wake-up is a SELECT of pg_notify only).
    assert not [sql for sql in sent if "SELECT" in sql and "pg_notify" not in sql]
