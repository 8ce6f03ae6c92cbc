"""Admin pages for jobs, attempts, actions, command records and workers.

Rows are never edited: jobs change state only through the service layer
(``retry_jobs``, ``cancellation.cancel`` behind ``cancel_jobs``, and
``enqueue``), which the admin offers as actions and as buttons on a job's
page, each behind its permission and each checked again on the server.
Bulk actions, delete included, work from the changelist's queryset in
keyset chunks, so "select all" across thousands of rows never posts one
field per row. Besides the lists, the job admin serves an overview and a
queues page (see ``get_urls``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import model_ngettext, unquote
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_permission_codename
from django.core.exceptions import (
    ImproperlyConfigured,
    PermissionDenied,
    ValidationError,
)
from django.db import DatabaseError, models, transaction
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.views.decorators.http import require_safe

from . import admin_pages, arguments, cancellation, database, display, queues, stats
from .admin_lists import (
    AliveFilter,
    CreatedFilter,
    JobNameFilter,
    KnownValuesFilter,
    LargeTablePaginator,
    QueueFilter,
)
from .admin_pages import STATUSES, admin_url, job_list_url
from .display import EMPTY, badge, folded, pretty_json, relative_html
from .exceptions import KlerkError
from .jobs import get_job_function, registry, retry_jobs
from .models import Action, Attempt, CommandRecord, Job, JobStatus, Worker

logger = logging.getLogger(__name__)

# Pausing a queue changes its row in klerk_queue.
QUEUE_PERMISSION = "klerk_django.change_queue"

DELETE_BATCH_SIZE = 1000
OPERATION_CHUNK_SIZE = 1000
LINKS_SHOWN = 20


def worker_link(worker_id: Any, label: Any = None) -> str:
    """Return a link to the worker page of ``worker_id``."""
    if worker_id is None:
        return EMPTY
    url = admin_url(Worker, "change", worker_id)
    return format_html('<a href="{}">{}</a>', url, label or worker_id)


def command_link(obj: Job | Action) -> str:
    """Return a link to the command record that created ``obj``."""
    if obj.command_id is None:
        return EMPTY
    record = CommandRecord.objects.filter(pk=obj.command_id).first()
    label = str(record) if record else f"{obj.command_id} (deleted)"
    return format_html(
        '<a href="{}">{}</a>', admin_url(CommandRecord, "change", obj.command_id), label
    )


class LeanChangeList(ChangeList):
    """A changelist that leaves out the large columns no list shows."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None):
        queryset = super().get_queryset(request, exclude_parameters)
        return queryset.defer(*getattr(self.model_admin, "list_defer", ()))


