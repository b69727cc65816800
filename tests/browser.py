"""The browser the page tests drive: Debian's Chromium (Playwright never downloads one of its own).

It is `$LMDEMO_CHROMIUM`, else /usr/bin/chromium. Without it a browser test skips and says why, so a
newcomer's `python -m pytest` passes on a laptop; with LMDEMO_REQUIRE_BROWSER=1 (as `.ci/run` sets) it
fails instead, so CI cannot pass by skipping them. Mark such tests `@pytest.mark.browser`: conftest.py
checks before their fixtures start servers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

DEFAULT_CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
LOCAL_HOSTS = ("127.0.0.1", "localhost", None)


def chromium_path() -> Path:
    """The Chromium binary; skips the calling test (fails it under LMDEMO_REQUIRE_BROWSER=1) when absent."""
    path = Path(os.environ.get("LMDEMO_CHROMIUM") or DEFAULT_CHROMIUM)
    if path.is_file() and os.access(path, os.X_OK):
        return path
    reason = f"no Chromium at {path}: set LMDEMO_CHROMIUM or install Debian's chromium"
    if os.environ.get("LMDEMO_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (LMDEMO_REQUIRE_BROWSER=1 makes browser tests required)", pytrace=False)
    pytest.skip(reason)


@contextmanager
def chromium_page(url: str) -> Iterator[Page]:
    """A headless Chromium page opened at `url`; `page.elsewhere` lists the requests it sent to other hosts."""
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.elsewhere = []
            page.on("request", lambda request: page.elsewhere.append(request.url)
                    if urlparse(request.url).hostname not in LOCAL_HOSTS else None)
            page.goto(url)
            yield page
        finally:
            browser.close()
