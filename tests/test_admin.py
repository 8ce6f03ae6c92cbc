import json
import uuid
from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client, RequestFactory, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import URLResolver, reverse
from django.utils import timezone
from django.utils.html import escape

from klerk_django.admin import is_alive
from klerk_django.models import Action, Attempt, CommandRecord, Job, Schedule, Worker
from tests.testapp.jobs import record

pytestmark = pytest.mark.django_db

KLERK_MODELS = [Job, Attempt, Action, CommandRecord, Worker, Schedule]
MANY = 20_000


def url(model, view, *args):
    opts = model._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_{view}", args=args)


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


def viewer():
    return staff(*(f"view_{model._meta.model_name}" for model in KLERK_MODELS))


def enqueue(key, status="ready", **fields):
    job = record.enqueue(key)
    Job.objects.filter(pk=job.pk).update(status=status, **fields)
    return Job.objects.get(pk=job.pk)


def make_jobs(count, queue, status):
    now = timezone.now()
    Job.objects.bulk_create(
        Job(name="tests.bulk", queue=queue, status=status, run_after=now)
        for _ in range(count)
    )


def statuses(**filters):
    return sorted(Job.objects.filter(**filters).values_list("status", flat=True))


def texts(response):
    return [str(message) for message in get_messages(response.wsgi_request)]


@pytest.fixture
def world():
    """One row of each kind, linked as the service layer links them."""
    command = CommandRecord.objects.create(
        name="shop.place_order",
        inputs={"order": 7},
        outcome="failed",
        problems=[{"field": None, "message": "out of stock", "code": "stock"}],
        error="Traceback (most recent call last):\n  boom",
        duration_ms=12.5,
    )
    failed = enqueue("failed", status="failed", attempts=2, command_id=command.pk)
    ready = enqueue("ready")
    worker = Worker.objects.create(name="w1", hostname="host", pid=42, queues=["a"])
    for number in (1, 2):
        Attempt.objects.create(
            job=failed,
            number=number,
            worker_id=worker.pk,
            outcome="failed",
            error=f"RuntimeError: attempt {number}",
            traceback=f"Traceback (most recent call last):\n  attempt {number}",
        )
    action = Action.objects.create(
        name="tests.note_action", arguments={"key": "k"}, command=command
    )
    return {
        "job": [failed, ready],
        "attempt": list(Attempt.objects.all()),
        "action": [action],
        "commandrecord": [command],
        "worker": [worker],
        "schedule": [Schedule.objects.create(name="tests.nightly")],
    }


def test_job_list_shows_badges_and_attempts_used(admin_client, world):
    response = admin_client.get(url(Job, "changelist"))

    assert response.status_code == 200
    content = response.content.decode()
    assert "#c62828" in content and ">failed</span>" in content
    assert ">2/4<" in content
    assert response.context["cl"].show_full_result_count is False


@pytest.mark.parametrize("model", KLERK_MODELS, ids=lambda model: model.__name__)
def test_list_query_count_does_not_grow_with_rows(admin_client, world, model):
    with CaptureQueriesContext(connection) as few:
        assert admin_client.get(url(model, "changelist")).status_code == 200
    _add_rows(model, world, 15)

    with CaptureQueriesContext(connection) as many:
        assert admin_client.get(url(model, "changelist")).status_code == 200

    assert len(many) == len(few)


def _add_rows(model, world, count):
    job = world["job"][0]
    for index in range(count):
        if model is Job:
            enqueue(f"more-{index}")
        elif model is Attempt:
            Attempt.objects.create(job=enqueue(f"a{index}"), number=1, outcome="failed")
        elif model is Action:
            Action.objects.create(name="tests.note_action", command_id=job.command_id)
        elif model is CommandRecord:
            CommandRecord.objects.create(name=f"c{index}", outcome="succeeded")
        elif model is Schedule:
            Schedule.objects.create(name=f"tests.s{index}")
        else:
            Worker.objects.create(name=f"w{index}", hostname="h", pid=index)


def test_job_search_matches_the_id_exactly_or_the_name(admin_client, world):
    alpha = enqueue("alpha")
    Job.objects.filter(pk=alpha.pk).update(name="tests.alpha")

    def found(term):
        response = admin_client.get(url(Job, "changelist"), {"q": term})
        assert response.status_code == 200
        return {job.pk for job in response.context["cl"].result_list}

    assert found(str(alpha.pk)) == {alpha.pk}
    assert found("alpha") == {alpha.pk}
    assert found("9" * 30) == set()


