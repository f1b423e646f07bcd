"""Screenshots of every dashboard view at 1400 px, as in the README (docs/img/dashboard-*.png).

    python docs/img/screenshots.py --root data/traces --out build/screenshots

Serves ``attnlens dashboard`` over the root on a free loopback port, opens each view in Debian's
Chromium (Playwright, through the browser test's helpers in tests/browser.py), waits until the view
has drawn its figures (not a fixed time) and saves a full-page PNG per view. A root like the
README's: ``attnlens demo``, ``attnlens study --seed 0``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.browser


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="data/traces", help="trace root to show")
    ap.add_argument("--out", default="build/screenshots", help="folder for dashboard-<view>.png")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=1500, help="viewport height (Streamlit scrolls inside the page)")
    ap.add_argument("--query", action="append", default=[], metavar="VIEW:PARAMS",
                    help="URL parameters for one view, e.g. maps:mp_layer=...&mp_step=12 (repeatable)")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from tests.browser import VIEWS, Server, launch, wait_view

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    queries = dict(q.split(":", 1) for q in args.query)
    with Server(args.root) as srv, sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        for view, path in VIEWS.items():
            q = queries.get(view)
            page.goto(f"{srv.url}/{path}" + (f"?{q}" if q else ""))
            wait_view(page, view)
            page.screenshot(path=str(out / f"dashboard-{view}.png"), full_page=True)
            print(out / f"dashboard-{view}.png", flush=True)
        browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
