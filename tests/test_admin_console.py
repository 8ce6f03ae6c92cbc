"""The admin as an operations console: overview, queues, lists at scale."""

import re
import time
import uuid
from datetime import timedelta
from unittest import mock

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.core.exceptions import ImproperlyConfigured
from django.db import OperationalError, connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from klerk_django import cancellation, display, stats
from klerk_django.admin import JobAdmin
from klerk_django.admin_lists import COUNT_CAP
from klerk_django.models import Attempt, Job, Worker
from tests.testapp.jobs import fail_until

pytestmark = pytest.mark.django_db


def url(model, view, *args):
    opts = model._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_{view}", args=args)


OVERVIEW = "admin:klerk_django_job_overview"
QUEUES = "admin:klerk_django_job_queues"


def staff(*codenames):
    """Return a client logged in as staff with only ``codenames``."""
    user = User.objects.create_user(f"staff-{uuid.uuid4().hex[:8]}", is_staff=True)
    perms = Permission.objects.filter(
        content_type__app_label="klerk_django", codename__in=codenames
    )
    assert perms.count() == len(codenames)
    user.user_permissions.set(perms)
    client = Client()
    client.force_login(user)
    return client


def texts(response):
    return [str(message) for message in get_messages(response.wsgi_request)]


def add_job(queue="default", status="ready", ago=None, **fields):
    fields.setdefault("arguments", {"args": ["k"], "kwargs": {}})
    return Job.objects.create(
        name="tests.record",
        queue=queue,
        status=status,
        run_after=timezone.now() - (ago or timedelta(0)),
        **fields,
    )


def bulk(count, **fields):
    now = timezone.now()
    fields.setdefault("run_after", now)
    Job.objects.bulk_create(Job(name="tests.bulk", **fields) for _ in range(count))


def test_overview_counts_jobs_by_queue_and_status(admin_client):
    bulk(3, queue="mail", status="failed")
    bulk(2, queue="mail", status="ready")
    bulk(1, queue="reports", status="succeeded")

    response = admin_client.get(reverse(OVERVIEW))

    assert response.status_code == 200
    rows = {row["queue"]: row for row in response.context["rows"]}
    assert [count for count, _ in rows["mail"]["cells"]] == [2, 0, 0, 0, 3, 0]
    assert rows["reports"]["total"] == 1
    assert [count for count, _ in response.context["totals"]] == [2, 0, 0, 1, 3, 0]
    assert "status__exact=failed" in rows["mail"]["cells"][4][1]


def test_overview_splits_ready_jobs_due_now_from_scheduled_ones(admin_client):
    bulk(2, queue="mail", status="ready")
    bulk(1, queue="mail", status="ready", run_after=timezone.now() + timedelta(hours=1))
    bulk(
        1, queue="later", status="ready", run_after=timezone.now() + timedelta(days=21)
    )

    response = admin_client.get(reverse(OVERVIEW))

    assert response.context["columns"][:3] == ["ready", "scheduled", "running"]
    rows = {row["queue"]: row for row in response.context["rows"]}
    assert [count for count, _ in rows["mail"]["cells"]][:2] == [2, 1]
    assert [count for count, _ in rows["later"]["cells"]][:2] == [0, 1]
    assert (rows["mail"]["total"], rows["later"]["total"]) == (3, 1)
    assert [count for count, _ in response.context["totals"]][:2] == [2, 2]
    assert response.context["ready_now"] == 2


def test_overview_charts_the_last_hour_per_minute(admin_client):
    now = timezone.now()
    bulk(4, status="succeeded", started_at=now, finished_at=now)
    bulk(1, status="failed", started_at=now, finished_at=now)
    old = now - timedelta(hours=2)
    bulk(7, status="failed", started_at=old, finished_at=old)
    bulk(2, status="running", started_at=now - timedelta(minutes=30))

    response = admin_client.get(reverse(OVERVIEW))

    chart = response.context["chart"]
    totals = {line.name: line.total for line in chart.lines}
    assert totals == {"started": 7, "succeeded": 4, "failed": 1}
    assert response.context["failure_rate"] == "20.0%"
    content = response.content.decode()
    start = content.index('<svg class="klerk-chart"')
    chart_html = content[start : content.index("</svg>", start)]
    assert chart_html.count("<polyline") == 3 and "<script" not in chart_html