class KlerkAdmin(admin.ModelAdmin):
    """A read-only admin for big tables whose bulk delete runs in batches."""

    actions = ["delete_selected"]
    list_defer: tuple[str, ...] = ()
    id_search_field = "pk"
    paginator = LargeTablePaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    batch_delete_template = "admin/klerk_django/batch_delete_confirmation.html"

    class Media:
        css = {"all": ["klerk_django/admin/console.css"]}

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: models.Model | None = None
    ) -> bool:
        return False

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return LeanChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        results, may_have_duplicates = super().get_search_results(
            request, queryset, search_term
        )
        value = self._search_id(search_term.strip())
        if value is not None:
            # An id is matched exactly, besides the text fields.
            results |= queryset.filter(**{self.id_search_field: value})
        return results, may_have_duplicates

    def _search_id(self, term: str) -> Any:
        if not term:
            return None
        name = self.id_search_field
        field: Any = self.opts.pk if name == "pk" else self.opts.get_field(name)
        try:
            return field.to_python(term)
        except ValidationError:
            return None

    @admin.action(
        permissions=["delete"], description="Delete selected %(verbose_name_plural)s"
    )
    def delete_selected(
        self, request: HttpRequest, queryset: QuerySet
    ) -> HttpResponse | None:
        lacking = self._lacking_delete_permissions(request, queryset)
        if request.POST.get("post") != "yes":
            return self._confirm_delete(request, queryset, lacking)
        if lacking:
            raise PermissionDenied

        deleted, error = 0, None
        try:
            for batch in keyset_chunks(queryset, DELETE_BATCH_SIZE):
                deleted += self._delete_batch(request, queryset, batch)
        except DatabaseError as exc:
            error = exc
            logger.exception("admin delete stopped deleted=%s", deleted)

        text = f"Deleted {deleted} {model_ngettext(self.opts, deleted)}."
        if error is not None:
            text += f" Stopped by a database error: {error}"
        self.message_user(request, text, messages.ERROR if error else messages.SUCCESS)
        return None

    def _delete_batch(
        self, request: HttpRequest, queryset: QuerySet, batch: list[Any]
    ) -> int:
        # Each batch is its own short transaction; the rows deleted are
        # those of the list at the time of the request.
        db = queryset.db
        with transaction.atomic(using=db):
            chunk = self.model._base_manager.using(db).filter(pk__in=batch)
            self.log_deletions(request, chunk)
            self.delete_queryset(request, chunk)
        return len(batch)

    def _lacking_delete_permissions(
        self, request: HttpRequest, queryset: QuerySet
    ) -> list[str]:
        lacking = []
        for relation in self.opts.related_objects:
            # A reverse relation always names a model class, never "self".
            related = cast(type[models.Model], relation.related_model)
            if relation.on_delete is not models.CASCADE:
                continue
            if not self.admin_site.is_registered(related):
                continue
            if self.admin_site.get_model_admin(related).has_delete_permission(request):
                continue
            if _dependants(relation, queryset).exists():
                lacking.append(str(related._meta.verbose_name_plural))
        return lacking

    def _confirm_delete(
        self, request: HttpRequest, queryset: QuerySet, lacking: list[str]
    ) -> TemplateResponse:
        counts = [(self.opts.verbose_name_plural, queryset.count())]
        for relation in self.opts.related_objects:
            if relation.on_delete is models.CASCADE:
                related = cast(type[models.Model], relation.related_model)
                name = related._meta.verbose_name_plural
                counts.append((name, _dependants(relation, queryset).count()))

        # The confirmation carries the select-across flag and the ticked
        # boxes of one page; it posts to this URL, so the list's filters
        # come along in the query string.
        context = {
            **self.admin_site.each_context(request),
            "title": "Delete selected " + str(self.opts.verbose_name_plural),
            "subtitle": None,
            "opts": self.opts,
            "counts": counts,
            "perms_lacking": lacking,
            "select_across": request.POST.get("select_across", "0"),
            "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.batch_delete_template, context)


def keyset_chunks(queryset: QuerySet, size: int) -> Iterator[list[Any]]:
    """Yield the primary keys of ``queryset`` in ascending chunks of ``size``.

    Each chunk is one query that starts after the last key of the one
    before, so memory stays flat and no chunk is read twice.
    """
    page = queryset.order_by("pk")
    while True:
        chunk = list(page.values_list("pk", flat=True)[:size])
        if not chunk:
            return
        yield chunk
        page = queryset.filter(pk__gt=chunk[-1]).order_by("pk")


def _dependants(relation: Any, queryset: QuerySet) -> QuerySet:
    manager = relation.related_model._base_manager.using(queryset.db)
    return manager.filter(**{f"{relation.field.name}__in": queryset.values("pk")})


class AttemptInline(admin.TabularInline):
    """The attempts of one job, oldest first, read-only."""

    model = Attempt
    fields = [
        "number",
        "outcome_badge",
        "worker",
        "started",
        "duration",
        "error",
        "traceback_text",
    ]
    # Plain names: the type the admin declares for read-only fields.
    readonly_fields = list(map(str, fields))
    ordering = ["number"]
    extra = 0
    can_delete = False
    show_change_link = True

    def get_queryset(self, request: HttpRequest) -> QuerySet[Attempt]:
        # The worker's name comes in the same query, not one per attempt.
        names = Worker.objects.filter(pk=OuterRef("worker_id")).values("name")[:1]
        return super().get_queryset(request).annotate(worker_name=Subquery(names))

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="outcome")
    def outcome_badge(self, attempt: Attempt) -> str:
        return badge(attempt.outcome)

    @admin.display(description="worker")
    def worker(self, attempt: Attempt) -> str:
        label = getattr(attempt, "worker_name", None) or attempt.worker_id
        return worker_link(attempt.worker_id, label)

    @admin.display(description="started")
    def started(self, attempt: Attempt) -> str:
        return relative_html(attempt.started_at)

    @admin.display(description="duration")
    def duration(self, attempt: Attempt) -> str:
        return display.duration(attempt.duration_seconds)

    @admin.display(description="traceback")
    def traceback_text(self, attempt: Attempt) -> str:
        return folded(attempt.traceback, "traceback")


