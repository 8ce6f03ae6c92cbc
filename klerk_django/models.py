"""Tables of klerk_django: jobs, attempts, actions, command records, workers.

State filters live on the QuerySets; the state changes that must be atomic
across workers (claim, lease renewal, finish, recovery) live in ``leases.py``
and ``attempts.py``, which are the only places that write job states.
"""

from __future__ import annotations

import uuid

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils import timezone


class JobStatus(models.TextChoices):
    READY = "ready", "ready"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    CANCELLED = "cancelled", "cancelled"


FINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobQuerySet(models.QuerySet["Job"]):
    def ready(self) -> JobQuerySet:
        return self.filter(status=JobStatus.READY)

    def running(self) -> JobQuerySet:
        return self.filter(status=JobStatus.RUNNING)

    def finished(self) -> JobQuerySet:
        return self.filter(status__in=FINAL_STATUSES)

    def failed(self) -> JobQuerySet:
        return self.filter(status=JobStatus.FAILED)


class CommandRecord(models.Model):
    """One run of a command: who asked, with what, and how it ended."""

    class Outcome(models.TextChoices):
        SUCCEEDED = "succeeded", "succeeded"
        REJECTED = "rejected", "rejected"
        FAILED = "failed", "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, db_index=True)
    inputs = models.JSONField(default=dict, encoder=DjangoJSONEncoder)
    actor = models.CharField(max_length=255, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    problems = models.JSONField(default=list, blank=True)
    result = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    error = models.TextField(blank=True)
    duration_ms = models.FloatField(default=0.0)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # A caller's idempotency token: the database refuses a second record
    # with the same token, which is what makes "at most once" hold across
    # processes and restarts.
    token = models.CharField(max_length=200, null=True, blank=True, unique=True)

    class Meta:
        db_table = "klerk_command_record"
        ordering = ["-created_at"]
        verbose_name = "command record"

    def __str__(self) -> str:
        return f"{self.name} ({self.outcome})"


class CommandLock(models.Model):
    """A row whose lock serializes the commands that share its key."""

    key = models.CharField(max_length=200, primary_key=True)
    taken_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "klerk_command_lock"

    def __str__(self) -> str:
        return self.key


class Job(models.Model):
    """One stored request to run a registered job function."""

    name = models.CharField(max_length=200)
    queue = models.CharField(max_length=100, default="default")
    priority = models.IntegerField(default=0, help_text="Higher runs first.")
    arguments = models.JSONField(default=dict)
    status = models.CharField(
        max_length=16, choices=JobStatus.choices, default=JobStatus.READY
    )
    run_after = models.DateTimeField(help_text="Earliest time the job may start.")
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=4)
    backoff_base_seconds = models.FloatField(default=3.0)
    backoff_max_seconds = models.FloatField(default=3600.0)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    worker_id = models.UUIDField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    result = models.JSONField(null=True, blank=True)
    # What the running job last said about itself: a fraction or a dict.
    progress = models.JSONField(null=True, blank=True)
    # A unique job's key, kept for good; the active copy holds it only
    # while the job is ready or running, so that its plain unique
    # constraint refuses a duplicate on every database, MariaDB included,
    # which has no partial indexes.
    unique_key = models.CharField(max_length=255, null=True, blank=True)
    active_unique_key = models.CharField(
        max_length=255, null=True, blank=True, editable=False
    )
    # The keys a per-key rate or concurrency limit counts this job under,
    # computed from its arguments at enqueue; None when the job function
    # has no such limit.
    rate_key = models.CharField(max_length=200, null=True, blank=True)
    concurrency_key = models.CharField(max_length=200, null=True, blank=True)
    # A running attempt past this many seconds is stopped and fails.
    timeout_seconds = models.FloatField(null=True, blank=True)
    # Set when someone asked a running job to stop; the job may check it.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    command = models.ForeignKey(
        CommandRecord,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        db_constraint=False,
        related_name="jobs",
    )

    objects = JobQuerySet.as_manager()

    # Set on the Job that enqueue returns: True when an equal unique job was
    # already ready or running and that one is returned instead.
    is_duplicate = False

    class Meta:
        db_table = "klerk_job"
        ordering = ["-id"]
        permissions = [
            ("retry_job", "Can retry jobs"),
            ("cancel_job", "Can cancel jobs"),
        ]
        indexes = [
            models.Index(
                fields=["status", "created_at"], name="klerk_job_status_created"
            ),
            models.Index(fields=["name"], name="klerk_job_name"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["active_unique_key"], name="klerk_job_active_unique_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} #{self.pk} ({self.status})"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


class Attempt(models.Model):
    """One run of a job by a worker, numbered from 1."""

    class Outcome(models.TextChoices):
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        INTERRUPTED = "interrupted", "interrupted"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="attempt_set")
    number = models.PositiveIntegerField()
    worker_id = models.UUIDField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)

    class Meta:
        db_table = "klerk_attempt"
        ordering = ["job_id", "number"]
        constraints = [
            models.UniqueConstraint(
                fields=["job", "number"], name="klerk_attempt_job_number"
            )
        ]

    def __str__(self) -> str:
        return f"{self.job_id} attempt {self.number} ({self.outcome})"

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class ActionStatus(models.TextChoices):
    PENDING = "pending", "pending"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"