def test_job_list_filters_by_status_queue_name_and_creation(admin_client, world):
    failed, ready = world["job"]
    query = {
        "status__exact": "failed",
        "queue__exact": failed.queue,
        "name__exact": failed.name,
        "created_at__gte": str(timezone.now() - timedelta(days=1)),
    }

    response = admin_client.get(url(Job, "changelist"), query)

    assert response.status_code == 200
    assert [job.pk for job in response.context["cl"].result_list] == [failed.pk]


def test_job_page_is_read_only_and_shows_everything(admin_client, world):
    job = world["job"][0]
    Job.objects.filter(pk=job.pk).update(result={"b": 1, "a": [1, 2]})
    job.refresh_from_db()

    response = admin_client.get(url(Job, "change", job.pk))

    assert response.status_code == 200
    content = response.content.decode()
    assert 'name="_save"' not in content
    pretty = json.dumps(job.arguments, indent=2, sort_keys=True)
    assert f"<pre>{escape(pretty)}</pre>" in content
    assert f"<pre>{escape(json.dumps(job.result, indent=2, sort_keys=True))}" in content
    assert url(CommandRecord, "change", job.command_id) in content
    assert "<pre>Traceback (most recent call last):\n  attempt 2</pre>" in content
    assert "RuntimeError: attempt 1" in content
    assert url(Job, "retry", job.pk) in content
    assert url(Job, "cancel", job.pk) not in content


def test_job_page_shows_progress_keys_and_the_running_attempt(admin_client):
    job = enqueue(
        "keyed",
        status="running",
        attempts=2,
        progress={"done": 3, "of": 7},
        unique_key="schedule:tests.nightly:2026-12-05T05:00:00+00:00",
        rate_key="customer-7",
        concurrency_key="shop-3",
    )

    response = admin_client.get(url(Job, "change", job.pk))

    content = response.content.decode()
    pretty = json.dumps(job.progress, indent=2, sort_keys=True)
    assert f"<pre>{escape(pretty)}</pre>" in content
    assert "schedule:tests.nightly:2026-12-05T05:00:00+00:00" in content
    assert "customer-7" in content and "shop-3" in content
    assert "Current attempt" in content
    assert ">attempt 2 of 4, running<" in content


def test_job_page_leaves_out_what_a_plain_job_does_not_have(admin_client, world):
    job = world["job"][0]

    response = admin_client.get(url(Job, "change", job.pk))

    content = response.content.decode()
    for label in ("Progress", "Unique key", "Rate key", "Concurrency key"):
        assert f">{label}:<" not in content
    assert "Current attempt" not in content


def test_job_search_matches_a_unique_key_exactly(admin_client, world):
    tick = "schedule:tests.nightly:2026-12-05T05:00:00+00:00"
    done = enqueue("tick", status="succeeded", unique_key=tick)
    enqueue("other", unique_key=tick + "x")

    def found(term):
        response = admin_client.get(url(Job, "changelist"), {"q": term})
        return {job.pk for job in response.context["cl"].result_list}

    assert found(tick) == {done.pk}
    assert found(" " + tick + " ") == {done.pk}
    assert found("schedule:tests.nightly") == set()


def test_job_page_post_is_refused(admin_client, world):
    job = world["job"][1]

    response = admin_client.post(url(Job, "change", job.pk), {"status": "failed"})

    assert response.status_code == 403
    assert Job.objects.get(pk=job.pk).status == "ready"


def test_retry_action_reports_changed_and_skipped(admin_client, world):
    failed, ready = world["job"]
    data = {
        "action": "retry_selected",
        "index": "0",
        "_selected_action": [failed.pk, ready.pk],
    }

    response = admin_client.post(url(Job, "changelist"), data)

    assert response.status_code == 302
    assert statuses(pk__in=[failed.pk, ready.pk]) == ["ready", "ready"]
    message = (
        "Retried 1 job. Skipped 1: only failed or cancelled jobs can be retried "
        "(1 ready)."
    )
    assert texts(response) == [message]


