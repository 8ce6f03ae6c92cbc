from django.apps import AppConfig


class TestAppConfig(AppConfig):
    name = "tests.testapp"
    label = "testapp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registered here, since autodiscovery only imports "jobs" modules.
        from . import more_jobs  # noqa: F401