# An operation on a chunk of job ids returns how many jobs it changed, and
# how many of those were running jobs only asked to stop.
JobOperation = Callable[[list[Any]], tuple[int, int]]


def _retry(ids: list[Any]) -> tuple[int, int]:
    return retry_jobs(ids), 0


def _cancel(ids: list[Any]) -> tuple[int, int]:
    done = cancellation.cancel(ids)
    return done.ended + done.asked, done.asked


@dataclass(frozen=True)
class Operation:
    """What the admin may do to a job, and how it talks about it."""

    label: str
    done: str
    statuses: tuple[str, ...]
    skip_reason: str
    permission: str


OPERATIONS = {
    "retry": Operation(
        "Retry now",
        "Retried",
        (JobStatus.FAILED, JobStatus.CANCELLED),
        "only failed or cancelled jobs can be retried",
        "retry",
    ),
    "cancel": Operation(
        "Cancel",
        "Cancelled",
        (JobStatus.READY, JobStatus.RUNNING),
        "only ready or running jobs can be cancelled",
        "cancel",
    ),
    "copy": Operation("Enqueue a copy", "Enqueued", tuple(STATUSES), "", "retry"),
}


class RecordColumns:
    """List columns shared by jobs and actions: when, and which command."""

    @admin.display(description="created", ordering="created_at")
    def created(self, row: Job | Action) -> str:
        return relative_html(row.created_at)

    @admin.display(description="finished", ordering="finished_at")
    def finished(self, row: Job | Action) -> str:
        return relative_html(row.finished_at)

    @admin.display(description="command")
    def command_record(self, row: Job | Action) -> str:
        return command_link(row)


