"""Generate a synthetic trace root for the catalog and dashboard benchmarks.

    python benchmarks/make_root.py --out build/bench-root [--runs 200 --steps 25 --map-runs 10 --workers 2]

Runs are written through the real store (capture.synthetic), 53 layers x 8 heads x 2 CFG branches;
``--workers`` processes write disjoint ranges of runs (the same runs one process would write).
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from capture.synthetic import make_root  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/bench-root")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--map-runs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--range", nargs=2, type=int, default=None, help=argparse.SUPPRESS)  # a worker's runs
    args = ap.parse_args()
    t0 = time.time()
    kw = dict(steps=args.steps, map_runs=args.map_runs, seed=args.seed)
    if args.range:
        make_root(args.out, runs=args.range[1], first=args.range[0], **kw)
        return
    if args.workers > 1:
        cuts = [args.runs * w // args.workers for w in range(args.workers + 1)]
        procs = [subprocess.Popen([sys.executable, __file__, "--out", args.out, "--steps", str(args.steps),
                                   "--map-runs", str(args.map_runs), "--seed", str(args.seed),
                                   "--range", str(a), str(b)]) for a, b in zip(cuts, cuts[1:])]
        runs_dir = Path(args.out) / "runs"
        with tqdm(total=args.runs, unit="run") as bar:
            while any(p.poll() is None for p in procs):
                time.sleep(1)
                bar.update((len(os.listdir(runs_dir)) if runs_dir.is_dir() else 0) - bar.n)
        if any(p.returncode for p in procs):
            sys.exit("a worker failed")
    else:
        with tqdm(total=args.runs, unit="run") as bar:
            make_root(args.out, runs=args.runs, progress=lambda n: bar.update(1), **kw)
    print(f"{args.runs} runs written to {args.out} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
