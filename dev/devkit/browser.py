"""Flower in a real browser: Debian's headless chromium, driven by playwright.

One tour of Flower's pages, as a user sees them, for tests/test_flower_browser.py and
for `make screenshots` (dev/devkit/screenshots.py). Each `show_*` opens a page, waits
until its data has loaded (the dashboard and the task list load theirs by AJAX) and
returns the page's visible text. `make screenshots` also opens two pages of Prometheus's
own (classic) web UI: a graph and the alerts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

from playwright.sync_api import HttpCredentials, Page, sync_playwright

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
TIMEOUT_MS = 30_000
# The tabs of Flower's worker page, by the id of their link and of their pane.
WORKER_TABS = ("pool", "broker", "queues", "tasks", "limits", "config", "system", "other")


@contextmanager
def flower_page(base_url: str, credentials: tuple[str, str] | None = None) -> Iterator[Page]:
    """A page of a fresh headless chromium, with Flower's (or Prometheus's) address as its base URL."""
    if not os.path.exists(CHROMIUM):
        raise RuntimeError(f"no chromium at {CHROMIUM}: `make test` installs it (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        try:
            http_credentials: HttpCredentials | None = (
                {"username": credentials[0], "password": credentials[1]} if credentials else None
            )
            context = browser.new_context(
                base_url=base_url, viewport={"width": 1440, "height": 900}, http_credentials=http_credentials
            )
            context.set_default_timeout(TIMEOUT_MS)
            yield context.new_page()
        finally:
            browser.close()


def page_text(page: Page) -> str:
    return page.locator("body").inner_text()


def show_dashboard(page: Page, worker: str) -> str:
    """The dashboard (Flower's workers list), once the worker's row has loaded."""
    page.goto("/")
    page.locator("#workers-table tbody tr", has_text=worker).first.wait_for()
    page.wait_for_function("document.querySelector('#workers-online').textContent.trim() !== '—'")
    return page_text(page)


def show_workers(page: Page, worker: str) -> str:
    page.goto("/workers")
    page.locator("#workers-table tbody tr", has_text=worker).first.wait_for()
    return page_text(page)


def show_worker_tabs(page: Page, worker: str) -> dict[str, str]:
    """Each tab of the worker's page: its name, and the text of its pane once shown."""
    page.goto(f"/worker/{quote(worker)}")
    page.locator("#workername").wait_for()
    panes = {}
    for tab in WORKER_TABS:
        page.locator(f"#worker-tab-{tab}").click()
        pane = page.locator(f"#tab-{tab}")
        pane.wait_for(state="visible")
        panes[tab] = pane.inner_text()
    return panes


def show_tasks(page: Page, text: str = "batch of", name: str = "tasks.mask_and_insert") -> str:
    """The task list of the task `name`, once a row holding `text` has loaded."""
    page.goto(f"/tasks?name={quote(name)}")
    page.locator("#tasks-table tbody tr", has_text=text).first.wait_for()
    return page_text(page)


def show_task(page: Page, task_id: str) -> str:
    page.goto(f"/task/{task_id}")
    page.locator("#task-page").wait_for()
    return page_text(page)


def show_broker(page: Page) -> str:
    page.goto("/broker")
    page.locator("#queue-table").wait_for()
    return page_text(page)


def show_prometheus_graph(page: Page, expr: str, range_input: str = "10m") -> str:
    """Prometheus's graph page of `expr` over the last `range_input`, once drawn."""
    page.goto(f"/classic/graph?g0.expr={quote(expr)}&g0.tab=0&g0.range_input={range_input}")
    page.locator(".graph_area svg path").first.wait_for()
    return page_text(page)


def show_prometheus_alerts(page: Page) -> str:
    """Prometheus's alerts page: only the pending and firing ones, opened, with annotations."""
    page.goto("/classic/alerts")
    page.locator("label", has_text="Inactive").click()  # hide the inactive ones
    page.locator("button.show-annotations").click()
    for header in page.locator("tr.alert_header.alert-danger").all():
        header.click()
    return page_text(page)