@admin.register(Job)
class JobAdmin(RecordColumns, KlerkAdmin):
    """Jobs, read-only, with retry, cancel and copy behind permissions."""

    list_display = [
        "id",
        "name",
        "queue",
        "status_badge",
        "attempts_used",
        "due",
        "finished",
    ]
    # Priority and creation time are left to the job's page, so the list
    # fits a laptop's window beside the filters; ids follow creation.
    list_display_links = ["id", "name"]
    list_filter = [
        "status",
        ("queue", QueueFilter),
        ("name", JobNameFilter),
        CreatedFilter,
    ]
    list_select_related = False
    list_defer = ("arguments", "result", "last_error")
    search_fields = ["name"]
    search_help_text = "A job id, part of a job name, or a whole unique key."
    actions = ["retry_selected", "cancel_selected", "delete_selected"]
    inlines = [AttemptInline]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "id",
                    "name",
                    "queue",
                    "status_badge",
                    "priority",
                    "attempts_used",
                    "current_attempt",
                    "command_record",
                ]
            },
        ),
        ("Keys", {"fields": ["unique_key", "rate_key", "concurrency_key"]}),
        ("Times", {"fields": ["created_at", "run_after", "started_at", "finished_at"]}),
        ("Lease", {"fields": ["worker", "lease_expires_at"]}),
        (
            "Arguments and outcome",
            {
                "fields": [
                    "arguments_json",
                    "progress_json",
                    "result_json",
                    "last_error_text",
                ]
            },
        ),
        ("Backoff", {"fields": ["backoff_base_seconds", "backoff_max_seconds"]}),
        ("Stopping", {"fields": ["timeout_seconds", "cancel_requested_at"]}),
    ]
    readonly_fields = [
        "id",
        "status_badge",
        "attempts_used",
        "current_attempt",
        "command_record",
        "worker",
        "arguments_json",
        "progress_json",
        "result_json",
        "last_error_text",
    ]
    # Fields of the job page shown only on the jobs they apply to.
    optional_fields = {
        "current_attempt": lambda job: job.status == JobStatus.RUNNING,
        "progress_json": lambda job: job.progress is not None,
        "unique_key": lambda job: bool(job.unique_key),
        "rate_key": lambda job: bool(job.rate_key),
        "concurrency_key": lambda job: bool(job.concurrency_key),
    }

    def get_fieldsets(self, request: HttpRequest, obj: Job | None = None) -> Any:
        fieldsets = []
        for title, options in super().get_fieldsets(request, obj):
            fields = [name for name in options["fields"] if self._shows(name, obj)]
            if fields:
                fieldsets.append((title, {**options, "fields": fields}))
        return fieldsets

    def _shows(self, name: Any, job: Job | None) -> bool:
        applies = self.optional_fields.get(name)
        return job is None or applies is None or applies(job)

    @admin.display(description="status", ordering="status")
    def status_badge(self, job: Job) -> str:
        return badge(job.status)

    @admin.display(description="attempts", ordering="attempts")
    def attempts_used(self, job: Job) -> str:
        return f"{job.attempts}/{job.max_attempts}"

    @admin.display(description="current attempt")
    def current_attempt(self, job: Job) -> str:
        if job.status != JobStatus.RUNNING:
            return EMPTY
        return f"attempt {job.attempts} of {job.max_attempts}, running"

    @admin.display(description="due", ordering="run_after")
    def due(self, job: Job) -> str:
        return relative_html(job.run_after)

    @admin.display(description="worker")
    def worker(self, job: Job) -> str:
        return worker_link(job.worker_id)

    @admin.display(description="arguments")
    def arguments_json(self, job: Job) -> str:
        return pretty_json(job.arguments)

    @admin.display(description="progress")
    def progress_json(self, job: Job) -> str:
        return pretty_json(job.progress)

    @admin.display(description="result")
    def result_json(self, job: Job) -> str:
        return pretty_json(job.result)

    @admin.display(description="last error")
    def last_error_text(self, job: Job) -> str:
        return display.preformatted(job.last_error)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        # "#42" is how jobs are written elsewhere in the admin.
        term = search_term.strip()
        results, may_have_duplicates = super().get_search_results(
            request, queryset, term.lstrip("#")
        )
        if term:
            # A unique key (a schedule tick's, say) is matched exactly, so
            # that a finished job is found too, which active_unique_key
            # no longer holds. unique_key has no index, but the substring
            # match on the name beside it reads the rows anyway: this adds
            # a comparison per row read, not another scan.
            results |= queryset.filter(unique_key=term)
        return results, may_have_duplicates

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return self._has_permission(request, "retry")

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return self._has_permission(request, "cancel")

    def _has_permission(self, request: HttpRequest, operation: str) -> bool:
        codename = get_permission_codename(OPERATIONS[operation].permission, self.opts)
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")

    def _may(self, request: HttpRequest, operation: str) -> bool:
        return self.has_view_or_change_permission(request) and self._has_permission(
            request, operation
        )

    @admin.action(permissions=["retry"], description="Retry selected jobs")
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        self._run(request, queryset, "retry", _retry)

    @admin.action(permissions=["cancel"], description="Cancel selected jobs")
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        self._run(request, queryset, "cancel", _cancel)

    def _run(
        self,
        request: HttpRequest,
        queryset: QuerySet[Job],
        operation: str,
        function: JobOperation,
    ) -> None:
        """Apply ``function`` to the selection in chunks and report on it.

        Each chunk of ids goes through the service layer, which re-checks
        every job's status, so a job that changed meanwhile is skipped. A
        database error stops the run and is reported with what changed.
        """
        changed, asked, before, error = 0, 0, {}, None
        try:
            before = _count_by_status(queryset)
            for chunk in keyset_chunks(queryset, OPERATION_CHUNK_SIZE):
                chunk_changed, chunk_asked = function(chunk)
                changed += chunk_changed
                asked += chunk_asked
        except DatabaseError as exc:
            error = exc
            logger.exception("admin %s stopped changed=%s", operation, changed)

        skipped = max(sum(before.values()) - changed, 0)
        logger.info(
            "jobs %s from the admin count=%s asked_to_stop=%s skipped=%s user=%s",
            OPERATIONS[operation].done.lower(),
            changed,
            asked,
            skipped,
            request.user.pk,
        )
        self._report(request, operation, (changed, asked), before, error)

    def _report(
        self,
        request: HttpRequest,
        operation: str,
        counts: tuple[int, int],
        before: dict[str, int],
        error: Exception | None = None,
    ) -> None:
        chosen = OPERATIONS[operation]
        changed, asked = counts
        texts = [_done_text(chosen.done, changed - asked, asked, self.opts)]
        reasons = _skipped_reasons(before, chosen.statuses, changed)
        if reasons:
            skipped = sum(count for count, _ in reasons)
            listed = ", ".join(f"{count} {label}" for count, label in reasons)
            texts.append(f"Skipped {skipped}: {chosen.skip_reason} ({listed}).")
        text = " ".join(part for part in texts if part)
        if error is not None:
            text += f" Stopped by a database error: {error}"
            self.message_user(request, text, messages.ERROR)
            return
        self.message_user(
            request, text, messages.WARNING if reasons else messages.SUCCESS
        )

    def get_urls(self) -> list[Any]:
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        wrap = self.admin_site.admin_view
        # Before the defaults: their catch-all would take these paths.
        return [
            path(
                "overview/",
                wrap(require_safe(self.overview_view)),
                name=f"{prefix}_overview",
            ),
            path(
                "queues/",
                wrap(require_safe(self.queues_view)),
                name=f"{prefix}_queues",
            ),
            path(
                "queues/pause/",
                wrap(self.pause_queue_view),
                name=f"{prefix}_pause_queue",
            ),
            path(
                "queues/resume/",
                wrap(self.resume_queue_view),
                name=f"{prefix}_resume_queue",
            ),
            path(
                "<path:object_id>/retry/",
                wrap(self.retry_view),
                name=f"{prefix}_retry",
            ),
            path(
                "<path:object_id>/cancel/",
                wrap(self.cancel_view),
                name=f"{prefix}_cancel",
            ),
            path(
                "<path:object_id>/copy/",
                wrap(self.copy_view),
                name=f"{prefix}_copy",
            ),
            *super().get_urls(),
        ]

    def retry_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Retry one job; POST only, with the retry permission."""
        return self._operation_view(request, object_id, "retry", _retry)

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Cancel one job; POST only, with the cancel permission."""
        return self._operation_view(request, object_id, "cancel", _cancel)

    def _operation_view(
        self,
        request: HttpRequest,
        object_id: str,
        operation: str,
        function: JobOperation,
    ) -> HttpResponse:
        job = self._job_to_change(request, object_id, operation)
        if isinstance(job, HttpResponse):
            return job

        changed, asked, error = 0, 0, None
        try:
            changed, asked = function([job.pk])
        except DatabaseError as exc:
            error = exc
            logger.exception("admin %s failed job_id=%s", operation, job.pk)

        logger.info(
            "job %s from the admin job_id=%s changed=%s user=%s",
            OPERATIONS[operation].done.lower(),
            job.pk,
            changed,
            request.user.pk,
        )
        self._report(request, operation, (changed, asked), {job.status: 1}, error)
        return HttpResponseRedirect(admin_url(Job, "change", job.pk))

    def copy_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Enqueue a job like this one; POST only, with retry permission."""
        job = self._job_to_change(request, object_id, "copy")
        if isinstance(job, HttpResponse):
            return job

        try:
            copy = enqueue_copy(job)
        except (KlerkError, ImproperlyConfigured, DatabaseError) as exc:
            logger.warning("admin copy failed job_id=%s error=%s", job.pk, exc)
            text = f"Could not enqueue a copy of job #{job.pk}: {exc}"
            self.message_user(request, text, messages.ERROR)
            return HttpResponseRedirect(admin_url(Job, "change", job.pk))

        logger.info(
            "job copied from the admin job_id=%s copy_id=%s user=%s",
            job.pk,
            copy.pk,
            request.user.pk,
        )
        text = f"Enqueued job #{copy.pk}, a copy of job #{job.pk}."
        self.message_user(request, text, messages.SUCCESS)
        return HttpResponseRedirect(admin_url(Job, "change", copy.pk))

    def _job_to_change(
        self, request: HttpRequest, object_id: str, operation: str
    ) -> Job | HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self._may(request, operation):
            raise PermissionDenied
        job = self.get_object(request, unquote(object_id))
        if job is None:
            raise Http404(f"No job with id {object_id!r}.")
        return job

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Job | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context["job_operations"] = self._operations_for(request, obj)
            context["job_delete_url"] = (
                admin_url(Job, "delete", obj.pk)
                if self.has_delete_permission(request, obj)
                else None
            )
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _operations_for(self, request: HttpRequest, job: Job) -> list[tuple[str, str]]:
        # A copy needs the job function, which this process may not know.
        possible = {
            name: job.status in operation.statuses
            for name, operation in OPERATIONS.items()
        }
        possible["copy"] = possible["copy"] and job.name in registry
        return [
            (admin_url(Job, operation, job.pk), OPERATIONS[operation].label)
            for operation, allowed in possible.items()
            if allowed and self._may(request, operation)
        ]

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        """Show jobs by queue and status, the last hour, lag and workers."""
        self._check_view(request)
        context = admin_pages.overview_context()
        return self._render(request, "admin/klerk_django/overview.html", context)

    def queues_view(self, request: HttpRequest) -> HttpResponse:
        """Show every queue's jobs and switch, with pause and resume."""
        self._check_view(request)
        context = admin_pages.queues_context()
        context["can_switch"] = request.user.has_perm(QUEUE_PERMISSION)
        return self._render(request, "admin/klerk_django/queues.html", context)

    def pause_queue_view(self, request: HttpRequest) -> HttpResponse:
        """Pause a queue for every worker; POST only, with change_queue."""
        return self._switch_queue(request, pause=True)

    def resume_queue_view(self, request: HttpRequest) -> HttpResponse:
        """Resume a paused queue; POST only, with change_queue."""
        return self._switch_queue(request, pause=False)

    def _switch_queue(self, request: HttpRequest, pause: bool) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not request.user.has_perm(QUEUE_PERMISSION):
            raise PermissionDenied
        name = request.POST.get("queue", "")

        try:
            if pause:
                queues.pause_queue(name)
                done = "paused: workers claim none of its jobs"
            else:
                resumed = queues.resume_queue(name)
                done = "resumed" if resumed else "is not paused"
        except KlerkError as error:
            self.message_user(request, str(error), messages.ERROR)
        else:
            self.message_user(request, f"Queue {name!r} {done}.", messages.SUCCESS)

        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        return HttpResponseRedirect(reverse(f"admin:{prefix}_queues"))

    def _check_view(self, request: HttpRequest) -> None:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied

    def _render(
        self, request: HttpRequest, template: str, context: dict[str, Any]
    ) -> TemplateResponse:
        request.current_app = self.admin_site.name
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "media": self.media,
            **context,
        }
        return TemplateResponse(request, template, context)


