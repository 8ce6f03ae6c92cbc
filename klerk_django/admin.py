"""Admin pages for jobs, attempts, actions, command records and workers.

Every page is read-only: jobs change state only through the service layer
(``retry_jobs`` and ``cancel_jobs``), which the admin offers as actions and
as buttons on a job's page, each behind its own permission. Bulk actions,
delete included, work from the changelist's queryset in keyset batches, so
"select all" across thousands of rows never posts one field per row.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import model_ngettext, quote, unquote
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.db.models import QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from .conf import settings
from .jobs import cancel_jobs, retry_jobs
from .models import Action, Attempt, CommandRecord, Job, JobStatus, Worker

logger = logging.getLogger(__name__)

DELETE_BATCH_SIZE = 1000
LINKS_SHOWN = 20

BADGE_COLOURS = {
    "pending": "#79aec8",
    "ready": "#417690",
    "running": "#b8860b",
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "rejected": "#b8860b",
    "cancelled": "#6b6b6b",
    "interrupted": "#6b6b6b",
}


def badge(value: str) -> str:
    """Return ``value`` as a small coloured label."""
    colour = BADGE_COLOURS.get(value, "#6b6b6b")
    return format_html(
        '<span style="background:{};color:#fff;border-radius:3px;'
        'padding:1px 6px;font-size:11px">{}</span>',
        colour,
        value,
    )


def pretty_json(value: Any) -> str | None:
    """Return ``value`` as indented JSON in a ``<pre>`` block."""
    if value is None:
        return None
    text = json.dumps(
        value, indent=2, sort_keys=True, ensure_ascii=False, cls=DjangoJSONEncoder
    )
    return format_html("<pre>{}</pre>", text)


def preformatted(text: str) -> str | None:
    """Return ``text`` in a ``<pre>`` block; None (shown as "-") if empty."""
    if not text:
        return None
    return format_html("<pre>{}</pre>", text)


def admin_url(model: type[models.Model], view: str, *args: Any) -> str:
    """Return the URL of ``view`` ("change", "changelist") for ``model``."""
    opts = model._meta
    name = f"admin:{opts.app_label}_{opts.model_name}_{view}"
    return reverse(name, args=[quote(arg) for arg in args])


class LeanChangeList(ChangeList):
    """A changelist that leaves out the large columns no list shows."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None):
        queryset = super().get_queryset(request, exclude_parameters)
        return queryset.defer(*self.model_admin.list_defer)


class KlerkAdmin(admin.ModelAdmin):
    """A read-only admin whose bulk delete runs in batches."""

    actions = ["delete_selected"]
    list_defer: tuple[str, ...] = ()
    id_search_field = "pk"
    show_full_result_count = False
    batch_delete_template = "admin/klerk_django/batch_delete_confirmation.html"

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
        field = self.opts.pk if name == "pk" else self.opts.get_field(name)
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

        deleted = self._delete_in_batches(request, queryset)

        self.message_user(
            request,
            f"Deleted {deleted} {model_ngettext(self.opts, deleted)}.",
            messages.SUCCESS,
        )
        return None

    def _delete_in_batches(self, request: HttpRequest, queryset: QuerySet) -> int:
        # Keyset pages keep memory flat and each transaction short; the
        # rows deleted are those of the list, at the time of the request.
        db, model = queryset.db, queryset.model
        deleted, page = 0, queryset.order_by("pk")
        while True:
            batch = list(page.values_list("pk", flat=True)[:DELETE_BATCH_SIZE])
            if not batch:
                return deleted
            page = queryset.filter(pk__gt=batch[-1]).order_by("pk")
            with transaction.atomic(using=db):
                chunk = model._base_manager.using(db).filter(pk__in=batch)
                self.log_deletions(request, chunk)
                self.delete_queryset(request, chunk)
            deleted += len(batch)

    def _lacking_delete_permissions(
        self, request: HttpRequest, queryset: QuerySet
    ) -> list[str]:
        lacking = []
        for relation in self.opts.related_objects:
            related = relation.related_model
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
                name = relation.related_model._meta.verbose_name_plural
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


