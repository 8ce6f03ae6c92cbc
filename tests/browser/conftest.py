"""A headless Chromium for the browser tests, driven with Playwright.

The tests need Debian's Chromium at /usr/bin/chromium. Without it they are
skipped on a developer's machine, and fail in CI (``CI=true``), where a
missing browser must not pass unnoticed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The screenshots in docs/ are refreshed by a run with this variable set,
# e.g. KLERK_UPDATE_SCREENSHOTS=1 uv run pytest tests/browser; other runs
# take them too, into a temporary folder, so they never dirty the tree.
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
SCREENSHOTS = (
    DOCS_SCREENSHOTS
    if os.environ.get("KLERK_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / f"klerk-screenshots-{os.getpid()}"
)
# Safety net for a hung page, never a measurement.
TIMEOUT_MS = 30_000


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    if not CHROMIUM.exists():
        reason = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)."
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} CI must run the browser tests.")
        pytest.skip(reason)

    from playwright.sync_api import sync_playwright

    # Playwright's synchronous API runs an event loop in this thread while
    # it lives, which Django takes for async code; the ORM calls of these
    # tests are synchronous. One browser per test, so that neither the loop
    # nor this setting outlives it.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()
        # Django keeps connections per context, and the test's queries ran
        # in the loop's: close them here, or they outlive the test.
        connections.close_all()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    yield tab
    context.close()


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as ``name`` in SCREENSHOTS."""
    # The admin's navigation sidebar sticks to the top of the window, so a
    # full-page picture would show it in the middle of the page.
    if page.locator("#nav-sidebar").is_visible():
        page.click("#toggle-nav-sidebar")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / name
    # Written aside and moved, so that a concurrent run never leaves half a
    # file behind.
    partial = target.with_suffix(f".{os.getpid()}.part")
    page.screenshot(path=str(partial), full_page=True, type="png")
    os.replace(partial, target)
    return target
