"""Generate a synthetic trace root for the dashboard benchmark.

    python benchmarks/make_root.py --out build/bench-root [--runs 200 --steps 25 --map-runs 10]

Runs are written through the real store (capture.synthetic), 53 layers x 8 heads x 2 CFG branches.
"""

import argparse
import time

from tqdm import tqdm

from capture.synthetic import make_root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/bench-root")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--map-runs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.time()
    with tqdm(total=args.runs, unit="run") as bar:
        make_root(args.out, runs=args.runs, steps=args.steps, map_runs=args.map_runs, seed=args.seed,
                  progress=lambda n: bar.update(1))
    print(f"{args.runs} runs written to {args.out} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