def test_minute_series_puts_each_job_in_its_minute():
    now = timezone.now().replace(second=30, microsecond=0)
    for minutes_ago, count in [(0, 2), (5, 3), (59, 1), (60, 9)]:
        at = now - timedelta(minutes=minutes_ago)
        bulk(count, status="succeeded", started_at=at, finished_at=at)

    series = stats.minute_series(now)

    assert series.succeeded[-1] == 2
    assert series.succeeded[-6] == 3
    assert series.succeeded[0] == 1
    assert sum(series.started) == 6
    assert series.failure_rate == 0.0


def test_queue_lag_counts_only_jobs_that_are_due(admin_client):
    add_job("mail", ago=timedelta(minutes=10))
    add_job("mail", ago=timedelta(minutes=2))
    add_job("mail", ago=-timedelta(hours=5))
    add_job("later", ago=-timedelta(hours=1))
    add_job("busy", status="running")

    rows = {row.queue: row for row in stats.queue_stats()}

    now = timezone.now()
    assert (rows["mail"].ready, rows["mail"].scheduled) == (2, 1)
    assert timedelta(minutes=9) < rows["mail"].lag(now) < timedelta(minutes=11)
    assert rows["later"].lag(now) is None and rows["later"].scheduled == 1
    assert rows["busy"].running == 1
    page = admin_client.get(reverse(QUEUES)).content.decode()
    assert ">10 min<" in page and ">mail<" in page


@override_settings(KLERK_HEARTBEAT_SECONDS=10.0)
def test_overview_lists_only_live_workers_with_their_jobs(admin_client):
    now = timezone.now()
    live = Worker.objects.create(name="live", hostname="h1", pid=1)
    quiet = now - timedelta(seconds=31)
    Worker.objects.create(name="quiet", hostname="h2", pid=2, last_heartbeat_at=quiet)
    Worker.objects.create(name="stopped", hostname="h3", pid=3, stopped_at=now)
    bulk(2, status="running", worker_id=live.pk)

    response = admin_client.get(reverse(OVERVIEW))

    workers = response.context["workers"]
    assert [(w["name"], w["running"]) for w in workers] == [("live", 2)]


def test_app_index_and_job_list_link_to_the_console(admin_client):
    index = admin_client.get(reverse("admin:app_list", args=["klerk_django"]))
    jobs = admin_client.get(url(Job, "changelist"))

    for page in (index, jobs):
        content = page.content.decode()
        assert reverse(OVERVIEW) in content and reverse(QUEUES) in content


def test_console_pages_need_view_permission():
    assert staff("view_job").get(reverse(OVERVIEW)).status_code == 200
    assert staff("view_job").get(reverse(QUEUES)).status_code == 200
    assert staff("view_worker").get(reverse(OVERVIEW)).status_code == 403
    assert staff("view_worker").get(reverse(QUEUES)).status_code == 403
    assert staff("view_job").post(reverse(OVERVIEW)).status_code == 405


# The job list


def test_job_list_shows_times_relative_to_now(admin_client):
    add_job(ago=timedelta(minutes=3))

    content = admin_client.get(url(Job, "changelist")).content.decode()

    assert ">3 min ago</time>" in content


def test_relative_time_reads_past_and_future():
    now = timezone.now()
    assert display.relative_time(now - timedelta(seconds=3), now) == "just now"
    assert display.relative_time(now - timedelta(seconds=75), now) == "1 min ago"
    assert display.relative_time(now + timedelta(hours=2, minutes=1), now) == "in 2 h"
    assert display.relative_time(now - timedelta(days=1, hours=1), now) == "1 day ago"
    assert display.relative_time(None, now) == "-"


@pytest.mark.parametrize(
    ("period", "expected"), [("1h", {"new"}), ("24h", {"new", "day"}), ("7d", None)]
)
def test_job_list_filters_by_creation_period(admin_client, period, expected):
    now = timezone.now()
    ages = {"new": timedelta(minutes=5), "day": timedelta(hours=5)}
    ages["week"] = timedelta(days=3)
    made = {key: add_job(key, created_at=now - age) for key, age in ages.items()}

    response = admin_client.get(url(Job, "changelist"), {"created": period})

    shown = {job.queue for job in response.context["cl"].result_list}
    assert shown == (expected or set(made))


