"""The dashboard in a real browser: Debian's Chromium driven by Playwright through every view.

Skipped (with the reason) where Chromium or Playwright is missing; CI installs both."""

import os
from pathlib import Path

import pytest

from .dashboard_root import make_root
from .study_root import make_study_root

pytestmark = pytest.mark.slow

SHOTS = Path(os.environ.get("ATTNLENS_SCREENSHOTS", Path(__file__).resolve().parents[1] / "build" / "screenshots"))


def test_every_view_renders_in_chromium(tmp_path):
    pw = pytest.importorskip("playwright.sync_api")
    from .browser import CHROMIUM, VIEWS, Server, launch, wait_rendered

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium)")
    ids = make_root(tmp_path)
    make_study_root(tmp_path)  # a small sweep for the Perturbation study view
    SHOTS.mkdir(parents=True, exist_ok=True)
    with Server(tmp_path) as srv, pw.sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        for view, path in VIEWS.items():
            page.goto(f"{srv.url}/{path}")
            wait_rendered(page)
            assert page.locator('[data-testid="stException"]').count() == 0, view
            assert page.locator('[data-testid="stHeading"]').count() >= 1, view
            if view not in ("runs", "notes"):  # a drawn figure, however long the machine takes
                page.wait_for_selector(".js-plotly-plot .main-svg", timeout=120000)
            page.screenshot(path=str(SHOTS / f"{view}.png"), full_page=True)
        # state in the URL reopens the same view
        # (waits for the content itself, not a fixed time: a busy machine draws plots late)
        page.goto(f"{srv.url}/layer-step?ls_run={ids['b']}&ls_stat=energy")
        wait_rendered(page)
        expect = pw.expect
        expect(page.locator(".js-plotly-plot").first).to_contain_text(f"energy · run {ids['b']}", timeout=60000)
        # a broken run is a message, not a traceback
        page.goto(f"{srv.url}/?run={ids['unreadable']}")
        wait_rendered(page)
        expect(page.get_by_text("cannot be read").first).to_be_visible(timeout=60000)
        assert page.locator('[data-testid="stException"]').count() == 0
        browser.close()
    assert not errors, errors
