"""Settings for the test suite: SQLite unless DATABASE_URL names a server.

Worker processes started by the tests use these settings too. They receive
the name of the test database in ``KLERK_TEST_DATABASE_NAME`` and setting
overrides as JSON in ``KLERK_TEST_SETTINGS``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from example_project import database_url

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = "tests-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "klerk_django",
    "shop",
    "tests.testapp",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "tests.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_sqlite_file = Path(tempfile.gettempdir()) / f"klerk_tests_{os.getpid()}.sqlite3"
DATABASES = {
    "default": database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{_sqlite_file}", BASE_DIR
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file, not memory, so that worker processes share the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(_sqlite_file)}
else:
    # One test database per test run, so runs side by side do not collide.
    DATABASES["default"]["TEST"] = {"NAME": f"test_klerk_{os.getpid()}"}
if os.environ.get("KLERK_TEST_DATABASE_NAME"):
    DATABASES["default"]["NAME"] = os.environ["KLERK_TEST_DATABASE_NAME"]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = os.environ.get("KLERK_TEST_USE_TZ", "1") == "1"
TIME_ZONE = os.environ.get("KLERK_TEST_TIME_ZONE", "UTC")
STATIC_URL = "static/"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

KLERK_ACTIONS_MODE = "inline"
KLERK_POLL_SECONDS = 0.2
KLERK_LEASE_SECONDS = 30.0
KLERK_HEARTBEAT_SECONDS = 1.0
KLERK_RECOVERY_SECONDS = 1.0

globals().update(json.loads(os.environ.get("KLERK_TEST_SETTINGS", "{}")))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {
            "format": "%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"klerk_django": {"handlers": ["console"], "level": "INFO"}},
}
