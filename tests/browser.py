"""Drive the dashboard in Debian's Chromium with Playwright (used by the browser test and the
benchmark): start the app on a free loopback port, visit every view, collect problems."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
# view -> URL path ("" is the default page, Runs)
VIEWS = {"runs": "", "layer-step": "layer-step", "proportions": "proportions", "maps": "maps", "compare": "compare",
         "perturbation": "perturbation", "selection": "selection", "notes": "notes"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``attnlens dashboard`` in a subprocess, stopped on exit."""

    def __init__(self, root, port: int | None = None):
        self.root, self.port = Path(root), port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "capture.cli", "dashboard", "--root", str(self.root),
                                      "--port", str(self.port)], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 180  # a busy machine starts Streamlit slowly
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
            if self.proc.poll() is not None:
                raise RuntimeError(f"dashboard exited: {self.proc.stdout.read().decode()[-2000:]}")
        raise TimeoutError("dashboard did not come up in 180 s")

    def __exit__(self, *exc):
        import signal

        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)


_HEADING = '[data-testid="stHeading"], [data-testid="stException"]'
_NOT_RUNNING = ("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
                " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')")
_NO_SKELETON = "() => !document.querySelector('[data-testid=\"stSkeleton\"]')"


def wait_rendered(page, timeout_ms: int = 120000, settle_ms: int = 300) -> None:
    """Until the app has finished its script run (no running indicator) and drawn a header, then
    ``settle_ms`` more. Waits for content, with a generous ceiling: a busy CI machine can take
    tens of seconds per view."""
    page.wait_for_selector(_HEADING, timeout=timeout_ms)
    page.wait_for_function(_NOT_RUNNING, timeout=timeout_ms)
    # Streamlit draws grey skeletons until a view's widgets and tables have arrived
    page.wait_for_function(_NO_SKELETON, timeout=timeout_ms)
    if settle_ms:
        page.wait_for_timeout(settle_ms)


def is_rendered(page) -> bool:
    """What wait_rendered waits for holds now."""
    return bool(page.evaluate(f"() => !!document.querySelector('{_HEADING}') && ({_NOT_RUNNING})() "
                              f"&& ({_NO_SKELETON})()"))


PLOTTED = {"layer-step", "proportions", "maps", "compare", "perturbation", "selection"}  # views with figures


def wait_view(page, view: str, timeout_ms: int = 120000) -> None:
    """``wait_rendered``, and for a view with figures until Plotly has drawn one."""
    wait_rendered(page, timeout_ms)
    if view in PLOTTED:
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=timeout_ms)
        page.wait_for_timeout(500)  # Plotly's last relayout after the data arrives


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