def _dependants(relation: Any, queryset: QuerySet) -> QuerySet:
    manager = relation.related_model._base_manager.using(queryset.db)
    return manager.filter(**{f"{relation.field.name}__in": queryset.values("pk")})


class AttemptInline(admin.TabularInline):
    """The attempts of one job, oldest first, read-only."""

    model = Attempt
    fields = [
        "number",
        "worker",
        "started_at",
        "finished_at",
        "outcome",
        "error",
        "traceback_text",
    ]
    readonly_fields = fields
    ordering = ["number"]
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="worker")
    def worker(self, attempt: Attempt) -> str | None:
        return worker_link(attempt.worker_id)

    @admin.display(description="traceback")
    def traceback_text(self, attempt: Attempt) -> str | None:
        return preformatted(attempt.traceback)


def worker_link(worker_id: Any) -> str | None:
    """Return a link to the worker page of ``worker_id``."""
    if worker_id is None:
        return None
    url = admin_url(Worker, "change", worker_id)
    return format_html('<a href="{}">{}</a>', url, worker_id)


def command_link(obj: Job | Action) -> str | None:
    """Return a link to the command record that created ``obj``."""
    if obj.command_id is None:
        return None
    record = CommandRecord.objects.filter(pk=obj.command_id).first()
    label = str(record) if record else f"{obj.command_id} (deleted)"
    return format_html(
        '<a href="{}">{}</a>', admin_url(CommandRecord, "change", obj.command_id), label
    )


JobOperation = Callable[[QuerySet[Job]], int]

OPERATIONS: dict[str, tuple[str, str]] = {
    # operation: (past tense, why a job is skipped)
    "retry": ("Retried", "only failed or cancelled jobs can be retried"),
    "cancel": ("Cancelled", "only ready jobs can be cancelled"),
}


