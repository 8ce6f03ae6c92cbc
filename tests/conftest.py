from __future__ import annotations

import pytest
from django.db import connection


def pytest_collection_modifyitems(config, items):
    """Skip tests marked for another database than the one under test."""
    from django.conf import settings

    engine = settings.DATABASES["default"]["ENGINE"]
    vendor = {"postgresql": "postgresql", "mysql": "mysql", "sqlite3": "sqlite"}[
        engine.rsplit(".", 1)[-1]
    ]
    for item in items:
        for name in ("postgresql", "mysql", "sqlite"):
            if item.get_closest_marker(name) and name != vendor:
                item.add_marker(
                    pytest.mark.skip(reason=f"needs {name}, runs on {vendor}")
                )


@pytest.fixture
def vendor() -> str:
    return connection.vendor
