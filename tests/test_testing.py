"""The testing helpers run jobs in the test's process, as a worker would."""

from __future__ import annotations

import pytest
from django.test import TestCase

from klerk_django.exceptions import ArgumentError
from klerk_django.models import JobStatus
from klerk_django.queues import pause_queue
from klerk_django.testing import assert_enqueued, run_jobs
from tests.testapp.control_jobs import async_double, unique_noop
from tests.testapp.jobs import fail, fail_until, record
from tests.testapp.models import Run


class RunJobsTests(TestCase):
    def test_run_jobs_runs_ready_jobs_and_returns_their_results(self):
        first = record.enqueue("one")
        second = async_double.enqueue(21)
        later = record.using(delay=3600).enqueue("later")

        results = run_jobs()

        assert [r.job_id for r in results] == [first.pk, second.pk]
        assert [r.result for r in results] == ["one", 42]
        later.refresh_from_db()
        assert later.status == JobStatus.READY

    def test_arguments_that_are_no_json_are_refused_as_in_a_worker(self):
        with pytest.raises(ArgumentError, match="not JSON"):
            record.enqueue(("a", "tuple"))

        assert run_jobs() == []

    def test_retries_due_at_once_run_until_the_job_ends(self):
        job = fail_until.enqueue("x", succeed_on=3)
        failing = fail.enqueue("y")

        results = {r.job_id: r for r in run_jobs()}

        assert results[job.pk].status == JobStatus.SUCCEEDED
        assert len(results[job.pk].attempts) == 3
        assert results[failing.pk].status == JobStatus.FAILED
        assert Run.objects.filter(kind="fail").count() == 3

    def test_paused_queue_is_left_alone(self):
        record.using(queue="held").enqueue("held")
        pause_queue("held")

        assert run_jobs() == []

    def test_assert_enqueued_finds_the_exact_call(self):
        job = unique_noop.enqueue(1, colour=["red"], size={"w": 1.5})

        found = assert_enqueued(unique_noop, 1, colour=["red"], size={"w": 1.5})
        assert found.pk == job.pk
        by_name = assert_enqueued(
            "tests.unique_noop", 1, size={"w": 1.5}, colour=["red"]
        )
        assert by_name.pk == job.pk
        with pytest.raises(AssertionError, match="No ready job 'tests.unique_noop'"):
            assert_enqueued(unique_noop, 2, colour=["red"])

    def test_assert_enqueued_ignores_jobs_that_ran(self):
        record.enqueue("done")
        run_jobs()

        with pytest.raises(AssertionError, match="ready jobs of it: none"):
            assert_enqueued(record, "done")


class DocumentedExampleTests(TestCase):
    """The example of docs/testing.md, as written there."""

    def test_placing_an_order_charges_the_card(self):
        from shop.commands import PlaceOrder
        from shop.jobs import charge_card
        from shop.models import Customer

        from klerk_django import SYSTEM, handle

        Customer.objects.create(name="ada")

        result = handle(PlaceOrder(customer="ada", amount_cents=500), actor=SYSTEM)

        charge = assert_enqueued(charge_card, result.value)
        results = {r.job_id: r for r in run_jobs()}
        self.assertEqual(results[charge.pk].status, "succeeded")
