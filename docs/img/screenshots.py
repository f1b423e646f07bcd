"""Screenshots of every dashboard view at 1400 px, as in the README (docs/img/dashboard-*.png).

    python docs/img/screenshots.py --root data/traces --out build/screenshots

Serves ``attnlens dashboard`` over the root on a free loopback port, opens each view in Debian's
Chromium (Playwright), waits until the view has drawn its figures (not a fixed time) and saves a
full-page PNG per view. A root like the README's: ``attnlens demo``, ``attnlens study --seed 0``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
VIEWS = {"runs": "", "layer-step": "layer-step", "proportions": "proportions", "maps": "maps", "compare": "compare",
         "perturbation": "perturbation", "selection": "selection", "notes": "notes"}
PLOTTED = {"layer-step", "proportions", "maps", "compare", "perturbation", "selection"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_drawn(page, view: str, timeout_ms: int) -> None:
    page.wait_for_selector('[data-testid="stHeading"], [data-testid="stException"]', timeout=timeout_ms)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')",
        timeout=timeout_ms)
    # Streamlit draws grey skeletons until a view's widgets and tables have arrived
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stSkeleton\"]')", timeout=timeout_ms)
    if view in PLOTTED:
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=timeout_ms)
    page.wait_for_timeout(500)  # Plotly's last relayout after the data arrives


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

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    queries = dict(q.split(":", 1) for q in args.query)
    port = _port()
    server = subprocess.Popen([sys.executable, "-m", "capture.cli", "dashboard", "--root", args.root, "--port",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            for view, path in VIEWS.items():
                q = queries.get(view)
                page.goto(f"http://127.0.0.1:{port}/{path}" + (f"?{q}" if q else ""))
                _wait_drawn(page, view, 120_000)
                page.screenshot(path=str(out / f"dashboard-{view}.png"), full_page=True)
                print(out / f"dashboard-{view}.png", flush=True)
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
