from __future__ import annotations

import os
from importlib.util import find_spec

from django.apps import AppConfig


class KlerkConfig(AppConfig):
    name = "klerk_django"
    label = "klerk_django"
    verbose_name = "Klerk"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules

        from . import builtin_jobs, checks  # noqa: F401  (they register)
        from .conf import settings

        # The chaos job is test machinery, not shown in a project's admin:
        # only the chaos run (which imports it) and the workers it starts,
        # marked by their chaos folder, register it.
        if os.environ.get("KLERK_CHAOS_DIR"):
            from . import chaos  # noqa: F401

        # Job, action and command names are resolved through registries, so
        # every process must import the modules that register them.
        autodiscover_modules(*settings.AUTODISCOVER_MODULES)

        # Django's task functions are registered the same way when a
        # Klerk tasks backend is configured (Django 6.0 or newer).
        if find_spec("django.tasks") is not None:
            from .tasks_backend import discover_tasks

            discover_tasks()
