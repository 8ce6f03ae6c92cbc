"""Admin pages that run registered commands: a form, a preview and a run.

The pages live under the command records' admin (``urls`` gives its
patterns), so the admin site's login, staff and CSRF checks come first.
Then, on every request, the command's own gate: a staff user may use a
command here when they hold every permission it declares; a command that
declares none is offered to superusers only.

- GET shows the list of commands, or one command's form. It never runs
  anything.
- POST with ``_preview`` runs the command as a dry run; with ``_run`` it
  runs it for real, with an idempotency token carried by the form, so that
  a resubmitted form answers with the first outcome instead of running
  twice. Both run as the signed-in user, through ``handle``, so the
  command's full authorization applies as well.
- A POST from a user the gate refuses gets 403 and leaves a rejected
  command record (code "forbidden"); the command does not run.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.views.decorators.http import require_safe

from . import authorization, display
from .admin_pages import admin_url
from .commands import (
    Command,
    CommandResult,
    get_command,
    handle,
    record_denied,
    registry,
)
from .exceptions import UnknownCommand
from .models import Action, CommandRecord, Job

logger = logging.getLogger(__name__)

TOKEN_FIELD = "_token"
TOKEN_FORMAT = re.compile(r"^[0-9a-f]{32}\Z")
LIST_TEMPLATE = "admin/klerk_django/command/list.html"
RUN_TEMPLATE = "admin/klerk_django/command/run.html"


def urls(model_admin: admin.ModelAdmin) -> list[URLPattern]:
    """Return the URL patterns of the command pages, for ``get_urls``."""
    pages = CommandPages(model_admin)
    wrap = model_admin.admin_site.admin_view
    prefix = f"{model_admin.opts.app_label}_{model_admin.opts.model_name}"
    return [
        path(
            "commands/",
            wrap(require_safe(pages.list_view)),
            name=f"{prefix}_commands",
        ),
        path(
            "commands/<path:object_id>/",
            wrap(pages.run_view),
            name=f"{prefix}_run",
        ),
    ]


def may_use(user: Any, command_class: type[Command]) -> bool:
    """Return whether ``user`` may use ``command_class`` in the admin."""
    if not (user.is_active and user.is_staff):
        return False
    needed = authorization.permissions_of(command_class)
    if not needed:
        return bool(user.is_superuser)
    return bool(user.has_perms(needed))


class CommandPages:
    """The views of the command pages, bound to the record admin."""

    def __init__(self, model_admin: admin.ModelAdmin) -> None:
        self.model_admin = model_admin

    def list_view(self, request: HttpRequest) -> HttpResponse:
        """List the commands this user may run here."""
        usable = [
            command_class
            for command_class in map(get_command, registry.names())
            if may_use(request.user, command_class)
        ]
        if not usable:
            raise PermissionDenied
        rows = [
            {
                "name": command_class.name,
                "summary": _summary(command_class),
                "url": admin_url(CommandRecord, "run", command_class.name),
            }
            for command_class in usable
        ]
        return self._render(request, LIST_TEMPLATE, {"title": "Commands", "rows": rows})

    def run_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Show a command's form; preview or run it on POST."""
        command_class = _command_class(unquote(object_id))
        if request.method not in ("GET", "HEAD", "POST"):
            return HttpResponseNotAllowed(["GET", "HEAD", "POST"])
        if request.method != "POST":
            if not may_use(request.user, command_class):
                raise PermissionDenied
            return self._form_page(request, command_class, {}, None)

        values = _values(request, command_class)
        command = command_class(**values)
        if not may_use(request.user, command_class):
            record_denied(command, actor=request.user)
            logger.warning(
                "command refused in the admin command=%s user=%s",
                command_class.name,
                request.user.pk,
            )
            raise PermissionDenied

        result = self._submit(request, command)
        if result is None:
            return HttpResponse("Choose preview or run.", status=400)
        return self._form_page(request, command_class, values, result)

    def _submit(self, request: HttpRequest, command: Command) -> CommandResult | None:
        if "_preview" in request.POST:
            return handle(command, actor=request.user, dry_run=True)
        if "_run" not in request.POST:
            return None
        token = request.POST.get(TOKEN_FIELD, "")
        if not TOKEN_FORMAT.match(token):
            token = uuid.uuid4().hex
        scoped = f"admin:{request.user.pk}:{token}"
        return handle(command, actor=request.user, token=scoped)

    def _form_page(
        self,
        request: HttpRequest,
        command_class: type[Command],
        values: dict[str, Any],
        result: CommandResult | None,
    ) -> HttpResponse:
        ran = result is not None and not result.dry_run
        context = {
            "title": f"Run {command_class.name}",
            "command_name": command_class.name,
            "summary": _summary(command_class),
            "form": command_class.Inputs(initial=values, auto_id="id_%s"),
            # A run starts a new request; a preview keeps the one it shows.
            "token": uuid.uuid4().hex if ran or result is None else _kept(request),
            "token_field": TOKEN_FIELD,
            "result": _shown(result) if result is not None else None,
            "list_url": admin_url(CommandRecord, "commands"),
        }
        forbidden = result is not None and result.stage == "authorization"
        response = self._render(request, RUN_TEMPLATE, context)
        if forbidden:
            response.status_code = 403
        return response

    def _render(
        self, request: HttpRequest, template: str, context: dict[str, Any]
    ) -> TemplateResponse:
        opts = self.model_admin.opts
        request.current_app = self.model_admin.admin_site.name
        context = {
            **self.model_admin.admin_site.each_context(request),
            "opts": opts,
            "app_label": opts.app_label,
            "media": self.model_admin.media,
            **context,
        }
        return TemplateResponse(request, template, context)


