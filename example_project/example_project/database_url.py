"""Turn a ``DATABASE_URL`` into a Django ``DATABASES`` entry.

Supported forms::

    sqlite:///relative/path.sqlite3     sqlite:////absolute/path.sqlite3
    postgres://user:password@host:5432/name   (also postgresql://)
    mysql://user:password@host:3306/name      (also mariadb://)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

ENGINES = {
    "sqlite": "django.db.backends.sqlite3",
    "postgres": "django.db.backends.postgresql",
    "postgresql": "django.db.backends.postgresql",
    "mysql": "django.db.backends.mysql",
    "mariadb": "django.db.backends.mysql",
}


def parse(url: str, base_dir: Path | None = None) -> dict[str, Any]:
    """Return the DATABASES entry for ``url``, or raise ValueError."""
    parts = urlsplit(url)
    engine = ENGINES.get(parts.scheme)
    if engine is None:
        raise ValueError(
            f"DATABASE_URL scheme {parts.scheme!r} is not supported; use one of "
            f"{', '.join(sorted(ENGINES))}."
        )
    if parts.scheme == "sqlite":
        return _sqlite(parts.path, base_dir)

    name = unquote(parts.path.lstrip("/"))
    if not name:
        raise ValueError(f"DATABASE_URL {url!r} names no database.")
    entry: dict[str, Any] = {
        "ENGINE": engine,
        "NAME": name,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "OPTIONS": dict(parse_qsl(parts.query)),
    }
    if engine.endswith("mysql"):
        entry["OPTIONS"].setdefault("charset", "utf8mb4")
    return entry


def _sqlite(path: str, base_dir: Path | None) -> dict[str, Any]:
    # sqlite:///name is relative to base_dir; sqlite:////name is absolute.
    name = path[1:] if path.startswith("/") else path
    if not name:
        raise ValueError("DATABASE_URL for SQLite names no file.")
    if not name.startswith("/") and base_dir is not None and name != ":memory:":
        name = str(base_dir / name)
    return {
        "ENGINE": ENGINES["sqlite"],
        "NAME": name,
        # Writers wait for SQLite's lock instead of failing at once, and
        # every transaction takes the write lock when it begins.
        "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
    }