def enqueue_copy(job: Job) -> Job:
    """Enqueue a new job with the name, arguments and options of ``job``.

    Runs in its own transaction on the jobs' database. Raises UnknownJob if
    no job function of that name is registered in this process.
    """
    function = get_job_function(job.name).using(
        queue=job.queue,
        priority=job.priority,
        max_attempts=job.max_attempts,
        backoff_seconds=job.backoff_base_seconds,
        backoff_max_seconds=job.backoff_max_seconds,
    )
    args, kwargs = arguments.unpack(job.arguments)
    with transaction.atomic(using=database.alias()):
        return function.enqueue(*args, **kwargs)


def _count_by_status(queryset: QuerySet[Job]) -> dict[str, int]:
    rows = queryset.order_by().values("status").annotate(count=Count("pk"))
    return {row["status"]: row["count"] for row in rows}


def _done_text(done: str, finished: int, asked: int, opts: Any) -> str:
    """Say what an operation did; running jobs asked to stop are apart."""
    # A running job asked to stop is not cancelled until its worker sees
    # the request, so it is not counted as done.
    texts = []
    if finished or not asked:
        texts.append(f"{done} {finished} {model_ngettext(opts, finished)}.")
    if asked:
        one = asked == 1
        texts.append(
            f"Asked {asked} running {model_ngettext(opts, asked)} to stop; "
            f"{'it ends' if one else 'they end'} cancelled once "
            f"{'its' if one else 'their'} worker sees the request."
        )
    return " ".join(texts)


