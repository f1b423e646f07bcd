"""Dashboard speed on a large trace root (make one with benchmarks/make_root.py).

    python benchmarks/bench_dashboard.py --root build/bench-root [--browser]
    python benchmarks/bench_dashboard.py --root build/root-2000 --sessions 5     # a team at once

Prints, against the goals of the dashboard issue:
- opening the root (catalog of every run);
- the proportions query (one run, all steps; and the mean of 10 runs) — goal <= 100 ms;
- a map switch, server side: read one (step, layer) map and its per-query entropy and build both
  figures — goal <= 200 ms;
- with --browser: first full render of each view in Chromium (navigation until the app has
  finished its run and drawn its figures) — goal <= 3 s;
- with --sessions N: N Chromium sessions (threads, one browser each, on loopback) clicking
  through every view ``--rounds`` times at once, each starting at a different view; prints each
  view's server-side render time (the app's own timing of each script run, see
  dashboard.views.common.render_timer) as median and p95 — goals <= 1 s and <= 3 s — and each
  session's first full render in Chromium — goal <= 3 s. Every session's browser is started
  before any of them navigates, so that figure is the page loads of N sessions at once.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from capture import dims  # noqa: E402
from dashboard import figures  # noqa: E402
from dashboard.data import TraceRoot  # noqa: E402


def timed(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t) * 1000)
    return out


def line(name: str, ms: list[float], goal: float | None) -> None:
    med, worst = statistics.median(ms), max(ms)
    verdict = "" if goal is None else ("  OK" if worst <= goal else f"  over goal ({goal:.0f} ms)")
    print(f"{name:<52} median {med:8.1f} ms   max {worst:8.1f} ms   n={len(ms)}{verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="build/bench-root")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--browser", action="store_true")
    ap.add_argument("--sessions", type=int, default=0, help="concurrent browser sessions (0: none)")
    ap.add_argument("--rounds", type=int, default=2, help="times each session visits every view")
    args = ap.parse_args()
    if args.sessions:
        concurrent(args.root, args.sessions, args.rounds)
        return
    t = time.perf_counter()
    tr = TraceRoot(args.root)
    open_ms = (time.perf_counter() - t) * 1000
    runs = list(tr.runs(status=["complete"])["run"])
    n_stats = int(tr.catalog.query("SELECT count(*) AS n FROM stats")["n"].iloc[0])
    layers = tr.layers(runs[0])
    print(f"root {args.root}: {len(runs)} complete runs, {len(layers)} layers, {n_stats:,} statistic rows")
    print(f"{'open root (catalog of every run)':<52} {open_ms:8.1f} ms")
    rng = np.random.default_rng(0)
    pick = [runs[i] for i in rng.choice(len(runs), args.n, replace=False)]
    line("proportions query, 1 run, all steps", timed(lambda i: tr.proportions([pick[i]]), args.n), 100)
    line("proportions query, 1 run, one step", timed(lambda i: tr.proportions([pick[i]], step=i % 25), args.n), 100)
    line("proportions query, mean of 10 runs", timed(
        lambda i: tr.proportions([runs[(i * 10 + k) % len(runs)] for k in range(10)]), args.n), 100)
    line("layer x step query, 1 run", timed(lambda i: tr.layer_step(pick[i], dims.ENTROPY_NORM), args.n), None)
    map_runs = [r for r in runs if tr.attrs(r).get("capture", {}).get("maps")]
    if map_runs:
        with_maps = layers[layers["kind"].isin(["spatial", "temporal"])]
        steps = list(tr.steps(map_runs[0])[dims.STEP])

        def switch(i):
            run = map_runs[i % len(map_runs)]
            li = int(with_maps[dims.LAYER].iloc[rng.integers(len(with_maps))])
            step = int(steps[rng.integers(len(steps))])
            m = tr.attention_map(run, step, li)
            figures.map_pair(m, rule="quantile", param=0.9, title="bench")
            figures.entropy_grid(tr.entropy_map(run, step, li), title="bench")

        switch(0)  # opens the store once, as the app's first view of a run does
        line("map switch (read map + entropy map, build figures)", timed(switch, args.n), 200)
    if args.browser:
        browser_render(args.root)


def wait_drawn(page, timeout_ms: int) -> None:
    """Until the view has drawn its figure, or the message it shows instead (the perturbation view
    on a root without a sweep)."""
    page.wait_for_selector(_DRAWN, timeout=timeout_ms)


_DRAWN = '.js-plotly-plot .main-svg, [data-testid="stAlert"], [data-testid="stAlertContainer"]'


def render_seconds(page, t0: float, plotted: bool, timeout_ms: int = 180000) -> float:
    """Seconds from t0 until the view was first seen fully rendered (script run finished, no
    skeletons, and its figure drawn for a view with figures), confirmed 300 ms later: the
    confirmation wait is not counted, and a view that started rendering again within it (a
    rerun) is timed to its next finish."""
    from tests.browser import is_rendered, wait_rendered

    for _ in range(20):
        wait_rendered(page, timeout_ms, settle_ms=0)
        if plotted:
            wait_drawn(page, timeout_ms)
        t = time.perf_counter()
        page.wait_for_timeout(300)
        if is_rendered(page) and (not plotted or page.query_selector(_DRAWN) is not None):
            return t - t0
    return time.perf_counter() - t0


def browser_render(root: str) -> None:
    from playwright.sync_api import sync_playwright

    from tests.browser import PLOTTED, VIEWS, Server, launch

    with Server(root) as srv, sync_playwright() as p:
        b = launch(p)
        page = b.new_page(viewport={"width": 1400, "height": 1000})
        for view, path in VIEWS.items():
            t = time.perf_counter()
            page.goto(f"{srv.url}/{path}")
            ms = render_seconds(page, t, view in PLOTTED, 60000) * 1000
            ok = "  OK" if ms <= 3000 else "  over goal (3000 ms)"
            print(f"{'first render in Chromium: ' + view:<52} {ms:8.1f} ms{ok}")
        b.close()


def cpu_seconds(server_pid: int) -> tuple[float, float]:
    """CPU seconds used so far by this process's Chromium processes (every session's browser) and by
    the dashboard server's process tree."""
    import psutil

    def used(procs) -> float:
        total = 0.0
        for pr in procs:
            try:
                t = pr.cpu_times()
                total += t.user + t.system
            except psutil.Error:  # a process that ended in between
                pass
        return total

    def is_chromium(pr) -> bool:
        try:
            return "chrom" in pr.name().lower()
        except psutil.Error:
            return False

    browsers = [pr for pr in psutil.Process().children(recursive=True) if is_chromium(pr)]
    try:
        srv = psutil.Process(server_pid)
        server = [srv] + srv.children(recursive=True)
    except psutil.Error:
        server = []
    return used(browsers), used(server)


