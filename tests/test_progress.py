"""Progress: a running job reports how far it has come, under its lease."""

from __future__ import annotations

import uuid

import pytest

from klerk_django import attempts, get_result, leases
from klerk_django.attempts import report_progress
from klerk_django.exceptions import ArgumentError
from klerk_django.models import Job
from tests.testapp.control_jobs import progress
from tests.testapp.models import Run


@pytest.mark.django_db(transaction=True)
def test_progress_is_stored_while_the_lease_is_held_and_never_after():
    job = progress.enqueue("p")
    worker = uuid.uuid4()
    (claimed,) = leases.claim(worker, None, 1)

    assert attempts.run(claimed, worker) == ""

    kinds = Run.objects.filter(key="p").order_by("pk").values_list("kind", flat=True)
    assert list(kinds) == ["progress-True", "progress-True", "progress-False"]
    assert get_result(job.pk).progress == {"done": 2, "of": 4}


@pytest.mark.django_db
def test_progress_outside_a_job_is_refused():
    with pytest.raises(RuntimeError, match="outside a running job"):
        report_progress(0.5)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("value", [1.5, -0.1, float("nan"), True, "half", [1]])
def test_progress_that_is_no_fraction_or_dict_is_refused(value):
    job = progress.enqueue("bad")
    worker = uuid.uuid4()
    (claimed,) = leases.claim(worker, None, 1)
    context = attempts.JobContext(claimed.id, claimed.name, 1, 1, worker)
    token = attempts._context.set(context)
    try:
        with pytest.raises(ArgumentError, match="Progress must be"):
            report_progress(value)
    finally:
        attempts._context.reset(token)
    assert Job.objects.get(pk=job.pk).progress is None
