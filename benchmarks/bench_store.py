"""What writing one run's store costs, phase by phase, without a model.

    python benchmarks/bench_store.py                 # the demo's shape: 21 layers, 25 steps
    python benchmarks/bench_store.py --layers 53 --steps 50 --reps 5

A run is written through the real ``RunWriter`` (random statistics of the given shape, 2 CFG
branches, an 8x8 map grid, 8 frames), once with statistics only and once with maps, and each
phase is timed in the calling thread: the writer's creation, queueing the steps, the video, and
the completion (the last steps reach disk, the run's table, the status). ``writer thread`` is the
time the background thread spent creating arrays and writing steps; on a busy CPU it competes
with the generation. Medians of ``--reps`` runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from capture import dims  # noqa: E402
from capture.store import RunWriter  # noqa: E402


def layers(n: int) -> list[dict]:
    return [dict(name=f"blocks.{i}.attn1", kind="temporal" if i % 2 else "spatial", block=f"blocks.{i}",
                 n_query=64, n_key=64, heads=4 if i % 2 else 16, gy=8, gx=8) for i in range(n)]


def results(rng, lays, maps: bool, nb: int = 2, frames: int = 8) -> list[dict]:
    out = []
    for l in lays:
        r = {n: rng.random((nb, len(dims.PARTS), l["heads"]), dtype=np.float32) for n in dims.SCALAR_STATS}
        if maps:
            r[dims.MAP_SPATIAL] = rng.random((nb, 64, 64), dtype=np.float32)
            r[dims.MAP_TEMPORAL] = rng.random((nb, frames, frames), dtype=np.float32)
            r[dims.ENTROPY_MAP] = rng.random((nb, frames, 64), dtype=np.float32)
        out.append(r)
    return out


def one_run(root, n_layers: int, steps: int, maps: bool) -> dict[str, float]:
    rng = np.random.default_rng(0)
    lays = layers(n_layers)
    per_step = [results(rng, lays, maps) for _ in range(steps)]  # made before timing
    thread = {"s": 0.0}
    t = {}
    t0 = time.perf_counter()
    w = RunWriter(root, {"capture": {"maps": maps}, "model": "bench"})
    inner = w._write_steps

    def timed(batch):
        s = time.perf_counter()
        try:
            return inner(batch)
        finally:
            thread["s"] += time.perf_counter() - s

    w._write_steps = timed
    t["writer"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s, res in enumerate(per_step):
        w.write_step(s, 1000.0 - s, lays, ["uncond", "cond"], res, np.zeros((n_layers, 2), bool), 8, 8)
    t["steps queued"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    w.write_video(np.zeros((8, 64, 64, 3), np.uint8))
    t["video"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    w.complete()
    t["complete"] = time.perf_counter() - t0
    t["calling thread"] = t["writer"] + t["steps queued"] + t["video"] + t["complete"]
    t["writer thread"] = thread["s"]
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=21)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="attnlens-bench-store-"))
    print(f"store of one run: {args.layers} layers, {args.steps} steps, 2 branches; ms, median of {args.reps}")
    for maps in (False, True):
        one_run(root, args.layers, args.steps, maps)  # warm-up: imports, DuckDB, zarr's event loop
        runs = [one_run(root, args.layers, args.steps, maps) for _ in range(args.reps)]
        label = "with maps" if maps else "statistics only"
        print(f"  {label}: " + ", ".join(f"{k} {statistics.median(r[k] for r in runs) * 1e3:.0f}" for k in runs[0]))


if __name__ == "__main__":
    main()