def test_job_list_filter_choices_read_no_whole_table(admin_client):
    bulk(5, queue="mail", status="ready")

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(url(Job, "changelist"))

    assert response.status_code == 200
    sql = " ".join(query["sql"].upper() for query in queries)
    assert "DISTINCT" not in sql
    content = response.content.decode()
    assert "?queue=mail" in content and "?name=tests.record" in content


def test_job_list_query_count_does_not_depend_on_page_size(admin_client):
    bulk(150, queue="mail", status="failed")

    def queries(per_page):
        with mock.patch.object(JobAdmin, "list_per_page", per_page):
            with CaptureQueriesContext(connection) as captured:
                assert admin_client.get(url(Job, "changelist")).status_code == 200
        return len(captured)

    assert queries(10) == queries(100) == queries(200)


def test_job_list_caps_the_count_of_a_long_list(admin_client):
    bulk(COUNT_CAP + 5, queue="mail", status="failed")

    response = admin_client.get(url(Job, "changelist"), {"status__exact": "failed"})

    assert response.status_code == 200
    assert str(response.context["cl"].result_count) == "10,000+"
    assert "Select all 10,000+ jobs" in response.content.decode()


@pytest.mark.postgresql
def test_unfiltered_count_is_the_planners_estimate_on_postgresql(admin_client):
    bulk(COUNT_CAP + 500, queue="mail", status="failed")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE klerk_job")

    response = admin_client.get(url(Job, "changelist"))

    count = response.context["cl"].result_count
    assert str(count).startswith("about ")
    assert count > COUNT_CAP


def test_job_search_accepts_a_hash_before_the_id(admin_client):
    job = add_job("mail")
    add_job("other")

    response = admin_client.get(url(Job, "changelist"), {"q": f"#{job.pk}"})

    assert [row.pk for row in response.context["cl"].result_list] == [job.pk]


# The job page


def test_job_page_masks_sensitive_keys_at_any_depth(admin_client):
    secret = {
        "user": "ada",
        "Password": "hunter2",
        "nested": [{"X-Api-Key": "k-123", "api": {"refresh_token": "t-9"}}],
    }
    job = add_job(arguments={"args": [], "kwargs": secret}, result={"secret": "s"})

    content = admin_client.get(url(Job, "change", job.pk)).content.decode()

    for value in ("hunter2", "k-123", "t-9", '"s"'):
        assert value not in content
    assert "ada" in content and content.count(display.MASK) == 4


@override_settings(KLERK_ADMIN_MASKED_KEYS=["card"])
def test_masked_keys_come_from_the_setting():
    shown = display.masked({"card_number": "4242", "password": "p"})

    assert shown == {"card_number": display.MASK, "password": "p"}


@override_settings(KLERK_ADMIN_MASKED_KEYS="password")
def test_masked_keys_setting_must_be_a_list():
    with pytest.raises(ImproperlyConfigured, match="KLERK_ADMIN_MASKED_KEYS"):
        display.masked({"a": 1})


def test_job_page_shows_every_attempt_with_worker_and_duration(admin_client):
    job = add_job(status="failed", attempts=2)
    worker = Worker.objects.create(name="w-blue", hostname="h", pid=7)
    started = timezone.now() - timedelta(minutes=5)
    for number, seconds in [(1, 2.5), (2, 0.25)]:
        Attempt.objects.create(
            job=job,
            number=number,
            worker_id=worker.pk,
            started_at=started,
            finished_at=started + timedelta(seconds=seconds),
            outcome="failed",
            error=f"ValueError: try {number}",
            traceback=f"Traceback (most recent call last):\n  try {number}",
        )

    with CaptureQueriesContext(connection) as queries:
        content = admin_client.get(url(Job, "change", job.pk)).content.decode()

    assert ">w-blue</a>" in content and "2.5 s" in content and "250 ms" in content
    assert "ValueError: try 2" in content and "  try 1</pre>" in content
    assert len([q for q in queries if "klerk_worker" in q["sql"]]) == 1


