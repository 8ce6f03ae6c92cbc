"""The chaos run, and proof that its detectors see what they look for."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import pytest

from klerk_django import attempts, chaos
from klerk_django.models import Attempt
from tests.testapp.jobs import record
from tests.workers import ROOT, worker_env


def _duplicates(folder):
    log = folder / "duplicates.log"
    return log.read_text().splitlines() if log.exists() else []


def test_a_run_beside_a_live_run_of_the_same_job_is_a_duplicate(tmp_path):
    marker = tmp_path / "7.running"
    marker.write_text(str(os.getppid()))

    chaos._enter(tmp_path, 7, marker)

    assert _duplicates(tmp_path) == [f"7 overlaps a live run in pid {os.getppid()}"]


def test_a_marker_left_by_a_dead_process_is_no_duplicate(tmp_path):
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    marker = tmp_path / "8.running"
    marker.write_text(finished.stdout.strip())

    chaos._enter(tmp_path, 8, marker)

    assert _duplicates(tmp_path) == []
    assert marker.read_text() == str(os.getpid())


@pytest.mark.django_db
def test_a_run_after_a_recorded_success_is_a_duplicate(tmp_path):
    job = record.enqueue("chaos")
    Attempt.objects.create(job=job, number=1, outcome="succeeded")
    context = attempts.JobContext(job.pk, job.name, 2, 3, uuid.uuid4())
    token = attempts._context.set(context)
    try:
        chaos._enter(tmp_path, 9, tmp_path / "9.running")
    finally:
        attempts._context.reset(token)

    assert _duplicates(tmp_path) == ["9 ran again after its success was recorded"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_short_chaos_run_loses_and_duplicates_nothing():
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "django",
            "klerk_chaos",
            "--seconds",
            "8",
            "--workers",
            "2",
            "--drain-seconds",
            "120",
        ],
        cwd=ROOT,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )

    last = finished.stdout.strip().splitlines()[-1]
    found = re.fullmatch(
        r"chaos: jobs=(\d+) kills=(\d+) lost=(\d+) duplicated=(\d+)", last
    )
    assert found, finished.stdout + finished.stderr
    jobs, kills, lost, duplicated = map(int, found.groups())
    assert jobs > 0 and kills > 0
    assert (lost, duplicated) == (0, 0), finished.stderr
    assert finished.returncode == 0


def _registered_in_a_new_process(extra_env):
    script = (
        "import django; django.setup()\n"
        "from klerk_django.admin_pages import registered_queues\n"
        "from klerk_django.jobs import registry\n"
        "print(sorted(registry.names()), sorted(set(registered_queues())))\n"
    )
    env = worker_env()
    env.pop(chaos.FOLDER_VARIABLE, None)
    env.update(extra_env)
    finished = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return finished.stdout


@pytest.mark.django_db
def test_a_project_that_runs_no_chaos_has_no_chaos_job_or_queue():
    registered = _registered_in_a_new_process({})

    assert "klerk.noop" in registered
    assert "klerk.chaos" not in registered
    assert chaos.QUEUE not in registered


@pytest.mark.django_db
def test_the_workers_of_a_chaos_run_know_the_chaos_job(tmp_path):
    registered = _registered_in_a_new_process({chaos.FOLDER_VARIABLE: str(tmp_path)})

    assert "klerk.chaos" in registered
    assert chaos.QUEUE in registered
