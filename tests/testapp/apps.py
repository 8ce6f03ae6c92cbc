from importlib.util import find_spec

from django.apps import AppConfig


class TestAppConfig(AppConfig):
    name = "tests.testapp"
    label = "testapp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registered here: autodiscovery imports only "jobs" and "actions".
        from . import (  # noqa: F401
            control_jobs,
            kill_jobs,
            limit_jobs,
            more_actions,
            more_jobs,
            stop_jobs,
        )
        from .clock import install

        install()

        # Django 5.2 has no django.tasks, so its test runs skip the tasks.
        if find_spec("django.tasks") is not None:
            from . import tasks  # noqa: F401  (they register)
