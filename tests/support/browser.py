"""Debian's Chromium (`make chromium`), driven by Playwright with ``executable_path``: Playwright's own
browser downloads are never used. Missing is a failure, not a skip.

Also what the UI tests do as a user does in Airflow's UI: sign in, open a DAG's trigger form, read a
field, its help and its error, and keep the page as an artefact when a test fails."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import ARTEFACTS

UI_TIMEOUT_MS = 60_000
VIEWPORT = {"width": 1400, "height": 900}


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


@contextmanager
def page(viewport: dict | None = None) -> Iterator:
    """A fresh page of headless Chromium (timeouts of 60 s for every wait and expect), closed after."""
    sync_playwright, expect = playwright()
    executable = chromium()
    with sync_playwright() as pw:
        chrome = pw.chromium.launch(executable_path=executable, headless=True)
        try:
            tab = chrome.new_page(viewport=viewport or VIEWPORT)
            tab.set_default_timeout(UI_TIMEOUT_MS)
            expect.set_options(timeout=UI_TIMEOUT_MS)
            yield tab
        finally:
            chrome.close()


def keep(tab, name: str, logs: dict[str, Path] | None = None) -> None:
    """The page as it is now in test-artifacts/: NAME.png (full page) and NAME.html, and copies of ``logs``
    (artefact name -> file), for a failure's diagnosis. Never raises."""
    try:
        ARTEFACTS.mkdir(exist_ok=True)
        tab.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)
        (ARTEFACTS / f"{name}.html").write_text(tab.content())
        for artefact, path in (logs or {}).items():
            shutil.copy(path, ARTEFACTS / artefact)
    except Exception:   # noqa: BLE001 - diagnosis only: the test's own failure is what matters
        pass


# --- Airflow's UI ---------------------------------------------------------------------------------------

def airflow_sign_in(tab, base: str, password: str, user: str = "admin") -> None:
    """Sign in through the simple auth manager's login page."""
    tab.goto(base + "/")
    tab.wait_for_url(re.compile(r"/auth/login"))
    tab.locator("input[name=username]").fill(user)
    tab.locator("input[name=password]").fill(password)
    tab.get_by_role("button", name="Sign in").click()
    tab.wait_for_url(lambda url: "/auth/login" not in url)


def open_trigger_form(tab, base: str, dag_id: str):
    """The DAG's page, its Trigger button: the trigger form (a dialog) with every section unfolded."""
    _, expect = playwright()
    tab.goto(f"{base}/dags/{dag_id}")
    tab.get_by_test_id("trigger-dag-button").click()
    form = tab.get_by_role("dialog")
    expect(form).to_contain_text(f"Trigger Dag - {dag_id}")
    return form


def open_section(form, title: str) -> None:
    """Unfold a section of the form's Params (a Param's `section`), if it is folded."""
    button = form.get_by_role("button", name=title, exact=True)
    if button.get_attribute("aria-expanded") != "true":
        button.click()


def field(form, name: str):
    """The input of the Param ``name`` (Airflow names it element_NAME)."""
    return form.locator(f"[name=element_{name}]")


def field_row(form, name: str):
    """The form row of the Param ``name``: its label, input, help text and error text."""
    return form.locator("[data-scope=field][data-part=root]", has=form.page.locator(f"[name=element_{name}]"))


def set_field(form, name: str, text: str) -> str:
    """Type ``text`` into the Param's field as a person does (select what is there, type over it, Tab
    away) and return what the field shows afterwards."""
    box = field(form, name)
    box.click()
    box.press("Control+a")
    box.press("Backspace")
    if text:
        box.press_sequentially(text)
    box.press("Tab")
    return box.input_value()


def fill_field(form, name: str, text: str) -> str:
    """Paste ``text`` into the Param's field (long texts), Tab away, and return what the field shows."""
    box = field(form, name)
    box.fill(text)
    box.press("Tab")
    return box.input_value()


@contextmanager
def kept_on_failure(tab, name: str, logs: dict[str, Path] | None = None) -> Iterator:
    """Run the block; when it fails, keep the page (and ``logs``) as test-artifacts/NAME.*."""
    try:
        yield
    except BaseException:
        keep(tab, name, logs)
        raise
