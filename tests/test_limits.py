"""Rate and concurrency limits: declared, stored, and enforced at claim."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from django.core.checks import run_checks
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from klerk_django import attempts, job, leases, limits, retention
from klerk_django.exceptions import LimitError, SettingsError
from klerk_django.jobs import registry
from klerk_django.limits import ConcurrencyLimit, RateLimit
from klerk_django.models import Attempt, Job, JobStatus, Limit, LimitStart
from klerk_django.testing import run_jobs
from tests.testapp.jobs import record
from tests.testapp.limit_jobs import alone, flaky, odd, paired, rated, rated_wide
from tests.testapp.models import Run
from tests.workers import running_worker, start_worker, stop, wait_for


def claim(count: int = 10, worker: uuid.UUID | None = None) -> list[leases.ClaimedJob]:
    return leases.claim(worker or uuid.uuid4(), None, count)


def finish(claimed: leases.ClaimedJob, worker: uuid.UUID) -> str:
    return attempts.run(claimed, worker)


def ready(**filters: object) -> list[Job]:
    return list(Job.objects.filter(status=JobStatus.READY, **filters).order_by("pk"))


# Declaration.


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda: RateLimit(0, per=60), "limit must be an integer of at least 1"),
        (lambda: RateLimit(-3, per=60), "limit must be an integer of at least 1"),
        (lambda: RateLimit(True, per=60), "limit must be an integer of at least 1"),
        (lambda: RateLimit(2.5, per=60), "limit must be an integer of at least 1"),
        (lambda: RateLimit(1, per=0), "period must be"),
        (lambda: RateLimit(1, per=-1), "period must be"),
        (lambda: RateLimit(1, per=float("inf")), "period must be"),
        (lambda: RateLimit(1, per=float("nan")), "period must be"),
        (lambda: RateLimit(1, per="60"), "period must be"),  # type: ignore[arg-type]
        (lambda: RateLimit(1, per=timedelta(days=8)), "period must be"),
        (lambda: RateLimit(1, per=60, key="customer"), "key must be None or a call"),
        (lambda: ConcurrencyLimit(0), "limit must be an integer of at least 1"),
        (lambda: ConcurrencyLimit(1, key=3), "key must be None or a callable"),
    ],
)
def test_bad_limit_is_refused_when_declared(make, problem):
    with pytest.raises(LimitError, match=problem):
        make()


def test_period_may_be_a_timedelta():
    assert RateLimit(10, per=timedelta(minutes=1)).seconds == 60.0


@pytest.mark.parametrize(
    "options, problem",
    [
        ({"rate_limit": (10, 60)}, "rate_limit must be a RateLimit"),
        ({"concurrency_limit": 2}, "concurrency_limit must be a ConcurrencyLimit"),
        ({"rate_limit": ConcurrencyLimit(2)}, "rate_limit must be a RateLimit"),
    ],
)
def test_job_with_a_limit_of_the_wrong_kind_is_not_registered(options, problem):
    def send(customer: str) -> None: ...

    with pytest.raises(LimitError, match=problem):
        job(name="tests.limits.wrong_kind", **options)(send)
    assert "tests.limits.wrong_kind" not in registry


# Keys, at enqueue.


@pytest.mark.django_db
def test_keys_are_computed_from_the_arguments_and_stored():
    first = rated.enqueue("acme", "a")
    second = paired.enqueue(customer="globex", key="b", seconds=0)
    wide = rated_wide.enqueue("c")

    assert (first.rate_key, first.concurrency_key) == ("acme", None)
    assert (second.rate_key, second.concurrency_key) == (None, "globex")
    assert (wide.rate_key, wide.concurrency_key) == (None, None)
    stored = Job.objects.get(pk=first.pk)
    assert stored.rate_key == "acme"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "customer, problem",
    [
        ("boom", "key of job 'tests.limits.odd' raised KeyError"),
        ("number", "must return a string of 1 to 200 characters"),
    ],
)
def test_bad_key_refuses_the_enqueue_and_stores_nothing(customer, problem):
    with pytest.raises(LimitError, match=problem):
        odd.enqueue(customer)
    with pytest.raises(LimitError, match=problem):
        odd.enqueue_many([(("fine",), {}), ((customer,), {})])

    assert not Job.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("value", ["", "k" * 201, "nul\x00", None])
def test_key_must_return_a_short_string(value):
    def send(customer: str) -> None: ...

    name = "tests.limits.short_key"
    function = limits.RateLimit(1, per=1, key=lambda customer: value)
    odd_function = job(name=name, rate_limit=function)(send)
    try:
        with pytest.raises(LimitError, match="must return a string"):
            odd_function.enqueue("x")
    finally:
        registry._entries.pop(name)
    assert not Job.objects.exists()


def test_long_names_and_keys_fit_the_lock_key():
    key = limits.limit_key("rate:job", "n" * 200, "k" * 200)
    other = limits.limit_key("rate:job", "n" * 200, "k" * 199 + "x")

    assert len(key) == len(other) == 255 and key != other


def test_a_colon_in_a_name_or_key_does_not_join_two_limits():
    keyed = limits.limit_key("rate:job", "mail", "to:7")
    named = limits.limit_key("rate:job", "mail:to", "7")
    whole = limits.limit_key("rate:job", "mail:to:7")

    assert len({keyed, named, whole}) == 3
    assert keyed.startswith("rate:job:mail:to:7#")


def test_plain_names_and_keys_stay_readable():
    assert limits.limit_key("rate:job", "mail.send", "7") == "rate:job:mail.send:7"
    assert limits.limit_key("running:queue", "mail") == "running:queue:mail"


# Queue limits from KLERK_QUEUES.


@pytest.mark.parametrize(
    "value, problem",
    [
        ([("mail", 2)], "must be a dict of queue names"),
        ({"bad name!": {}}, "queue name 'bad name!'"),
        ({"mail": 2}, "queue 'mail' must map to a dict"),
        ({"mail": {"rate": (1, 2)}}, "unknown options \\['rate'\\]"),
        ({"mail": {"rate_limit": 10}}, "pair \\(limit, seconds\\)"),
        ({"mail": {"rate_limit": (0, 60)}}, "at least 1"),
        ({"mail": {"rate_limit": (1, 0)}}, "period must be"),
        ({"mail": {"concurrency_limit": 0}}, "at least 1"),
        ({"mail": {"concurrency_limit": "2"}}, "at least 1"),
    ],
)
def test_bad_queue_limits_are_refused(settings, value, problem):
    with pytest.raises(ValueError, match=problem):
        limits.parse_queues(value)

    settings.KLERK_QUEUES = value
    with pytest.raises(SettingsError, match="KLERK_QUEUES is unusable"):
        limits.queue_limits()


def test_queue_limits_are_parsed(settings):
    settings.KLERK_QUEUES = {"mail": {"rate_limit": [10, 60], "concurrency_limit": 2}}

    parsed = limits.queue_limits()["mail"]
    assert parsed.rate == RateLimit(10, per=60)
    assert parsed.concurrency == ConcurrencyLimit(2)


# The claim.


@pytest.mark.django_db(transaction=True)
def test_rate_limit_holds_jobs_back_without_using_attempts():
    jobs = [rated.enqueue("acme", str(n)) for n in range(5)]
    other = rated.enqueue("globex", "g")

    claimed = claim()

    assert sorted(c.id for c in claimed) == [jobs[0].pk, jobs[1].pk, other.pk]
    held = ready()
    assert [job.pk for job in held] == [job.pk for job in jobs[2:]]
    assert all(job.attempts == 0 for job in held)
    starts = LimitStart.objects.filter(key="rate:job:tests.limits.rated:acme")
    first_start = min(starts.values_list("started_at", flat=True))
    # Moved to when the window has room, so they stop filling candidates.
    assert {job.run_after for job in held} == {first_start + timedelta(seconds=1)}
    assert claim() == []


@pytest.mark.django_db(transaction=True)
def test_rate_limited_job_starts_once_its_window_has_room():
    jobs = [rated_wide.enqueue(str(n)) for n in range(3)]
    assert len(claim()) == 2

    # As if the period had passed since both starts.
    LimitStart.objects.update(
        started_at=Job.objects.get(pk=jobs[0].pk).created_at - timedelta(seconds=61)
    )
    Job.objects.filter(pk=jobs[2].pk).update(run_after=jobs[2].created_at)

    (third,) = claim()
    assert third.id == jobs[2].pk and third.attempt == 1


@pytest.mark.django_db(transaction=True)
def test_concurrency_limit_counts_running_jobs_until_they_end(tmp_path):
    gate = tmp_path / "gate"
    gate.touch()
    jobs = [alone.enqueue("acme", str(n), str(gate)) for n in range(3)]
    other = alone.enqueue("globex", "g", str(gate))
    worker = uuid.uuid4()

    first = claim(worker=worker)
    assert sorted(c.id for c in first) == [jobs[0].pk, other.pk]
    assert claim() == []
    assert all(job.run_after <= job.created_at for job in ready())

    assert finish(first[0], worker) == JobStatus.SUCCEEDED
    (second,) = claim()
    assert second.id == jobs[1].pk


@pytest.mark.django_db(transaction=True)
def test_expired_lease_stops_counting(tmp_path):
    jobs = [alone.enqueue("acme", str(n), str(tmp_path)) for n in range(2)]
    (first,) = claim()
    assert claim() == []

    Job.objects.filter(pk=first.id).update(
        lease_expires_at=Job.objects.get(pk=first.id).started_at
    )
    (second,) = claim()
    assert second.id == jobs[1].pk


@pytest.mark.django_db(transaction=True)
def test_full_key_does_not_hide_other_keys_jobs(tmp_path):
    busy = [alone.enqueue("acme", str(n), str(tmp_path)) for n in range(40)]
    last = alone.enqueue("globex", "late", str(tmp_path))

    assert [c.id for c in claim(1)] == [busy[0].pk]
    assert [c.id for c in claim(1)] == [last.pk]


@pytest.mark.django_db(transaction=True)
def test_queue_limits_apply_to_every_job_of_the_queue(settings):
    settings.KLERK_QUEUES = {
        "throttled": {"rate_limit": (3, 60), "concurrency_limit": 2}
    }
    jobs = [record.using(queue="throttled").enqueue(str(n)) for n in range(4)]
    free = record.enqueue("free")
    worker = uuid.uuid4()

    claimed = claim(worker=worker)
    assert sorted(c.id for c in claimed) == [jobs[0].pk, jobs[1].pk, free.pk]
    assert claim() == []

    for started in claimed:
        finish(started, worker)
    (third,) = claim()
    assert third.id == jobs[2].pk
    # Three starts in the window: the fourth waits for the period.
    assert claim() == []
    assert Job.objects.get(pk=jobs[3].pk).run_after > jobs[3].run_after
    assert Job.objects.get(pk=jobs[3].pk).attempts == 0


@pytest.mark.django_db(transaction=True)
def test_limited_jobs_get_free_slots_before_other_jobs():
    plain = [record.enqueue(str(n)) for n in range(3)]
    limited = rated_wide.using(priority=-5).enqueue("low")

    claimed = claim(2)
    assert sorted(c.id for c in claimed) == [plain[0].pk, limited.pk]


@pytest.mark.django_db(transaction=True)
def test_busy_worker_that_found_no_limited_job_looks_again_after_its_poll(
    settings,
):
    settings.KLERK_POLL_SECONDS = 60
    worker = uuid.uuid4()
    assert claim(worker=worker) == []
    plain = [record.enqueue(str(n)) for n in range(3)]
    limited = rated_wide.enqueue("waiting")

    # Other jobs fill every slot: limited ones wait for the poll interval.
    assert sorted(c.id for c in claim(2, worker)) == [plain[0].pk, plain[1].pk]
    # Slots left over go to limited jobs at once.
    assert sorted(c.id for c in claim(3, worker)) == [plain[2].pk, limited.pk]


@pytest.mark.django_db(transaction=True)
def test_a_missing_lock_row_is_created():
    rated.enqueue("acme", "a")
    Limit.objects.all().delete()

    assert len(claim()) == 1
    assert Limit.objects.filter(key="rate:job:tests.limits.rated:acme").exists()


@pytest.mark.django_db(transaction=True)
def test_claim_issues_one_statement_when_no_limit_is_configured(monkeypatch):
    plain = {
        name: function
        for name, function in registry._entries.items()
        if not (function.options.rate_limit or function.options.concurrency_limit)
    }
    monkeypatch.setattr(registry, "_entries", plain)
    record.enqueue("a")

    with CaptureQueriesContext(connection) as queries:
        (claimed,) = claim()

    statements = [query["sql"] for query in queries.captured_queries]
    if connection.vendor == "mysql":
        # SELECT ... FOR UPDATE SKIP LOCKED, UPDATE and SELECT, as before.
        assert len([s for s in statements if "klerk_job" in s]) == 3
    else:
        assert len(statements) == 1
    assert not any("klerk_limit" in statement for statement in statements)


@pytest.mark.django_db(transaction=True)
def test_old_starts_are_pruned():
    rated.enqueue("acme", "a")
    rated_wide.enqueue("b")
    claim()
    assert LimitStart.objects.count() == 2

    LimitStart.objects.filter(key__contains="rated_wide").update(
        started_at=Job.objects.first().created_at - timedelta(seconds=61)
    )
    assert limits.prune_starts() == 1
    assert LimitStart.objects.count() == 1

    # Older than the longest period of every limit declared anywhere.
    longest = limits.current_plan().longest_period
    LimitStart.objects.update(
        started_at=Job.objects.first().created_at - timedelta(seconds=longest + 1)
    )
    assert retention.prune(30).limit_starts == 1
    assert not LimitStart.objects.exists()


# Real worker processes on PostgreSQL.


def most_in_any_window(times: list, seconds: float) -> int:
    """Return the most of ``times`` in any half-open window of ``seconds``."""
    times = sorted(times)
    period = timedelta(seconds=seconds)
    return max(
        (sum(1 for t in times if start <= t < start + period) for start in times),
        default=0,
    )


def all_ended(jobs: list[Job]) -> bool:
    ids = [job.pk for job in jobs]
    return not Job.objects.filter(pk__in=ids).exclude(status=JobStatus.SUCCEEDED)


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_four_workers_never_start_more_than_the_rate_in_any_window():
    customers = ("acme", "globex")
    jobs = [rated.enqueue(c, f"{c}-{n}") for n in range(8) for c in customers]

    workers = [start_worker("--concurrency", "3") for _ in range(4)]
    try:
        wait_for(lambda: all_ended(jobs), timeout=120)
    finally:
        for worker in workers:
            stop(worker)

    for customer in customers:
        starts = list(
            Attempt.objects.filter(job__rate_key=customer).values_list(
                "started_at", flat=True
            )
        )
        assert len(starts) == 8
        assert most_in_any_window(starts, 1.0) <= 2
        recorded = LimitStart.objects.filter(
            key=f"rate:job:tests.limits.rated:{customer}"
        )
        assert (
            most_in_any_window(list(recorded.values_list("started_at", flat=True)), 1.0)
            <= 2
        )
    # Held back, never started: no attempt was used up by waiting.
    assert set(Job.objects.values_list("attempts", flat=True)) == {1}


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_four_workers_never_run_more_than_the_concurrency_limit():
    jobs = [paired.enqueue("acme", f"a-{n}", 0.3) for n in range(10)]
    others = [paired.enqueue("globex", f"g-{n}", 0.3) for n in range(4)]

    workers = [start_worker("--concurrency", "3") for _ in range(4)]
    try:
        wait_for(lambda: all_ended(jobs + others), timeout=120)
    finally:
        for worker in workers:
            stop(worker)

    spans = list(
        Attempt.objects.filter(job_id__in=[job.pk for job in jobs]).values_list(
            "started_at", "finished_at"
        )
    )
    assert len(spans) == 10
    most = max(
        sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans
    )
    assert most <= 2
    assert set(Job.objects.values_list("attempts", flat=True)) == {1}


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_killed_workers_job_counts_until_its_lease_expires(tmp_path):
    gate = tmp_path / "gate"
    held = alone.enqueue("acme", "held", str(gate))
    holder = start_worker("--lease-seconds", "3")
    try:
        wait_for(lambda: Job.objects.get(pk=held.pk).status == JobStatus.RUNNING)
        opened = tmp_path / "open"
        opened.touch()
        waiting = alone.enqueue("acme", "waiting", str(opened))
        with running_worker():
            holder.kill()
            holder.wait(30)
            # No heartbeat renews it any more: this is when it runs out.
            expiry = Job.objects.get(pk=held.pk).lease_expires_at
            wait_for(lambda: Job.objects.get(pk=waiting.pk).started_at)
            started = Job.objects.get(pk=waiting.pk).started_at
            gate.touch()
            wait_for(lambda: all_ended([held, waiting]))
    finally:
        stop(holder)

    assert started >= expiry
    outcomes = list(
        Attempt.objects.filter(job_id=held.pk).values_list("number", "outcome")
    )
    assert outcomes == [(1, "interrupted"), (2, "succeeded")]


@pytest.mark.parametrize(
    "value",
    [
        {"mail": {"rate_limit": (0, 60)}},
        {"mail": {"concurrency_limit": -1}},
        {"mail": {"rate_limit": (10, "a minute")}},
        {"mail": {"burst": 3}},
        "mail",
    ],
)
def test_system_check_reports_bad_queue_limits(settings, value):
    settings.KLERK_QUEUES = value

    messages = [m for m in run_checks(databases=[]) if m.id == "klerk_django.E014"]

    assert len(messages) == 1
    assert messages[0].msg.startswith("KLERK_QUEUES is unusable: ")


def test_system_check_accepts_good_queue_limits(settings):
    settings.KLERK_QUEUES = {"mail": {"rate_limit": (10, 60), "concurrency_limit": 2}}

    assert not [m for m in run_checks(databases=[]) if m.id == "klerk_django.E014"]


@pytest.mark.django_db
def test_queues_page_shows_each_queues_limits(admin_client, settings):
    settings.KLERK_QUEUES = {
        "mail": {"rate_limit": (10, 60), "concurrency_limit": 2},
        "sms": {"rate_limit": (1, 0.5)},
    }
    record.enqueue("unlimited")

    page = admin_client.get(reverse("admin:klerk_django_job_queues"))

    assert page.status_code == 200
    rows = {
        row.split("</th>")[0].rsplit(">", 1)[-1]: row
        for row in page.content.decode().split('<th scope="row">')[1:]
    }
    assert "10 starts per 60 s, 2 running" in rows["mail"]
    assert "1 start per 0.5 s" in rows["sms"]
    assert "<td>-</td>" in rows["default"]


@pytest.mark.django_db(transaction=True)
def test_run_jobs_keeps_to_the_limits():
    jobs = [rated.enqueue("acme", str(n)) for n in range(3)]

    results = run_jobs()

    assert [result.job_id for result in results] == [jobs[0].pk, jobs[1].pk]
    held = Job.objects.get(pk=jobs[2].pk)
    assert held.status == JobStatus.READY and held.attempts == 0


def _claim_while_another_transaction_holds(job: Job) -> list[leases.ClaimedJob]:
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                Job.objects.select_for_update().get(pk=job.pk)
                locked.set()
                release.wait(60)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(60)
        # Fail instead of hanging if the claim waits for the held row.
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SET lock_timeout = '5s'")
            else:
                cursor.execute("SET SESSION innodb_lock_wait_timeout = 5")
        return claim()
    finally:
        release.set()
        holder.join(60)


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_claim_skips_a_limited_job_another_transaction_holds():
    held = rated.enqueue("acme", "held")
    free = rated.enqueue("globex", "free")

    claimed = _claim_while_another_transaction_holds(held)

    assert [c.id for c in claimed] == [free.pk]
    assert Job.objects.get(pk=held.pk).attempts == 0


@pytest.mark.mysql
@pytest.mark.django_db(transaction=True)
def test_claim_skips_a_limited_job_another_transaction_holds_on_mariadb():
    held = rated.enqueue("acme", "held")
    free = rated.enqueue("globex", "free")

    claimed = _claim_while_another_transaction_holds(held)

    assert [c.id for c in claimed] == [free.pk]
    assert Job.objects.get(pk=held.pk).attempts == 0


# Keys that a case- or accent-insensitive collation (MariaDB's default)
# would take for one another are still different keys.

LOOKALIKE_KEYS = ["acme", "Acme", "ACME", "acme ", "ácme", "acme\u00a0"]


@pytest.mark.django_db(transaction=True)
def test_rate_keys_differing_only_in_case_accent_or_space_are_apart():
    jobs = [rated.enqueue(customer, customer) for customer in LOOKALIKE_KEYS]

    claimed = claim()

    assert sorted(c.id for c in claimed) == [job.pk for job in jobs]
    assert Limit.objects.count() == len(LOOKALIKE_KEYS)


@pytest.mark.django_db(transaction=True)
def test_concurrency_keys_differing_only_in_case_or_space_are_apart(tmp_path):
    gate = tmp_path / "gate"
    first = alone.enqueue("acme", "first", str(gate))
    worker = uuid.uuid4()
    assert [c.id for c in claim(worker=worker)] == [first.pk]

    # "acme" is full now; its lookalikes are not.
    others = [alone.enqueue(key, key, str(gate)) for key in LOOKALIKE_KEYS[1:]]
    again = alone.enqueue("acme", "again", str(gate))

    claimed = claim()

    assert sorted(c.id for c in claimed) == [job.pk for job in others]
    assert Job.objects.get(pk=again.pk).status == JobStatus.READY


# Many workers, many keys, limited and unlimited jobs of every priority.

MIXED_KEYS = ["acme", "Acme", "ünïcødé-客户", "k" * 200, "globex"]


@pytest.mark.django_db(transaction=True)
def test_mixed_workload_on_four_workers_ends_within_every_limit():
    keys = list(enumerate(MIXED_KEYS))
    rated_jobs = [rated.enqueue(k, f"{i}-{n}") for n in range(4) for i, k in keys]
    flaky_jobs = [flaky.enqueue(k, f"{i}-{n}") for n in range(2) for i, k in keys]
    plain = [
        record.using(priority=priority).enqueue(f"plain-{priority}-{n}")
        for n in range(10)
        for priority in (-5, 0, 5)
    ]
    jobs = rated_jobs + flaky_jobs + plain

    workers = [start_worker("--concurrency", "3") for _ in range(4)]
    try:
        wait_for(lambda: all_ended(jobs), timeout=240)
    finally:
        for worker in workers:
            stop(worker)

    # Grouped here: MariaDB's collation would take "acme" for "Acme".
    spans: dict[tuple[str, str], list] = {}
    for name, key, start, end in Attempt.objects.values_list(
        "job__name", "job__rate_key", "started_at", "finished_at"
    ):
        spans.setdefault((name, key), []).append((start, end))
    for key in MIXED_KEYS:
        starts = [start for start, _ in spans[rated.name, key]]
        assert len(starts) == 4 and most_in_any_window(starts, 1.0) <= 2, key
        assert len(spans[flaky.name, key]) == 4
    # Marks are numbered as they happen, whatever the clocks say.
    running: dict[str, int] = {}
    for kind, mark in (
        Run.objects.filter(kind__startswith="flaky")
        .order_by("pk")
        .values_list("kind", "key")
    ):
        index = mark.split("-")[0]
        running[index] = running.get(index, 0) + (1 if kind == "flaky-start" else -1)
        assert running[index] <= 1, (MIXED_KEYS[int(index)], mark)
    # Every retry was one more attempt, and waiting used none up.
    assert {job.attempts for job in Job.objects.filter(name=flaky.name)} == {2}
    assert set(
        Job.objects.exclude(name=flaky.name).values_list("attempts", flat=True)
    ) == {1}
