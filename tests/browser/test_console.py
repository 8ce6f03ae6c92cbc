"""The admin console in a real browser, against a live server and workers."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from klerk_django.models import Job, Worker
from tests.browser.conftest import screenshot
from tests.testapp.jobs import fail_until
from tests.workers import start_worker, stop

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "browser-pass"
# A safety net against a hung worker, never an expectation.
WORKER_TIMEOUT_SECONDS = 120


@pytest.fixture
def operator():
    return User.objects.create_superuser("operator", password=PASSWORD)


@pytest.fixture
def viewer():
    user = User.objects.create_user("viewer", password=PASSWORD, is_staff=True)
    codenames = ["view_job", "view_attempt", "view_worker"]
    perms = Permission.objects.filter(
        content_type__app_label="klerk_django", codename__in=codenames
    )
    user.user_permissions.set(perms)
    return user


def log_in(page, live_server, user):
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#content-main")
    assert "/admin/login/" not in page.url


def run_worker_until_idle():
    """Run a real worker in burst mode until no job runs or may start now."""
    process = start_worker("--burst", "--concurrency", "2")
    try:
        process.wait(WORKER_TIMEOUT_SECONDS)
    finally:
        stop(process)
    assert process.returncode == 0


def seed_last_hour(now):
    """Store an hour of finished jobs and some waiting ones, as a day has."""
    jobs = []
    for minute in range(60):
        at = now - timedelta(minutes=59 - minute, seconds=20)
        for index in range(2 + (minute * 7) % 5):
            failed = (minute + index) % 9 == 0
            jobs.append(
                Job(
                    name="shop.send_receipt" if index % 2 else "shop.charge_card",
                    queue="mail" if index % 2 else "payments",
                    status="failed" if failed else "succeeded",
                    run_after=at,
                    created_at=at,
                    started_at=at,
                    finished_at=at + timedelta(seconds=2),
                    attempts=1,
                )
            )
    for minutes_ago in (4, 3, 1):
        at = now - timedelta(minutes=minutes_ago)
        jobs.append(Job(name="shop.charge_card", queue="payments", run_after=at))
    later = now + timedelta(hours=1)
    jobs.append(Job(name="shop.follow_up", queue="mail", run_after=later))
    Job.objects.bulk_create(jobs)

    worker = Worker.objects.create(
        name="worker-a", hostname="app-1", pid=4242, queues=["payments"]
    )
    Job.objects.create(
        name="shop.charge_card",
        queue="payments",
        status="running",
        run_after=now,
        started_at=now,
        worker_id=worker.pk,
        attempts=1,
    )


def test_overview_shows_queues_chart_and_workers(page, live_server, operator, settings):
    # A long heartbeat window, so that the stored worker stays alive.
    settings.KLERK_HEARTBEAT_SECONDS = 10.0
    seed_last_hour(timezone.now())
    log_in(page, live_server, operator)

    page.goto(f"{live_server.url}/admin/klerk_django/")
    page.get_by_role("link", name="Overview", exact=True).first.click()

    page.wait_for_selector("svg.klerk-chart")
    assert page.locator("svg.klerk-chart polyline").count() == 3
    assert page.locator(".klerk-live-workers").inner_text() == "1"
    assert "worker-a" in page.locator("table.klerk-workers").inner_text()
    queues = page.locator("table.klerk-by-queue tbody th").all_inner_texts()
    assert queues == ["mail", "payments"]
    assert page.locator(".klerk-failure-rate").inner_text().endswith("%")
    screenshot(page, "overview.png")

    page.get_by_role("link", name="Queues", exact=True).first.click()
    assert "payments" in page.locator("table.klerk-queue-table").inner_text()


def test_retry_a_failed_job_and_see_it_succeed(page, live_server, operator):
    job = fail_until.using(max_attempts=1).enqueue("browser", succeed_on=2)
    run_worker_until_idle()
    assert Job.objects.get(pk=job.pk).status == "failed"
    log_in(page, live_server, operator)

    page.goto(f"{live_server.url}/admin/klerk_django/job/")
    filters = page.locator("#changelist-filter")
    filters.get_by_role("link", name="failed", exact=True).click()
    page.wait_for_url("**status__exact=failed**")
    results = page.locator("#result_list")
    results.get_by_role("link", name="tests.fail_until").first.click()
    page.get_by_role("button", name="Retry now").click()

    assert "Retried 1 job." in page.locator("ul.messagelist").inner_text()
    run_worker_until_idle()
    page.reload()
    assert page.locator(".field-status_badge .klerk-badge").inner_text() == "succeeded"
    assert page.locator("#attempt_set-group tbody tr.has_original").count() == 2
    page.locator("#attempt_set-group details summary").first.click()
    screenshot(page, "job.png")


def test_bulk_cancel_of_every_job_across_pages(page, live_server, operator):
    later = timezone.now() + timedelta(hours=1)
    Job.objects.bulk_create(
        Job(name="tests.record", queue="bulk", run_after=later) for _ in range(12_000)
    )
    Job.objects.bulk_create(
        Job(name="tests.record", queue="keep", run_after=later) for _ in range(10)
    )
    log_in(page, live_server, operator)

    page.goto(
        f"{live_server.url}/admin/klerk_django/job/?queue=bulk&status__exact=ready"
    )
    page.click("#action-toggle")
    page.get_by_role("button", name="Select all 10,000+ jobs").click()
    page.select_option("select[name=action]", "cancel_selected")
    page.click("button[name=index]")

    assert "Cancelled 12000 jobs." in page.locator("ul.messagelist").inner_text()
    assert Job.objects.filter(queue="bulk", status="cancelled").count() == 12_000
    assert Job.objects.filter(queue="keep", status="ready").count() == 10


def test_view_only_user_sees_no_retry(page, live_server, viewer):
    job = Job.objects.create(
        name="tests.record", status="failed", run_after=timezone.now(), attempts=4
    )
    log_in(page, live_server, viewer)

    page.goto(f"{live_server.url}/admin/klerk_django/job/")
    assert page.locator("select[name=action] option[value=retry_selected]").count() == 0
    page.goto(f"{live_server.url}/admin/klerk_django/job/{job.pk}/change/")

    assert page.locator(".field-status_badge").inner_text().strip().endswith("failed")
    assert page.get_by_role("button", name="Retry now").count() == 0
    assert page.get_by_role("button", name="Enqueue a copy").count() == 0
    page.goto(f"{live_server.url}/admin/klerk_django/job/overview/")
    assert page.locator("svg.klerk-chart").count() == 1


@pytest.mark.parametrize("address", ["job", "worker"])
def test_the_job_and_worker_lists_fit_a_1400_pixel_window(
    page, live_server, operator, address
):
    seed_last_hour(timezone.now())
    Worker.objects.create(
        name="worker-app-1-4242-payments",
        hostname="app-server-1.internal.example",
        pid=424242,
        queues=["payments", "mail", "reports"],
        concurrency=8,
    )
    page.set_viewport_size({"width": 1400, "height": 900})
    log_in(page, live_server, operator)

    page.goto(f"{live_server.url}/admin/klerk_django/{address}/")

    page.wait_for_selector("#result_list")
    # The admin scrolls a wide table inside its box, not the page.
    box = page.locator(".results")
    width, shown = box.evaluate("box => [box.scrollWidth, box.clientWidth]")
    assert width <= shown, f"the {address} list is {width} px wide in {shown} px"
