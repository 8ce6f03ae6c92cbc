import pytest

from klerk_django.models import Job, JobStatus
from tests.testapp.jobs import record
from tests.testapp.models import Run
from tests.workers import running_worker, wait_for


@pytest.mark.django_db(transaction=True)
def test_worker_process_runs_a_committed_job():
    job = record.enqueue("smoke")

    with running_worker("--concurrency", "2"):
        wait_for(lambda: Job.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED)

    assert Run.objects.filter(kind="record", key="smoke").count() == 1