@admin.register(Job)
class JobAdmin(KlerkAdmin):
    """Jobs, read-only, with retry and cancel behind their permissions."""

    list_display = [
        "id",
        "name",
        "queue",
        "status_badge",
        "priority",
        "attempts_used",
        "run_after",
        "created_at",
        "finished_at",
    ]
    list_display_links = ["id", "name"]
    list_filter = ["status", "queue", "name", "created_at"]
    list_select_related = False
    list_defer = ("arguments", "result", "last_error")
    search_fields = ["name"]
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
                    "command_record",
                ]
            },
        ),
        ("Times", {"fields": ["created_at", "run_after", "started_at", "finished_at"]}),
        ("Lease", {"fields": ["worker", "lease_expires_at"]}),
        (
            "Arguments and outcome",
            {"fields": ["arguments_json", "result_json", "last_error_text"]},
        ),
        ("Backoff", {"fields": ["backoff_base_seconds", "backoff_max_seconds"]}),
    ]
    readonly_fields = [
        "id",
        "status_badge",
        "attempts_used",
        "command_record",
        "worker",
        "arguments_json",
        "result_json",
        "last_error_text",
    ]

    @admin.display(description="status", ordering="status")
    def status_badge(self, job: Job) -> str:
        return badge(job.status)

    @admin.display(description="attempts", ordering="attempts")
    def attempts_used(self, job: Job) -> str:
        return f"{job.attempts}/{job.max_attempts}"

    @admin.display(description="command")
    def command_record(self, job: Job) -> str | None:
        return command_link(job)

    @admin.display(description="worker")
    def worker(self, job: Job) -> str | None:
        return worker_link(job.worker_id)

    @admin.display(description="arguments")
    def arguments_json(self, job: Job) -> str | None:
        return pretty_json(job.arguments)

    @admin.display(description="result")
    def result_json(self, job: Job) -> str | None:
        return pretty_json(job.result)

    @admin.display(description="last error")
    def last_error_text(self, job: Job) -> str | None:
        return preformatted(job.last_error)

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return self._has_permission(request, "retry")

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return self._has_permission(request, "cancel")

    def _has_permission(self, request: HttpRequest, operation: str) -> bool:
        codename = get_permission_codename(operation, self.opts)
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")

    @admin.action(permissions=["retry"], description="Retry selected jobs")
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        self._run(request, queryset, "retry", retry_jobs)

    @admin.action(permissions=["cancel"], description="Cancel selected jobs")
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        self._run(request, queryset, "cancel", cancel_jobs)

    def _run(
        self,
        request: HttpRequest,
        queryset: QuerySet[Job],
        operation: str,
        function: JobOperation,
    ) -> None:
        selected = queryset.count()
        changed = function(queryset)

        skipped = max(selected - changed, 0)
        logger.info(
            "jobs %s from the admin count=%s skipped=%s user=%s",
            OPERATIONS[operation][0].lower(),
            changed,
            skipped,
            request.user.pk,
        )
        self._report(request, operation, changed, skipped)

    def _report(
        self, request: HttpRequest, operation: str, changed: int, skipped: int
    ) -> None:
        done, reason = OPERATIONS[operation]
        text = f"{done} {changed} {model_ngettext(self.opts, changed)}."
        if skipped:
            text += f" Skipped {skipped}: {reason}."
        level = messages.WARNING if skipped else messages.SUCCESS
        self.message_user(request, text, level)

    def get_urls(self) -> list[Any]:
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        wrap = self.admin_site.admin_view
        # Before the defaults: their catch-all would take these paths.
        return [
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
            *super().get_urls(),
        ]

    def retry_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Retry one job; POST only, with the retry permission."""
        return self._operation_view(request, object_id, "retry", retry_jobs)

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Cancel one job; POST only, with the cancel permission."""
        return self._operation_view(request, object_id, "cancel", cancel_jobs)

    def _operation_view(
        self,
        request: HttpRequest,
        object_id: str,
        operation: str,
        function: JobOperation,
    ) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self._may(request, operation):
            raise PermissionDenied
        job = self.get_object(request, unquote(object_id))
        if job is None:
            raise Http404(f"No job with id {object_id!r}.")

        changed = function(Job.objects.filter(pk=job.pk))

        logger.info(
            "job %s from the admin job_id=%s changed=%s user=%s",
            OPERATIONS[operation][0].lower(),
            job.pk,
            changed,
            request.user.pk,
        )
        self._report(request, operation, changed, 1 - changed)
        return HttpResponseRedirect(admin_url(Job, "change", job.pk))

    def _may(self, request: HttpRequest, operation: str) -> bool:
        return self.has_view_or_change_permission(request) and self._has_permission(
            request, operation
        )

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
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _operations_for(self, request: HttpRequest, job: Job) -> list[tuple[str, str]]:
        possible = {
            "retry": job.status in (JobStatus.FAILED, JobStatus.CANCELLED),
            "cancel": job.status == JobStatus.READY,
        }
        return [
            (admin_url(Job, operation, job.pk), operation.capitalize())
            for operation, allowed in possible.items()
            if allowed and self._may(request, operation)
        ]


@admin.register(Attempt)
class AttemptAdmin(KlerkAdmin):
    """Attempts of every job, read-only."""

    list_display = [
        "id",
        "job_link",
        "number",
        "outcome_badge",
        "worker_id",
        "started_at",
        "finished_at",
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
        "error_text",
        "traceback_text",
    ]
    readonly_fields = fields

    @admin.display(description="job", ordering="job_id")
    def job_link(self, attempt: Attempt) -> str:
        url = admin_url(Job, "change", attempt.job_id)
        return format_html('<a href="{}">{}</a>', url, attempt.job)

    @admin.display(description="outcome", ordering="outcome")
    def outcome_badge(self, attempt: Attempt) -> str:
        return badge(attempt.outcome)

    @admin.display(description="worker")
    def worker(self, attempt: Attempt) -> str | None:
        return worker_link(attempt.worker_id)

    @admin.display(description="error")
    def short_error(self, attempt: Attempt) -> str:
        return attempt.error[:120]

    @admin.display(description="error")
    def error_text(self, attempt: Attempt) -> str | None:
        return preformatted(attempt.error)

    @admin.display(description="traceback")
    def traceback_text(self, attempt: Attempt) -> str | None:
        return preformatted(attempt.traceback)