def _skipped_reasons(
    before: dict[str, int], eligible: tuple[str, ...], changed: int
) -> list[tuple[int, str]]:
    """Return ``(count, why)`` for the jobs an operation left alone."""
    reasons = [
        (count, str(status))
        for status, count in sorted(before.items())
        if status not in eligible and count
    ]
    # Jobs that were eligible when counted but changed status before their
    # chunk was reached, for instance because a worker picked them up.
    gone = sum(before.get(status, 0) for status in eligible) - changed
    if gone > 0:
        reasons.append((gone, "changed status meanwhile"))
    return reasons


@admin.register(Attempt)
class AttemptAdmin(KlerkAdmin):
    """Attempts of every job, read-only."""

    list_display = [
        "id",
        "job_link",
        "number",
        "outcome_badge",
        "worker_id",
        "started",
        "duration",
        "short_error",
    ]
    list_filter = ["outcome", "started_at"]
    list_select_related = ["job"]
    list_defer = ("traceback", "job__arguments", "job__result", "job__last_error")
    search_fields = ["job__name"]
    id_search_field = "job"
    fields = [
        "job_link",
        "number",
        "outcome_badge",
        "worker",
        "started_at",
        "finished_at",
        "duration",
        "error_text",
        "traceback_text",
    ]
    # Plain names: the type the admin declares for read-only fields.
    readonly_fields = list(map(str, fields))

    @admin.display(description="job", ordering="job_id")
    def job_link(self, attempt: Attempt) -> str:
        url = admin_url(Job, "change", attempt.job_id)
        return format_html('<a href="{}">{}</a>', url, attempt.job)

    @admin.display(description="outcome", ordering="outcome")
    def outcome_badge(self, attempt: Attempt) -> str:
        return badge(attempt.outcome)

    @admin.display(description="worker")
    def worker(self, attempt: Attempt) -> str:
        return worker_link(attempt.worker_id)

    @admin.display(description="started", ordering="started_at")
    def started(self, attempt: Attempt) -> str:
        return relative_html(attempt.started_at)

    @admin.display(description="duration")
    def duration(self, attempt: Attempt) -> str:
        return display.duration(attempt.duration_seconds)

    @admin.display(description="error")
    def short_error(self, attempt: Attempt) -> str:
        return attempt.error[:120]

    @admin.display(description="error")
    def error_text(self, attempt: Attempt) -> str:
        return display.preformatted(attempt.error)

    @admin.display(description="traceback")
    def traceback_text(self, attempt: Attempt) -> str:
        return display.preformatted(attempt.traceback)


