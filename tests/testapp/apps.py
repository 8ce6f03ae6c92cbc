from django.apps import AppConfig


class TestAppConfig(AppConfig):
    name = "tests.testapp"
    label = "testapp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registered here: autodiscovery imports only "jobs" and "actions".
        from . import more_actions, more_jobs  # noqa: F401