class Action(models.Model):
    """A fire-and-forget side effect, run once its transaction commits."""

    name = models.CharField(max_length=200)
    arguments = models.JSONField(default=dict)
    status = models.CharField(
        max_length=16, choices=ActionStatus.choices, default=ActionStatus.PENDING
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    command = models.ForeignKey(
        CommandRecord,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        db_constraint=False,
        related_name="actions",
    )

    class Meta:
        db_table = "klerk_action"
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["status", "created_at"], name="klerk_action_status"),
        ]

    def __str__(self) -> str:
        return f"{self.name} #{self.pk} ({self.status})"


class Worker(models.Model):
    """One ``klerk_worker`` process; a new row for every start."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    queues = models.JSONField(default=list, blank=True)
    concurrency = models.PositiveIntegerField(default=1)
    started_at = models.DateTimeField(default=timezone.now)
    last_heartbeat_at = models.DateTimeField(default=timezone.now)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "klerk_worker"
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.hostname}:{self.pid})"


class Queue(models.Model):
    """A queue's shared switch: workers claim no job of a paused queue."""

    name = models.CharField(max_length=100, primary_key=True)
    paused = models.BooleanField(default=False)
    paused_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "klerk_queue"
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} (paused)" if self.paused else self.name


class Limit(models.Model):
    """A rate or concurrency limit's lock row.

    Workers that want to start a job under the limit lock this row first,
    so that counting the starts (or running jobs) and adding one is a
    single step across all workers.
    """

    key = models.CharField(max_length=255, primary_key=True)

    class Meta:
        db_table = "klerk_limit"

    def __str__(self) -> str:
        return self.key


class LimitStart(models.Model):
    """One start of a job under a rate limit, kept for one period."""

    key = models.CharField(max_length=255)
    started_at = models.DateTimeField()
    job_id = models.BigIntegerField()

    class Meta:
        db_table = "klerk_limit_start"
        indexes = [
            models.Index(fields=["key", "started_at"], name="klerk_limit_start_key")
        ]

    def __str__(self) -> str:
        return f"{self.key} at {self.started_at}"


class Schedule(models.Model):
    """A periodic schedule's shared state: the last tick enqueued.

    Workers move ``last_tick_at`` forward with a guarded UPDATE in the same
    transaction as the tick's job, so each tick is enqueued exactly once.
    """

    name = models.CharField(max_length=200, primary_key=True)
    last_tick_at = models.DateTimeField(null=True, blank=True)
    next_tick_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "klerk_schedule"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