@admin.register(Action)
class ActionAdmin(RecordColumns, KlerkAdmin):
    """Actions and how their runs ended, read-only."""

    list_display = [
        "id",
        "name",
        "status_badge",
        "created",
        "finished",
        "short_error",
    ]
    list_display_links = ["id", "name"]
    list_filter = ["status", ("name", KnownValuesFilter), CreatedFilter]
    list_defer = ("arguments", "traceback")
    search_fields = ["name"]
    fields = [
        "id",
        "name",
        "status_badge",
        "command_record",
        "created_at",
        "started_at",
        "finished_at",
        "arguments_json",
        "error_text",
        "traceback_text",
    ]
    # Plain names: the type the admin declares for read-only fields.
    readonly_fields = list(map(str, fields))

    @admin.display(description="status", ordering="status")
    def status_badge(self, action: Action) -> str:
        return badge(action.status)

    @admin.display(description="error")
    def short_error(self, action: Action) -> str:
        return action.error[:120]

    @admin.display(description="arguments")
    def arguments_json(self, action: Action) -> str:
        return pretty_json(action.arguments)

    @admin.display(description="error")
    def error_text(self, action: Action) -> str:
        return display.preformatted(action.error)

    @admin.display(description="traceback")
    def traceback_text(self, action: Action) -> str:
        return display.preformatted(action.traceback)


@admin.register(CommandRecord)
class CommandRecordAdmin(KlerkAdmin):
    """Command records with what each command created."""

    list_display = ["name", "outcome_badge", "actor", "created", "duration"]
    list_filter = ["outcome", ("name", KnownValuesFilter), CreatedFilter]
    list_defer = ("inputs", "problems", "result", "error")
    search_fields = ["name", "actor"]
    fields = [
        "id",
        "name",
        "outcome_badge",
        "actor",
        "created_at",
        "duration",
        "inputs_json",
        "problems_json",
        "result_json",
        "error_text",
        "created_jobs",
        "created_actions",
    ]
    # Plain names: the type the admin declares for read-only fields.
    readonly_fields = list(map(str, fields))

    def get_urls(self) -> list[Any]:
        from .command_admin import urls as command_urls

        # Before the defaults: their catch-all would take these paths.
        return [*command_urls(self), *super().get_urls()]

    @admin.display(description="outcome", ordering="outcome")
    def outcome_badge(self, record: CommandRecord) -> str:
        return badge(record.outcome)

    @admin.display(description="created", ordering="created_at")
    def created(self, record: CommandRecord) -> str:
        return relative_html(record.created_at)

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, record: CommandRecord) -> str:
        return f"{record.duration_ms:.1f} ms"

    @admin.display(description="inputs")
    def inputs_json(self, record: CommandRecord) -> str:
        return pretty_json(record.inputs)

    @admin.display(description="problems")
    def problems_json(self, record: CommandRecord) -> str:
        return pretty_json(record.problems)

    @admin.display(description="result")
    def result_json(self, record: CommandRecord) -> str:
        return pretty_json(record.result)

    @admin.display(description="error")
    def error_text(self, record: CommandRecord) -> str:
        return display.preformatted(record.error)

    @admin.display(description="jobs")
    def created_jobs(self, record: CommandRecord) -> str:
        return created_links(record, Job, record.jobs.only("name", "status"))

    @admin.display(description="actions")
    def created_actions(self, record: CommandRecord) -> str:
        return created_links(record, Action, record.actions.only("name", "status"))


