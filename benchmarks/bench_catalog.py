"""Catalog speed on large roots: opening a root, `attnlens runs`, `sql` and `select`.

    python benchmarks/bench_catalog.py                       # builds build/root-200 and build/root-2000
    python benchmarks/bench_catalog.py --sizes 200 --reps 5

Each root is made with benchmarks/make_root.py (synthetic runs written through the real store:
53 layers x 8 heads x 2 branches, 10 steps, maps in 5 runs) unless it exists. For each root it
prints: the first open (no index yet: every run read, its table consolidated), then medians of
``--reps`` in-process operations on a warm index (open, runs, a SQL aggregate, the selection
that `attnlens select` computes) and of the same commands' wall time as a user runs them (a fresh
``attnlens`` process each, so Python's and pandas' imports are included), against the goals
(<= 0.5 s at 200 runs, <= 2 s at 2,000).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOALS = {200: 0.5, 2000: 2.0}
SQL = "SELECT layer_name, avg(entropy_norm) AS h FROM stats WHERE part = 'all' GROUP BY layer_name ORDER BY h"


def build(size: int, workers: int) -> Path:
    root = ROOT / "build" / f"root-{size}"
    if not (root / "runs").is_dir() or len(os.listdir(root / "runs")) < size:
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_root.py"), "--out", str(root), "--runs",
                        str(size), "--steps", "10", "--map-runs", "5", "--workers", str(workers)], check=True)
        print(f"  built {root} in {time.perf_counter() - t0:.0f} s")
    return root


def median_s(fn, reps: int) -> float:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    from capture import catalog_index
    from capture.catalog import Catalog
    from ieadapt.select import select

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for size in args.sizes:
        root = build(size, args.workers)
        goal = GOALS.get(size, float("nan"))
        catalog_index.remove(root)
        t0 = time.perf_counter()
        Catalog(root)
        cold = time.perf_counter() - t0
        print(f"{size} runs ({root}): first open, index built: {cold:.2f} s")
        cat = Catalog(root)
        rows = [
            ("open (warm index)", median_s(lambda: Catalog(root), args.reps)),
            ("runs table", median_s(lambda: cat.runs(), args.reps)),
            ("sql aggregate", median_s(lambda: cat.sandboxed_query(SQL), args.reps)),
            ("select (default rule), fresh open", median_s(lambda: select(
                Catalog(root), stat="entropy_norm", rule="top:0.5", model="synthetic-a"), args.reps)),
        ]
        for cmd in (["runs"], ["sql", SQL], ["select", "--model", "synthetic-a"]):
            full = [sys.executable, "-m", "capture.cli", *cmd, "--root", str(root)]
            rows.append((f"`attnlens {' '.join(cmd[:1])}` wall", median_s(
                lambda: subprocess.run(full, check=True, capture_output=True, env=env, cwd=ROOT), args.reps)))
        print(f"  {'operation':<34}{'median s':>10}{'goal s':>8}")
        for name, s in rows:
            print(f"  {name:<34}{s:>10.3f}{goal:>8.1f}  {'ok' if s <= goal else 'over'}")


if __name__ == "__main__":
    main()
