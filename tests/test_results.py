"""Results: reading back what became of a job."""

from __future__ import annotations

import pytest

import klerk_django
from klerk_django.models import JobStatus
from klerk_django.results import JobNotFound, get_result
from tests.testapp.jobs import fail, fail_until
from tests.workers import start_worker, stop


def run_to_the_end() -> None:
    process = start_worker("--burst")
    try:
        assert process.wait(120) == 0
    finally:
        stop(process)


@pytest.mark.django_db
def test_ready_job_has_no_result_and_no_attempts():
    job = fail.enqueue("waiting")

    result = klerk_django.get_result(job.pk)

    assert (result.job_id, result.status, result.result) == (job.pk, "ready", None)
    assert result.attempts == ()
    assert not result.is_final


@pytest.mark.django_db
@pytest.mark.parametrize("job_id", [0, 987654321, "7", None, True])
def test_unknown_job_id_raises_a_clear_error(job_id):
    with pytest.raises(JobNotFound, match="job id|No job has the id"):
        get_result(job_id)


@pytest.mark.django_db(transaction=True)
def test_result_holds_the_return_value_and_every_attempt_error():
    job = fail_until.enqueue("third", succeed_on=3)

    run_to_the_end()

    result = get_result(job.pk)
    assert (result.status, result.result) == (JobStatus.SUCCEEDED, 3)
    assert [a.number for a in result.attempts] == [1, 2, 3]
    assert [a.outcome for a in result.attempts] == ["failed", "failed", "succeeded"]
    assert result.errors == ["RuntimeError: not yet: third"] * 2
    assert result.is_final