def created_links(
    record: CommandRecord, model: type[models.Model], queryset: QuerySet
) -> str:
    """Link the first rows a command created, and the list of all of them."""
    total = queryset.count()
    if not total:
        return EMPTY
    shown = queryset.order_by("pk")[:LINKS_SHOWN]
    links = format_html_join(
        ", ",
        '<a href="{}">{}</a>',
        ((admin_url(model, "change", obj.pk), obj) for obj in shown),
    )
    query = urlencode({"command__id__exact": str(record.pk)})
    everything = f"{admin_url(model, 'changelist')}?{query}"
    plural = model._meta.verbose_name if total == 1 else model._meta.verbose_name_plural
    return format_html(
        '{}<br><a href="{}">all {} {}</a>', links, everything, total, plural
    )


@admin.register(Worker)
class WorkerAdmin(KlerkAdmin):
    """Worker processes: alive or gone, and the jobs each runs now."""

    # Host and process id, and running jobs of the concurrency, share a
    # column each, as on the overview, and the stop time is left to the
    # worker's page (the alive column and filter tell gone workers), so the
    # list fits a laptop's window beside the filters.
    list_display = [
        "name",
        "alive",
        "host",
        "queue_names",
        "running_of_concurrency",
        "heartbeat",
        "started",
    ]
    list_filter = [AliveFilter, ("hostname", KnownValuesFilter)]
    search_fields = ["name", "hostname"]
    fields = [
        "id",
        "name",
        "alive",
        "hostname",
        "pid",
        "queue_names",
        "concurrency",
        "current_jobs",
        "started_at",
        "last_heartbeat_at",
        "stopped_at",
    ]
    # Plain names: the type the admin declares for read-only fields.
    readonly_fields = list(map(str, fields))

    def get_queryset(self, request: HttpRequest) -> QuerySet[Worker]:
        # Counted in the same query as the rows, not once per worker.
        queryset = super().get_queryset(request)
        return queryset.annotate(running_jobs=stats.running_jobs())

    @admin.display(description="queues")
    def queue_names(self, worker: Worker) -> str:
        return ", ".join(str(queue) for queue in worker.queues) or "all"

    @admin.display(description="alive", boolean=True)
    def alive(self, worker: Worker) -> bool:
        return is_alive(worker)

    @admin.display(description="host", ordering="hostname")
    def host(self, worker: Worker) -> str:
        return f"{worker.hostname}:{worker.pid}"

    @admin.display(description="running", ordering="running_jobs")
    def running_of_concurrency(self, worker: Worker) -> str:
        return format_html("{} of {}", self.current_jobs(worker), worker.concurrency)

    @admin.display(description="current jobs", ordering="running_jobs")
    def current_jobs(self, worker: Worker) -> str:
        url = job_list_url(worker_id=worker.pk, status__exact="running")
        # Annotated by get_queryset, not a model field.
        running = getattr(worker, "running_jobs", 0)
        return format_html('<a href="{}">{}</a>', url, running)

    @admin.display(description="heartbeat", ordering="last_heartbeat_at")
    def heartbeat(self, worker: Worker) -> str:
        return relative_html(worker.last_heartbeat_at)

    @admin.display(description="started", ordering="started_at")
    def started(self, worker: Worker) -> str:
        return relative_html(worker.started_at)


def is_alive(worker: Worker) -> bool:
    """Tell whether ``worker`` runs: not stopped, with a recent heartbeat."""
    if worker.stopped_at is not None:
        return False
    return worker.last_heartbeat_at >= stats.alive_since()


# The schedules' page lives in its own module; importing it registers it.
from . import schedule_admin  # noqa: E402, F401
