"""The benchmark runs end to end and prints every figure by its key."""

import json
import subprocess
import sys

import pytest

from klerk_django.models import Job
from tests.workers import ROOT, worker_env

KEYS = {
    "enqueue_per_s",
    "insert_ceiling_per_s",
    "bulk_enqueue_per_s",
    "drain_per_s_1_worker",
    "drain_per_s_2_workers",
    "claim_finish_ceiling_per_s",
    "latency_ms",
    "commands_per_s",
    "worker_rss_growth_pct",
}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_klerk_bench_prints_every_figure_and_cleans_up():
    finished = subprocess.run(
        [sys.executable, "-m", "django", "klerk_bench", "--quick", "--json"],
        cwd=ROOT,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert finished.returncode == 0, finished.stderr
    figures = json.loads(finished.stdout.strip().splitlines()[-1])
    assert KEYS <= set(figures)
    assert set(figures["latency_ms"]) == {"p50", "p95", "p99"}
    for key in KEYS - {"latency_ms", "worker_rss_growth_pct"}:
        assert figures[key] > 0, key
    assert not Job.objects.filter(queue="klerk-bench").exists()