def test_cancel_action_reports_changed_and_skipped(admin_client, world):
    failed, ready = world["job"]
    data = {
        "action": "cancel_selected",
        "index": "0",
        "_selected_action": [failed.pk, ready.pk],
    }

    response = admin_client.post(url(Job, "changelist"), data)

    assert statuses(pk__in=[failed.pk, ready.pk]) == ["cancelled", "failed"]
    message = (
        "Cancelled 1 job. Skipped 1: only ready or running jobs can be "
        "cancelled (1 failed)."
    )
    assert texts(response) == [message]


def test_cancel_reports_running_jobs_as_asked_to_stop_not_cancelled(admin_client):
    running = enqueue("running", status="running", attempts=1)
    ready = enqueue("ready")
    data = {
        "action": "cancel_selected",
        "index": "0",
        "_selected_action": [running.pk, ready.pk],
    }

    button = admin_client.post(url(Job, "cancel", running.pk))
    action = admin_client.post(url(Job, "changelist"), data)

    assert texts(button) == [
        "Asked 1 running job to stop; it ends cancelled once its worker sees "
        "the request."
    ]
    assert texts(action)[-1] == (
        "Cancelled 1 job. Asked 1 running job to stop; it ends cancelled once "
        "its worker sees the request."
    )
    assert statuses(pk__in=[running.pk, ready.pk]) == ["cancelled", "running"]


def test_viewer_sees_the_list_without_retry_or_cancel(world):
    response = viewer().get(url(Job, "changelist"))

    assert response.status_code == 200
    content = response.content.decode()
    assert "tests.record" in content
    assert "retry_selected" not in content and "cancel_selected" not in content


@pytest.mark.parametrize("action", ["retry_selected", "cancel_selected"])
def test_forged_action_post_without_permission_changes_nothing(world, action):
    before = statuses()
    data = {"action": action, "index": "0", "select_across": "1"}
    data["_selected_action"] = [job.pk for job in world["job"]]

    other = "cancel_job" if action == "retry_selected" else "retry_job"
    for client in (viewer(), staff("view_job", other)):
        response = client.post(url(Job, "changelist"), data)
        assert response.status_code in (200, 302)

    assert statuses() == before


def test_operation_buttons_need_post_and_their_permission(world):
    failed, ready = world["job"]
    operator = staff("view_job", "retry_job")

    assert operator.get(url(Job, "retry", failed.pk)).status_code == 405
    assert operator.post(url(Job, "cancel", ready.pk)).status_code == 403
    assert staff("retry_job").post(url(Job, "retry", failed.pk)).status_code == 403
    assert statuses() == ["failed", "ready"]

    response = operator.post(url(Job, "retry", failed.pk))

    assert response.status_code == 302
    assert response["Location"] == url(Job, "change", failed.pk)
    assert statuses() == ["ready", "ready"]
    assert texts(response) == ["Retried 1 job."]


def test_cancel_button_skips_a_job_that_has_ended(world):
    operator = staff("view_job", "cancel_job")
    ended = enqueue("ended", status="succeeded")

    response = operator.post(url(Job, "cancel", ended.pk))

    assert Job.objects.get(pk=ended.pk).status == "succeeded"
    message = (
        "Cancelled 0 jobs. Skipped 1: only ready or running jobs can be "
        "cancelled (1 succeeded)."
    )
    assert texts(response) == [message]
    assert operator.post(url(Job, "cancel", 10**9)).status_code == 404


def _across(client, action, query, **extra):
    data = {"action": action, "index": "0", "select_across": "1", **extra}
    data["_selected_action"] = list(Job.objects.values_list("pk", flat=True)[:3])
    with CaptureQueriesContext(connection) as queries:
        response = client.post(f"{url(Job, 'changelist')}?{query}", data)
    return response, len(queries)


# Row by row would take 20,000 queries or more; batches of 1000 rows take a
# few each (a delete more: the cascade and the admin log, which SQLite splits
# into small inserts).
MAX_QUERIES = MANY // 1000 * 8 + 40
MAX_DELETE_QUERIES = MANY // 1000 * 30 + 40


