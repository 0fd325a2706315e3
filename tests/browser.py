"""A real browser for tests of web pages (the Temporal UI, the HTML report): Debian's Chromium
driven by Playwright, never a downloaded browser (the machines have no internet).

`bootstrap.py test` installs Chromium where it is missing. Without it the browser tests skip with
the reason, except under CI (CI=true), where a skipped browser test would hide a missing check.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

REPO = Path(__file__).resolve().parent.parent
# Screenshots a browser test takes are kept here as test artifacts.
ARTIFACTS = REPO / ".test-reports" / "screenshots"


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "Chromium is not installed (bootstrap.py test installs it with apt where it can)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the browser tests")
        pytest.skip(reason)
    return path


@pytest_asyncio.fixture
async def browser_page() -> AsyncIterator:
    """A fresh Chromium page (headless, 1400x1000)."""
    from playwright.async_api import async_playwright

    executable = chromium_path()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, headless=True,
                                           args=["--no-sandbox", "--disable-gpu"])
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            yield page
        finally:
            await browser.close()


def screenshot_path(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / f"{name}.png"
