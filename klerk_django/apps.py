from __future__ import annotations

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

        # Job, action and command names are resolved through registries, so
        # every process must import the modules that register them.
        autodiscover_modules(*settings.AUTODISCOVER_MODULES)