def test_retry_across_pages_changes_only_the_filtered_jobs(admin_client):
    make_jobs(MANY // 2, "bulk", "failed")
    make_jobs(MANY // 4, "bulk", "running")
    make_jobs(MANY // 4, "other", "failed")

    response, queries = _across(admin_client, "retry_selected", "queue__exact=bulk")

    assert response.status_code == 302
    assert queries < MAX_QUERIES
    assert Job.objects.filter(queue="bulk", status="ready").count() == MANY // 2
    assert Job.objects.filter(queue="bulk", status="running").count() == MANY // 4
    assert Job.objects.filter(queue="other", status="failed").count() == MANY // 4
    message = "Retried 10000 jobs. Skipped 5000: only failed or cancelled jobs"
    assert texts(response)[0].startswith(message)


def test_cancel_across_pages_changes_only_the_filtered_jobs(admin_client):
    make_jobs(MANY // 2, "bulk", "ready")
    make_jobs(MANY // 4, "bulk", "failed")
    make_jobs(MANY // 4, "other", "ready")

    response, queries = _across(
        admin_client, "cancel_selected", "queue__exact=bulk&status__exact=ready"
    )

    assert response.status_code == 302
    assert queries < MAX_QUERIES
    assert Job.objects.filter(queue="bulk", status="cancelled").count() == MANY // 2
    assert Job.objects.filter(queue="bulk", status="failed").count() == MANY // 4
    assert Job.objects.filter(queue="other", status="ready").count() == MANY // 4
    assert texts(response) == ["Cancelled 10000 jobs."]


def test_delete_across_pages_confirms_with_the_flag_not_the_ids(admin_client):
    make_jobs(MANY - 100, "bulk", "failed")
    make_jobs(100, "other", "failed")
    doomed = Job.objects.filter(queue="bulk").first()
    Attempt.objects.create(job=doomed, number=1, outcome="failed")

    confirm, _ = _across(admin_client, "delete_selected", "queue__exact=bulk")

    assert confirm.status_code == 200
    content = confirm.content.decode()
    assert 'name="select_across" value="1"' in content
    assert content.count('name="_selected_action"') <= 3
    assert f"Jobs: {MANY - 100}<" in content and "Attempts: 1<" in content

    response, queries = _across(
        admin_client, "delete_selected", "queue__exact=bulk", post="yes"
    )

    assert response.status_code == 302
    assert queries < MAX_DELETE_QUERIES
    assert set(Job.objects.values_list("queue", flat=True)) == {"other"}
    assert not Attempt.objects.exists()
    assert texts(response) == [f"Deleted {MANY - 100} jobs."]


def test_bulk_delete_needs_permission_for_attempts_too(world):
    deleter = staff("view_job", "delete_job")
    data = {"action": "delete_selected", "index": "0", "post": "yes"}
    data["_selected_action"] = [job.pk for job in world["job"]]

    response = deleter.post(url(Job, "changelist"), data)

    assert response.status_code == 403
    assert Job.objects.count() == 2


def test_delete_page_deletes_a_job_and_its_attempts(admin_client, world):
    job = world["job"][0]

    response = admin_client.post(url(Job, "delete", job.pk), {"post": "yes"})

    assert response.status_code == 302
    assert not Job.objects.filter(pk=job.pk).exists()
    assert not Attempt.objects.filter(job_id=job.pk).exists()


@pytest.mark.parametrize("model", KLERK_MODELS, ids=lambda model: model.__name__)
def test_every_page_is_read_only(admin_client, world, model):
    obj = world[model._meta.model_name][0]

    page = admin_client.get(url(model, "change", obj.pk))

    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    assert admin_client.get(url(model, "add")).status_code == 403
    assert admin_client.post(url(model, "change", obj.pk), {}).status_code == 403


def test_a_schedule_row_is_deleted_only_with_the_delete_permission(world):
    row = world["schedule"][0]
    Schedule.objects.filter(pk=row.pk).update(
        last_tick_at=timezone.now(), next_tick_at=timezone.now()
    )
    page = url(Schedule, "delete", row.pk)

    refused = viewer().post(page, {"post": "yes"})
    assert refused.status_code == 403
    assert Schedule.objects.filter(pk=row.pk).exists()

    deleted = staff("view_schedule", "delete_schedule").post(page, {"post": "yes"})
    assert deleted.status_code == 302
    assert not Schedule.objects.filter(pk=row.pk).exists()


def test_command_record_page_links_what_the_command_created(admin_client, world):
    command = world["commandrecord"][0]
    job, action = world["job"][0], world["action"][0]

    response = admin_client.get(url(CommandRecord, "change", command.pk))

    content = response.content.decode()
    assert url(Job, "change", job.pk) in content
    assert url(Action, "change", action.pk) in content
    assert "<pre>Traceback (most recent call last):\n  boom</pre>" in content
    assert "out of stock" in content and "12.5 ms" in content
    query = {"command__id__exact": command.pk}
    listed = admin_client.get(url(Job, "changelist"), query)
    assert listed.status_code == 200
    assert [row.pk for row in listed.context["cl"].result_list] == [job.pk]


@override_settings(KLERK_HEARTBEAT_SECONDS=10.0)
def test_worker_is_alive_until_three_heartbeats_are_missed():
    now = timezone.now()

    def worker(seconds_ago, stopped=False):
        return Worker(
            last_heartbeat_at=now - timedelta(seconds=seconds_ago),
            stopped_at=now if stopped else None,
        )

    assert is_alive(worker(20))
    assert not is_alive(worker(40))
    assert not is_alive(worker(0, stopped=True))


def test_worker_list_shows_the_alive_column(admin_client, world):
    response = admin_client.get(url(Worker, "changelist"))

    content = response.content.decode()
    assert "icon-yes.svg" in content and ">host<" in content


# Every named URL of the klerk admin, found from the site's own patterns, so
# that a new view is checked without editing these tests.


def klerk_admin_urls(world):
    found = []
    for resolver in admin.site.get_urls():
        if not isinstance(resolver, URLResolver):
            continue
        prefix = str(resolver.pattern)
        if not prefix.startswith("klerk_django/"):
            continue
        model_name = prefix.split("/")[1]
        for pattern in resolver.url_patterns:
            if not pattern.name:
                continue
            if "object_id" not in pattern.pattern.converters:
                found.append((pattern.name, reverse(f"admin:{pattern.name}")))
                continue
            for obj in world[model_name]:
                address = reverse(f"admin:{pattern.name}", args=[obj.pk])
                found.append((pattern.name, address))
    return found


def hostile_posts(world, name):
    """Return POST bodies that would change state if they were accepted."""
    everything = {"select_across": "1", "index": "0", "post": "yes"}
    model = next(m for m in KLERK_MODELS if f"_{m._meta.model_name}_" in name)
    everything["_selected_action"] = [obj.pk for obj in world[model._meta.model_name]]
    if not name.endswith("_changelist"):
        return [everything]
    request = RequestFactory().get("/")
    request.user = User.objects.get(username="admin")
    actions = admin.site.get_model_admin(model).get_actions(request)
    return [{**everything, "action": action} for action in actions]


CHANGING = ("_add", "_change", "_delete", "_retry", "_cancel", "_copy")


def snapshot():
    return {
        model.__name__: list(model.objects.order_by("pk").values())
        for model in KLERK_MODELS
    }


def test_url_enumeration_finds_the_operation_views(world):
    names = {name for name, _ in klerk_admin_urls(world)}

    operations = {"retry", "cancel", "copy", "overview", "queues"}
    assert {f"klerk_django_job_{name}" for name in operations} <= names
    for model in KLERK_MODELS:
        assert f"klerk_django_{model._meta.model_name}_changelist" in names


def test_get_on_any_klerk_admin_url_changes_nothing(admin_client, world):
    before = snapshot()

    for name, address in klerk_admin_urls(world):
        response = admin_client.get(address)
        assert response.status_code < 500, address
        if name.endswith(("_retry", "_cancel", "_copy")):
            assert response.status_code == 405, address

    assert snapshot() == before


def test_post_without_csrf_token_is_refused_everywhere(admin_user, world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    before = snapshot()

    for name, address in klerk_admin_urls(world):
        for body in hostile_posts(world, name):
            assert client.post(address, body).status_code == 403, address

    assert snapshot() == before


def test_staff_without_the_permission_changes_nothing(admin_user, world):
    client = viewer()
    before = snapshot()

    for name, address in klerk_admin_urls(world):
        for body in hostile_posts(world, name):
            response = client.post(address, body)
            if name.endswith(CHANGING):
                assert response.status_code == 403, address

    assert snapshot() == before
