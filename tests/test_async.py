"""Async job and action functions run to their end in worker threads."""

from __future__ import annotations

import pytest

from klerk_django import get_result
from klerk_django.models import Action, JobStatus
from tests.testapp.control_jobs import (
    async_action,
    async_fail,
    async_record,
    request_async_action,
)
from tests.testapp.models import Run
from tests.workers import start_worker, stop


def run_to_the_end() -> None:
    process = start_worker("--burst", "--concurrency", "2")
    try:
        assert process.wait(120) == 0
    finally:
        stop(process)


@pytest.mark.django_db(transaction=True)
def test_async_jobs_run_in_a_worker_and_record_their_outcome():
    first = async_record.enqueue("a")
    second = async_record.enqueue("b")
    failing = async_fail.enqueue("c")

    run_to_the_end()

    assert get_result(first.pk).result == "a"
    assert get_result(second.pk).status == JobStatus.SUCCEEDED
    failed = get_result(failing.pk)
    assert failed.status == JobStatus.FAILED
    assert failed.errors == ["RuntimeError: async failure: c"]
    keys = set(Run.objects.filter(kind="async").values_list("key", flat=True))
    assert keys == {"a:1", "b:1"}


@pytest.mark.django_db(transaction=True)
def test_async_action_requested_by_a_job_runs_in_the_worker():
    request_async_action.enqueue("from-job")

    run_to_the_end()

    action = Action.objects.get(name="tests.async_action")
    assert (action.status, action.error) == ("succeeded", "")
    assert Run.objects.filter(kind="async-action", key="from-job").count() == 1


@pytest.mark.django_db(transaction=True)
def test_async_action_runs_in_this_process():
    action = async_action.request("here")

    action.refresh_from_db()
    assert action.status == "succeeded"
    assert Run.objects.filter(kind="async-action", key="here").count() == 1
