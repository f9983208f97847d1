"""Debian's Chromium (`make chromium`), driven by Playwright with ``executable_path``: Playwright's own
browser downloads are never used. Missing is a failure, not a skip."""

from __future__ import annotations

import os
import shutil

import pytest


def chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
    if not path:
        pytest.fail("Chromium is not installed: the browser tests drive Debian's `chromium` package "
                    "(install it with `make chromium`, i.e. `apt-get install chromium`); they are never skipped")
    return path


def playwright():
    """(sync_playwright, expect) of Playwright's sync API."""
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed in this environment: it is in the project's dev extra "
                    "(pip install -e '.[dev]', or make venv)")
    return sync_playwright, expect