def _command_class(name: str) -> type[Command]:
    try:
        return get_command(name)
    except UnknownCommand:
        raise Http404(f"No command is registered under the name {name!r}.") from None


def _summary(command_class: type[Command]) -> str:
    lines = (command_class.__doc__ or "").strip().splitlines()
    return lines[0] if lines else ""


def _values(request: HttpRequest, command_class: type[Command]) -> dict[str, Any]:
    """Return the posted values of the command's declared inputs only."""
    values: dict[str, Any] = {}
    for name, form_field in command_class.Inputs.base_fields.items():
        if name not in request.POST:
            continue
        if isinstance(form_field, forms.MultipleChoiceField):
            values[name] = request.POST.getlist(name)
        else:
            values[name] = request.POST.get(name)
    return values


def _kept(request: HttpRequest) -> str:
    token = request.POST.get(TOKEN_FIELD, "")
    return token if TOKEN_FORMAT.match(token) else uuid.uuid4().hex


def _shown(result: CommandResult) -> dict[str, Any]:
    """Return what the page shows of a result: links only for stored rows."""
    stored = not result.dry_run
    return {
        "outcome": result.outcome,
        "ok": result.ok,
        "dry_run": result.dry_run,
        "repeated": result.repeated,
        "value": display.pretty_json(result.value),
        "problems": result.problems,
        "jobs": [_job_row(job, stored) for job in result.jobs],
        "actions": [_action_row(action, stored) for action in result.actions],
        "record_url": (
            admin_url(CommandRecord, "change", result.record_id)
            if result.record_id
            else None
        ),
    }


def _job_row(job: Job, stored: bool) -> dict[str, Any]:
    return {
        "label": job.name,
        "url": admin_url(Job, "change", job.pk) if stored and job.pk else None,
        "detail": f"queue {job.queue}, priority {job.priority}",
        "when": job.run_after,
        "arguments": display.pretty_json(job.arguments),
    }


def _action_row(action: Action, stored: bool) -> dict[str, Any]:
    return {
        "label": action.name,
        "url": admin_url(Action, "change", action.pk) if stored and action.pk else None,
        "detail": "after the commit",
        "when": None,
        "arguments": display.pretty_json(action.arguments),
    }