def test_job_page_buttons_follow_permissions(admin_client):
    failed = add_job(status="failed")
    buttons = [url(Job, view, failed.pk) for view in ("retry", "copy", "delete")]

    everything = admin_client.get(url(Job, "change", failed.pk)).content.decode()
    viewer = staff("view_job").get(url(Job, "change", failed.pk)).content.decode()

    assert all(button in everything for button in buttons)
    assert not any(button in viewer for button in buttons)
    assert "Retry now" in everything and "Enqueue a copy" in everything


def test_copy_enqueues_the_same_call_with_the_same_options(world_operator):
    original = fail_until.using(queue="mail", priority=5, max_attempts=2).enqueue(
        "k", succeed_on=3
    )
    Job.objects.filter(pk=original.pk).update(status="failed", attempts=2)

    response = world_operator.post(url(Job, "copy", original.pk))

    copy = Job.objects.exclude(pk=original.pk).get()
    assert response.status_code == 302
    assert response["Location"] == url(Job, "change", copy.pk)
    assert (copy.name, copy.queue, copy.priority, copy.max_attempts) == (
        "tests.fail_until",
        "mail",
        5,
        2,
    )
    assert copy.arguments == original.arguments and copy.status == "ready"
    assert texts(response) == [
        f"Enqueued job #{copy.pk}, a copy of job #{original.pk}."
    ]


def test_copy_of_an_unknown_job_function_is_refused_with_a_message(world_operator):
    job = add_job(status="failed")
    Job.objects.filter(pk=job.pk).update(name="gone.away")

    response = world_operator.post(url(Job, "copy", job.pk))

    assert response.status_code == 302
    assert Job.objects.count() == 1
    assert "gone.away" in texts(response)[0]


def test_copy_needs_post_and_the_retry_permission():
    job = add_job(status="failed")

    assert (
        staff("view_job", "retry_job").get(url(Job, "copy", job.pk)).status_code == 405
    )
    assert (
        staff("view_job", "cancel_job").post(url(Job, "copy", job.pk)).status_code
        == 403
    )
    assert Job.objects.count() == 1


@pytest.fixture
def world_operator():
    return staff("view_job", "retry_job", "cancel_job")


# Bulk actions


def test_bulk_retry_lists_why_jobs_were_skipped(admin_client):
    bulk(5, queue="mix", status="failed")
    bulk(3, queue="mix", status="running")
    bulk(2, queue="mix", status="succeeded")
    data = {"action": "retry_selected", "index": "0", "select_across": "1"}
    data["_selected_action"] = [Job.objects.first().pk]

    response = admin_client.post(f"{url(Job, 'changelist')}?queue=mix", data)

    assert texts(response) == [
        "Retried 5 jobs. Skipped 5: only failed or cancelled jobs can be retried "
        "(3 running, 2 succeeded)."
    ]


def test_bulk_action_stopped_by_the_database_reports_instead_of_failing(
    admin_client,
):
    bulk(2500, queue="mix", status="ready")
    data = {"action": "cancel_selected", "index": "0", "select_across": "1"}
    data["_selected_action"] = [Job.objects.first().pk]
    calls = []

    cancel = cancellation.cancel

    def flaky(ids):
        calls.append(len(ids))
        if len(calls) == 2:
            raise OperationalError("lock wait timeout exceeded")
        return cancel(ids)

    with mock.patch("klerk_django.cancellation.cancel", flaky):
        response = admin_client.post(f"{url(Job, 'changelist')}?queue=mix", data)

    assert response.status_code == 302
    message = texts(response)[0]
    assert message.startswith("Cancelled 1000 jobs.")
    assert "lock wait timeout exceeded" in message
    assert Job.objects.filter(status="cancelled").count() == 1000


# Workers


def test_worker_list_counts_running_jobs_without_a_query_per_worker(admin_client):
    def add_worker(index):
        worker = Worker.objects.create(name=f"w{index}", hostname="h", pid=index)
        bulk(index % 3, status="running", worker_id=worker.pk)

    add_worker(1)
    with CaptureQueriesContext(connection) as few:
        admin_client.get(url(Worker, "changelist"))
    for index in range(2, 12):
        add_worker(index)

    with CaptureQueriesContext(connection) as many:
        response = admin_client.get(url(Worker, "changelist"))

    assert len(many) == len(few)
    counts = {w.name: w.running_jobs for w in response.context["cl"].result_list}
    assert counts["w2"] == 2 and counts["w3"] == 0


