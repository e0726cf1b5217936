"""Headless Chromium for the browser tests: Debian's ``/usr/bin/chromium`` (installed by
``infra/setup-browser.sh``) driven by Playwright, so no browser download; a fresh
profile per test, and a screenshot of the last page left in the test's folder."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import REPO

CHROMIUM = Path(os.environ.get("SLMOPS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # root in CI containers
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT_MS = 60_000


def ensure_chromium() -> Path:
    """/usr/bin/chromium, installed by infra/setup-browser.sh when missing (as root)."""
    if not os.access(CHROMIUM, os.X_OK):
        setup = subprocess.run(
            [str(REPO / "infra" / "setup-browser.sh")],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if setup.returncode != 0 or not os.access(CHROMIUM, os.X_OK):
            pytest.fail(
                f"the browser tests need Chromium at {CHROMIUM} and infra/setup-browser.sh "
                f"could not provide it (exit {setup.returncode}):\n{setup.stdout}{setup.stderr}\n"
                "Install it (as root: apt-get install -y chromium), or point SLMOPS_CHROMIUM "
                "at a Chromium binary.",
                pytrace=False,
            )
    return CHROMIUM


@contextmanager
def headless_page(folder: Path) -> Iterator:
    """A page of a fresh headless Chromium profile under ``folder``; on the way out a
    screenshot of it is left there (``last-page.png``: on a failure, where it stopped)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the browser tests need Python playwright: pip install -e '.[dev]'", pytrace=False
        )
    chromium = ensure_chromium()
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            user_data_dir=str(folder / "chromium-profile"),
            executable_path=str(chromium),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        page = context.pages[0] if context.pages else context.new_page()
        shot = folder / "last-page.png"
        try:
            yield page
        finally:
            try:
                page.screenshot(path=str(shot))
                print(f"\n[browser: last page in {shot}]", file=sys.stderr)
            finally:
                context.close()