@admin.register(Action)
class ActionAdmin(KlerkAdmin):
    """Actions and how their runs ended, read-only."""

    list_display = [
        "id",
        "name",
        "status_badge",
        "created_at",
        "started_at",
        "finished_at",
        "short_error",
    ]
    list_display_links = ["id", "name"]
    list_filter = ["status", "name", "created_at"]
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
    readonly_fields = fields

    @admin.display(description="status", ordering="status")
    def status_badge(self, action: Action) -> str:
        return badge(action.status)

    @admin.display(description="command")
    def command_record(self, action: Action) -> str | None:
        return command_link(action)

    @admin.display(description="error")
    def short_error(self, action: Action) -> str:
        return action.error[:120]

    @admin.display(description="arguments")
    def arguments_json(self, action: Action) -> str | None:
        return pretty_json(action.arguments)

    @admin.display(description="error")
    def error_text(self, action: Action) -> str | None:
        return preformatted(action.error)

    @admin.display(description="traceback")
    def traceback_text(self, action: Action) -> str | None:
        return preformatted(action.traceback)


@admin.register(CommandRecord)
class CommandRecordAdmin(KlerkAdmin):
    """Command records with what each command created."""

    list_display = ["name", "outcome_badge", "actor", "created_at", "duration"]
    list_filter = ["outcome", "name", "created_at"]
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
    readonly_fields = fields

    @admin.display(description="outcome", ordering="outcome")
    def outcome_badge(self, record: CommandRecord) -> str:
        return badge(record.outcome)

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, record: CommandRecord) -> str:
        return f"{record.duration_ms:.1f} ms"

    @admin.display(description="inputs")
    def inputs_json(self, record: CommandRecord) -> str | None:
        return pretty_json(record.inputs)

    @admin.display(description="problems")
    def problems_json(self, record: CommandRecord) -> str | None:
        return pretty_json(record.problems)

    @admin.display(description="result")
    def result_json(self, record: CommandRecord) -> str | None:
        return pretty_json(record.result)

    @admin.display(description="error")
    def error_text(self, record: CommandRecord) -> str | None:
        return preformatted(record.error)

    @admin.display(description="jobs")
    def created_jobs(self, record: CommandRecord) -> str | None:
        return created_links(record, Job, record.jobs.only("name", "status"))

    @admin.display(description="actions")
    def created_actions(self, record: CommandRecord) -> str | None:
        return created_links(record, Action, record.actions.only("name", "status"))


def created_links(
    record: CommandRecord, model: type[models.Model], queryset: QuerySet
) -> str | None:
    """Link the first rows a command created, and the list of all of them."""
    total = queryset.count()
    if not total:
        return None
    shown = queryset.order_by("pk")[:LINKS_SHOWN]
    links = format_html_join(
        ", ",
        '<a href="{}">{}</a>',
        ((admin_url(model, "change", obj.pk), obj) for obj in shown),
    )
    query = urlencode({"command__id__exact": record.pk})
    everything = f"{admin_url(model, 'changelist')}?{query}"
    plural = model._meta.verbose_name if total == 1 else model._meta.verbose_name_plural
    return format_html(
        '{}<br><a href="{}">all {} {}</a>', links, everything, total, plural
    )


@admin.register(Worker)
class WorkerAdmin(KlerkAdmin):
    """Worker processes, and whether each is still alive."""

    list_display = [
        "name",
        "hostname",
        "pid",
        "queue_names",
        "concurrency",
        "started_at",
        "last_heartbeat_at",
        "stopped_at",
        "alive",
    ]
    list_filter = ["hostname", "started_at"]
    search_fields = ["name", "hostname"]
    fields = [
        "id",
        "name",
        "hostname",
        "pid",
        "queue_names",
        "concurrency",
        "started_at",
        "last_heartbeat_at",
        "stopped_at",
        "alive",
    ]
    readonly_fields = fields

    @admin.display(description="queues")
    def queue_names(self, worker: Worker) -> str:
        return ", ".join(str(queue) for queue in worker.queues) or "all"

    @admin.display(description="alive", boolean=True)
    def alive(self, worker: Worker) -> bool:
        return is_alive(worker)


def is_alive(worker: Worker) -> bool:
    """Tell whether ``worker`` runs: not stopped, with a recent heartbeat."""
    if worker.stopped_at is not None:
        return False
    window = timedelta(seconds=3 * settings.HEARTBEAT_SECONDS)
    return worker.last_heartbeat_at >= timezone.now() - window