@override_settings(KLERK_HEARTBEAT_SECONDS=10.0)
def test_worker_list_filters_alive_and_gone(admin_client):
    Worker.objects.create(name="alive", hostname="h", pid=1)
    Worker.objects.create(name="gone", hostname="h", pid=2, stopped_at=timezone.now())

    def names(state):
        response = admin_client.get(url(Worker, "changelist"), {"state": state})
        return [worker.name for worker in response.context["cl"].result_list]

    assert names("alive") == ["alive"]
    assert names("gone") == ["gone"]


# One million rows


MILLION = 1_000_000
MILLION_SQL = """
INSERT INTO klerk_job (
    name, queue, priority, arguments, status, run_after, attempts,
    max_attempts, backoff_base_seconds, backoff_max_seconds, created_at,
    last_error
)
SELECT
    'bench.job_' || (n %% 10),
    'queue_' || (n %% 5),
    0,
    '{"args": [], "kwargs": {}}'::jsonb,
    CASE WHEN n %% 100 = 0 THEN 'failed'
         WHEN n %% 100 = 1 THEN 'ready'
         ELSE 'succeeded' END,
    %s - (n * interval '0.6 second'),
    1, 4, 3.0, 3600.0,
    %s - (n * interval '0.6 second'),
    ''
FROM generate_series(1, %s) AS n
"""


@pytest.mark.postgresql
def test_job_list_opens_with_a_bounded_query_count_on_a_million_rows(admin_client):
    started = time.monotonic()
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(MILLION_SQL, [now, now, MILLION])
        cursor.execute("ANALYZE klerk_job")
    print(f"\ninserted {MILLION} jobs in {time.monotonic() - started:.1f} s")

    pages = {
        "unfiltered": {},
        "status=failed": {"status__exact": "failed"},
        "search": {"q": "bench.job_7"},
        "created=1h, name": {"created": "1h", "name": "bench.job_3"},
    }
    counts = {}
    for label, query in pages.items():
        counts[label] = _open_list(admin_client, label, query)
    overview = _timed(admin_client, reverse(OVERVIEW), {})
    print(f"overview: {overview[0]} queries, {overview[1] * 1000:.0f} ms")

    assert max(counts.values()) <= 8
    assert counts["unfiltered"] <= counts["status=failed"]


def _open_list(client, label, query):
    queries, seconds, response = _timed(client, url(Job, "changelist"), query)
    count = response.context["cl"].result_count
    rows = len(response.context["cl"].result_list)
    print(
        f"changelist {label}: {queries} queries, {seconds * 1000:.0f} ms, "
        f"count shown {count}, rows {rows}"
    )
    assert re.search(r"\d", str(count))
    return queries


def _timed(client, address, query):
    with CaptureQueriesContext(connection) as captured:
        started = time.monotonic()
        response = client.get(address, query)
        seconds = time.monotonic() - started
    assert response.status_code == 200
    return len(captured), seconds, response


def test_queues_page_lists_idle_queues_of_registered_job_functions(admin_client):
    response = admin_client.get(reverse(QUEUES))

    rows = {row["queue"]: row for row in response.context["rows"]}
    assert rows["default"]["ready"] == 0 and rows["default"]["lag"] == "-"


def test_chart_scales_to_a_round_peak_with_a_zero_line():
    now = timezone.now()
    series = stats.MinuteSeries(now, [0] * 59 + [7], [0] * 60, [3] + [0] * 59)

    chart = display.minute_chart(series, width=640, height=220)

    assert [value for _, value in chart.grid] == [0, 5, 10]
    started = chart.lines[0].points.split()
    assert started[0] == f"{chart.left}.0,{chart.bottom}.0"
    assert started[-1].startswith(f"{chart.right}.0,")
    assert [label for _, label, _ in chart.ticks][-1] == "now"


@override_settings(KLERK_DEFAULT_QUEUE="fallback")
def test_job_functions_without_a_queue_show_the_default_queue(admin_client):
    jobs = admin_client.get(url(Job, "changelist"))
    queues = admin_client.get(reverse(QUEUES))

    assert jobs.status_code == 200 and "?queue=fallback" in jobs.content.decode()
    assert "fallback" in {row["queue"] for row in queues.context["rows"]}