def concurrent(root: str, sessions: int, rounds: int) -> None:
    import json
    import os
    import tempfile
    import threading

    from playwright.sync_api import sync_playwright

    from capture.store import list_run_dirs, read_attrs
    from tests.browser import PLOTTED, VIEWS, Server, launch

    # the maps view opens on a run that has maps (most runs of a big root are captured without)
    map_run = next((d.name for d in list_run_dirs(root) if (read_attrs(d).get("capture") or {}).get("maps")), None)
    query = {"maps": f"?mp_run={map_run}" if map_run else ""}
    log = Path(tempfile.mkdtemp(prefix="attnlens-bench-")) / "render.jsonl"
    os.environ["ATTNLENS_RENDER_LOG"] = str(log)  # inherited by the server process
    views = list(VIEWS)
    client: dict[str, list[float]] = {v: [] for v in views}
    first: list[float] = []
    errors: list[str] = []
    # Every session's browser is up before any navigates, so the first renders are timed against the
    # other sessions' page loads, not their Chromium processes starting; and every session has
    # drawn its first view before any goes on, so the CPU those renders took can be told apart.
    ready, firsts = threading.Barrier(sessions + 1), threading.Barrier(sessions + 1)
    with Server(root) as srv:
        def session(i: int) -> None:
            try:
                with sync_playwright() as p:
                    b = launch(p)
                    page = b.new_page(viewport={"width": 1400, "height": 1000})
                    page.goto("about:blank")
                    ready.wait(timeout=300)
                    order = views[i % len(views):] + views[:i % len(views)]
                    for r in range(rounds):
                        for view in order:
                            t = time.perf_counter()
                            page.goto(f"{srv.url}/{VIEWS[view]}{query.get(view, '')}")
                            dt = render_seconds(page, t, view in PLOTTED)
                            client[view].append(dt)
                            if r == 0 and view == order[0]:
                                first.append(dt)
                                firsts.wait(timeout=600)
                    b.close()
            except Exception as e:  # noqa: BLE001 - reported with the figures
                ready.abort()  # the others do not wait for a session that failed
                firsts.abort()
                errors.append(f"session {i}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")

        t0 = time.perf_counter()
        threads = [threading.Thread(target=session, args=(i,)) for i in range(sessions)]
        for th in threads:
            th.start()
        cpu = None
        try:
            ready.wait(timeout=300)
            c0, s0 = cpu_seconds(srv.proc.pid), time.perf_counter()
            firsts.wait(timeout=600)
            c1 = cpu_seconds(srv.proc.pid)
            cpu = (c1[0] - c0[0], c1[1] - c0[1], time.perf_counter() - s0)
        except threading.BrokenBarrierError:
            pass
        for th in threads:
            th.join()
        wall = time.perf_counter() - t0
    server: dict[str, list[float]] = {v: [] for v in views}
    for ln in log.read_text().splitlines():
        rec = json.loads(ln)
        server.setdefault(rec["view"], []).append(rec["seconds"])
    runs = len(os.listdir(Path(root) / "runs"))
    print(f"{sessions} sessions x {rounds} rounds x {len(views)} views on {root} ({runs} runs), {wall:.0f} s in all")
    print(f"  {'view':<14}{'server median s':>16}{'server p95 s':>14}{'n':>5}{'browser median s':>18}{'browser max s':>15}")
    for v in views:
        s_, c = sorted(server.get(v, [])), client[v]
        if not s_:
            continue
        p95 = s_[min(len(s_) - 1, int(round(0.95 * (len(s_) - 1))))]
        print(f"  {v:<14}{statistics.median(s_):>16.2f}{p95:>14.2f}{len(s_):>5}"
              f"{(statistics.median(c) if c else float('nan')):>18.2f}{(max(c) if c else float('nan')):>15.2f}")
    every = sorted(x for xs in server.values() for x in xs)
    if every:
        p95 = every[min(len(every) - 1, int(round(0.95 * (len(every) - 1))))]
        print(f"  all views: server median {statistics.median(every):.2f} s (goal 1), p95 {p95:.2f} s (goal 3)")
    if first:
        print(f"  first full render in Chromium, {len(first)} sessions at once, each on its first view (cold "
              f"server): median {statistics.median(first):.2f} s, max {max(first):.2f} s (goal 3): "
              + ", ".join(f"{x:.2f}" for x in first))
    if cpu is not None:
        browsers, server_cpu, span = cpu
        print(f"  during those first renders ({span:.2f} s until the last): Chromium CPU {browsers:.2f} s "
              f"({browsers / sessions:.2f} s per session), the server's {server_cpu:.2f} s, on {os.cpu_count()} cores")
    for e in errors:
        print("  " + e)


if __name__ == "__main__":
    main()
