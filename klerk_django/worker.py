"""The worker: claims jobs, runs them on threads, keeps their leases.

One ``Worker`` is one process start with a new id, whatever name it was
given, so a restarted worker never passes for the one that died. Threads:

* the main loop claims as many jobs as it has free slots, in one query,
  then waits for a wake-up (a notification, a finished job) or the poll
  interval;
* a job thread per slot runs one attempt at a time and records it;
* a maintenance thread renews the leases of running jobs, sends the
  worker's heartbeat, returns jobs of lost workers to the queue, and starts
  a thread that runs orphaned actions;
* a schedules thread enqueues the due ticks of periodic schedules;
* on PostgreSQL, a listener thread turns notifications into wake-ups.

A database error in any of them (``django.db.Error``: a closed connection
raises InterfaceError, which is no DatabaseError) is logged, the connection
is dropped and the step is retried with backoff; it never ends the process.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from django.db import Error, close_old_connections

from . import (
    actions,
    attempts,
    cancellation,
    database,
    job_processes,
    leases,
    notify,
    retention,
    schedules,
)
from .cancellation import Stop
from .conf import settings
from .leases import ClaimedJob
from .models import Worker as WorkerRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerOptions:
    queues: tuple[str, ...] = ()
    concurrency: int = 4
    burst: bool = False
    name: str = ""
    poll_seconds: float = 1.0
    grace_seconds: float = 30.0
    listen: bool = True
    # None: KLERK_LEASE_SECONDS. Heartbeats come at least three times per
    # lease, whatever KLERK_HEARTBEAT_SECONDS says.
    lease_seconds: float | None = None


class Worker:
    """One worker process; ``run`` returns when it has stopped."""

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.id = uuid.uuid4()
        self.name = options.name or f"{socket.gethostname()}-{os.getpid()}"
        self.stopping = threading.Event()
        self.forced = threading.Event()
        # Set once no job runs any more: leases are kept until then.
        self.drained = threading.Event()
        self.wake = threading.Event()
        self.running: dict[int, ClaimedJob] = {}
        # Jobs whose outcome is being written: a lease found gone then was
        # most likely ended by that write, not lost.
        self.ending: set[int] = set()
        # Each running attempt's stop flag, set when it is cancelled.
        self.stops: dict[int, Stop] = {}
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(
            max_workers=options.concurrency, thread_name_prefix="klerk-job"
        )
        self.jobs_done = 0
        self._tuned: object = None
        self.orphans: threading.Thread | None = None
        self.pruner: threading.Thread | None = None
        self.schedules = schedules.Checker()

    def stop(self) -> None:
        """Stop claiming; running jobs finish within the grace period.

        A second call stops waiting for running jobs: they are returned to
        the queue as interrupted attempts.
        """
        # Set before the log line, so that whoever reads the line may rely
        # on no further claim.
        second = self.stopping.is_set()
        self.stopping.set()
        self.wake.set()
        if second:
            self.forced.set()
            logger.warning("worker stopping now worker=%s", self.id)
            return
        logger.info(
            "worker stopping worker=%s running=%s grace_s=%s",
            self.id,
            len(self.running),
            self.options.grace_seconds,
        )

    def stop_on_signals(
        self, signums: Sequence[int] = (signal.SIGTERM, signal.SIGINT)
    ) -> None:
        """Call ``stop`` for each of ``signums``; from the main thread only.

        The handler only writes a byte to a pipe: it interrupts the main
        thread anywhere, maybe while that holds a lock ``stop`` needs, so a
        relay thread makes the call.
        """
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)

        def on_signal(signum: int, frame: object) -> None:
            try:
                os.write(write_end, b"\0")
            except BlockingIOError:
                pass  # the pipe is full of stops already

        relay = threading.Thread(
            target=self._relay_stops, args=(read_end,), name="klerk-signals"
        )
        relay.daemon = True
        relay.start()
        for signum in signums:
            signal.signal(signum, on_signal)

    def _relay_stops(self, read_end: int) -> None:
        while True:
            stops = os.read(read_end, 64)
            if not stops:
                return
            for _ in stops:
                self.stop()

    def run(self) -> int:
        """Run until stopped (or, in burst mode, until nothing is ready)."""
        self._register()
        maintenance = threading.Thread(
            target=self._maintain, name="klerk-maintenance", daemon=True
        )
        threads = [maintenance]
        if self.options.listen and notify.enabled():
            queues = self.options.queues
            threads.append(notify.Listener(self.wake.set, queues, self.stopping))
        for thread in threads:
            thread.start()

        try:
            self._loop()
        finally:
            self.stopping.set()
            self._drain()
            self.drained.set()
            self._unregister()
        return 0

    def _loop(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            self.wake.clear()
            # Whether a job ran when the claim began: one that ends during
            # the claim may leave a retry due, which burst mode must see.
            busy = bool(self.running)
            free = self.options.concurrency - len(self.running)
            try:
                claimed = self._claim(free)
                failures = 0
            except Error as exc:
                failures += 1
                self._back_off("claim", exc, failures, self.stopping)
                continue

            for job in claimed:
                self._start(job)
            if self.options.burst and not (claimed or busy or self.running):
                logger.info("worker found nothing ready, exiting worker=%s", self.id)
                return
            if claimed and len(claimed) == free:
                continue
            self.wake.wait(self.options.poll_seconds)

    def _claim(self, free: int) -> list[ClaimedJob]:
        if free < 1:
            return []
        database.connection().close_if_unusable_or_obsolete()
        self._skip_flush_for_claims()
        claimed = leases.claim(
            self.id, self.options.queues or None, free, self.options.lease_seconds
        )
        if claimed:
            logger.debug("jobs claimed worker=%s count=%s", self.id, len(claimed))
        return claimed

    def _skip_flush_for_claims(self) -> None:
        """Let this thread's claims commit without waiting for the disk.

        A claim lost in a database crash only returns its jobs to the
        queue, where they run again, as after any crash; their outcomes are
        written by the job threads' connections, which keep waiting for the
        flush. Only the main thread's connection claims, so the setting is
        made once per connection, on PostgreSQL.
        """
        conn = database.connection()
        conn.ensure_connection()
        if conn.vendor != "postgresql" or conn.connection is self._tuned:
            return
        with conn.cursor() as cursor:
            cursor.execute("SET synchronous_commit = off")
        self._tuned = conn.connection

    def _start(self, job: ClaimedJob) -> None:
        stop = Stop()
        with self.lock:
            self.running[job.id] = job
            self.stops[job.id] = stop
        self.pool.submit(self._execute, job, stop)

    def _execute(self, job: ClaimedJob, stop: Stop) -> None:
        try:
            # This thread's connections may have idled past CONN_MAX_AGE,
            # or the server's own timeout, since its last job.
            close_old_connections()
            attempts.run(job, self.id, lambda: self._ending(job), stop)
        except Exception:
            logger.exception(
                "attempt crashed job_id=%s job=%s attempt=%s worker=%s",
                job.id,
                job.name,
                job.attempt,
                self.id,
            )
        finally:
            with self.lock:
                # A stale attempt must not drop a newer one of the same job.
                if self.running.get(job.id) is job:
                    del self.running[job.id]
                    del self.stops[job.id]
                self.ending.discard(job.id)
                self.jobs_done += 1
            self.wake.set()
            _close_broken_connections()

    def _back_off(
        self, step: str, exc: Exception, failures: int, until: threading.Event
    ) -> None:
        delay = reconnect_delay(failures)
        logger.warning(
            "database error, retrying step=%s worker=%s error=%s delay_s=%.1f",
            step,
            self.id,
            type(exc).__name__,
            delay,
        )
        _drop_connection()
        until.wait(delay)

    def _maintain(self) -> None:
        """Renew leases and recover lost jobs until no job runs here.

        Runs on through the grace period after a stop: jobs still finishing
        must keep their leases, or another worker would run them again. So
        no error ends it, and a failing recovery never delays a heartbeat.
        """
        heartbeat = float(settings.HEARTBEAT_SECONDS)
        if self.options.lease_seconds:
            heartbeat = min(heartbeat, self.options.lease_seconds / 3)
        recovery = float(settings.RECOVERY_SECONDS)
        next_recovery = next_prune = 0.0
        failures = 0
        wait = 0.0
        while not self.drained.wait(wait):
            healthy = self._maintenance_step("heartbeat", self._heartbeat)
            if time.monotonic() >= next_recovery:
                healthy = self._maintenance_step("recovery", self._recover) and healthy
                next_recovery = time.monotonic() + recovery
            if time.monotonic() >= next_prune:
                self._start_pruner()
                next_prune = time.monotonic() + PRUNE_SECONDS
            # Enqueues due ticks on a thread of its own, so never waits here.
            self.schedules.poke()

            failures = 0 if healthy else failures + 1
            wait = min(heartbeat, recovery)
            if failures:
                wait = min(reconnect_delay(failures), heartbeat)

    def _maintenance_step(self, step: str, run: Callable[[], None]) -> bool:
        try:
            run()
            return True
        except Error as exc:
            logger.warning(
                "database error, retrying step=%s worker=%s error=%s",
                step,
                self.id,
                type(exc).__name__,
            )
            _drop_connection()
        except Exception:
            logger.exception("maintenance failed step=%s worker=%s", step, self.id)
        finally:
            _close_broken_connections()
        return False

    def _ending(self, job: ClaimedJob) -> None:
        with self.lock:
            self.ending.add(job.id)

    def _heartbeat(self) -> None:
        with self.lock:
            held = list(self.running)
        lost = leases.renew(self.id, held, self.options.lease_seconds)

        with self.lock:
            lost = {job_id for job_id in lost if job_id in self.running}
            lost -= self.ending
        for job_id in lost:
            logger.warning("lease lost job_id=%s worker=%s", job_id, self.id)
        self._pass_on_cancellations(held)
        WorkerRecord.objects.using(database.alias()).filter(pk=self.id).update(
            last_heartbeat_at=database.now()
        )

    def _pass_on_cancellations(self, held: list[int]) -> None:
        """Set the stop flag of each held job someone asked to stop."""
        asked = cancellation.requested_among(self.id, held)
        with self.lock:
            stops = {job_id: self.stops.get(job_id) for job_id in asked}
        for job_id, stop in stops.items():
            if stop is not None and stop.cancel():
                logger.info("job asked to stop job_id=%s worker=%s", job_id, self.id)

    def _recover(self) -> None:
        recovered = leases.recover_expired()
        if recovered:
            self.wake.set()

        # An action may take minutes; heartbeats must not wait for it.
        if self.orphans is None or not self.orphans.is_alive():
            self.orphans = threading.Thread(
                target=_run_orphaned_actions, name="klerk-orphans", daemon=True
            )
            self.orphans.start()

    def _start_pruner(self) -> None:
        # A large backlog takes long to delete; heartbeats must not wait.
        if settings.RETENTION_DAYS is None:
            return
        if self.pruner is None or not self.pruner.is_alive():
            self.pruner = threading.Thread(
                target=_prune_old, name="klerk-retention", daemon=True
            )
            self.pruner.start()

    def _register(self) -> None:
        failures = 0
        while True:
            try:
                WorkerRecord.objects.using(database.alias()).create(
                    id=self.id,
                    name=self.name[:200],
                    hostname=socket.gethostname()[:255],
                    pid=os.getpid(),
                    queues=list(self.options.queues),
                    concurrency=self.options.concurrency,
                )
                break
            except Error as exc:
                failures += 1
                self._back_off("register", exc, failures, self.stopping)
                if self.stopping.is_set():
                    return
        logger.info(
            "worker started worker=%s name=%s queues=%s concurrency=%s",
            self.id,
            self.name,
            ",".join(self.options.queues) or "*",
            self.options.concurrency,
        )

    def _drain(self) -> int:
        """Wait for running jobs; interrupt those still running at the end."""
        deadline = time.monotonic() + self.options.grace_seconds
        while self.running and time.monotonic() < deadline and not self.forced.is_set():
            self.wake.wait(0.1)
            self.wake.clear()

        with self.lock:
            left = list(self.running)
            stops = [self.stops[job_id] for job_id in left]
        if left:
            # A job process must be dead before its job is ready again, or
            # another worker could run the job while it still runs here.
            for stop in stops:
                stop.hand_back()
            job_processes.end_all(at_once=self.forced.is_set())
            try:
                leases.interrupt(self.id, left, "the worker stopped before it ended")
            except Error:
                logger.exception("jobs not released worker=%s", self.id)
        self.pool.shutdown(wait=False, cancel_futures=True)
        return len(left)

    def _unregister(self) -> None:
        try:
            WorkerRecord.objects.using(database.alias()).filter(pk=self.id).update(
                stopped_at=database.now()
            )
        except Error:
            logger.warning("worker stop not recorded worker=%s", self.id)
        logger.info("worker stopped worker=%s jobs=%s", self.id, self.jobs_done)
        actions.wait_for_actions()


# A worker should be back within a few seconds of its database; a retry
# every few seconds costs a server nothing.
RECONNECT_MAX_SECONDS = 5.0


def reconnect_delay(failures: int) -> float:
    """Return the wait after ``failures`` database errors in a row."""
    return min(0.5 * 2 ** min(max(failures, 1) - 1, 10), RECONNECT_MAX_SECONDS)


# Workers delete old finished jobs and actions this often, when
# KLERK_RETENTION_DAYS is not None.
PRUNE_SECONDS = 3600.0


def _prune_old() -> None:
    try:
        days = retention.retention_days()
        if days is not None:
            retention.prune(days)
    except Exception:
        logger.exception("old jobs and actions not pruned")
    finally:
        _close_broken_connections()


def _run_orphaned_actions() -> None:
    try:
        actions.run_orphans()
    except Exception:
        logger.exception("orphaned actions not run")
    finally:
        _close_broken_connections()


def _drop_connection() -> None:
    """Close the jobs' connection after an error; a broken one may raise."""
    try:
        database.connection().close()
    except Error:
        logger.debug("broken connection not closed cleanly", exc_info=True)


def _close_broken_connections() -> None:
    """Close this thread's unusable or expired connections, quietly."""
    try:
        close_old_connections()
    except Error:
        logger.debug("broken connection not closed cleanly", exc_info=True)


def queues_from(values: Sequence[str]) -> tuple[str, ...]:
    """Split repeated or comma-separated queue options into names."""
    names: list[str] = []
    for value in values:
        names.extend(part.strip() for part in value.split(",") if part.strip())
    return tuple(dict.fromkeys(names))
