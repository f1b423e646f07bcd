"""Sweep throughput: runs per minute of the same sweep executed sequentially, batched (variants of
one prompt and seed in one batched call), on a local process pool and on a Dask cluster (loopback
LocalCluster), each into a fresh root, in one invocation.

    python benchmarks/bench_sweep.py                      # demo model, 1 prompt x 1 seed, 9 runs
    python benchmarks/bench_sweep.py --workers 2 --layers "each:mid_block.*" --steps 25

Every mode pays its own start-up (pipeline loads in each worker process), as a user would; the
table gives runs/minute, the ratio to sequential, and the largest difference of every mode's videos
from the sequential run's with the same torch threads (uint8 levels; 0 = identical).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--prompt", default="a large red circle moving right on a plain background")
    ap.add_argument("--layers", default="each:up_blocks.1.*attn1", help="layer set (default: 4 layers x I, U + baseline)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[3, 9], help="batch sizes to time")
    ap.add_argument("--no-dask", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np

    from capture.metrics import run_video
    from capture.store import list_run_dirs
    from capture.sweep import SweepSpec
    from capture.sweep_exec import execute

    cores = os.cpu_count() or 1
    spec = SweepSpec.from_dict(dict(name="bench", model=args.model, prompts=[args.prompt], seeds=[0],
                                    layer_sets=[args.layers], perturbations=["I", "U"], call={"steps": args.steps},
                                    capture={"maps": False}))
    modes = [("sequential", dict(workers=1, threads=cores)),
             ("sequential 1 thread", dict(workers=1, threads=1)),
             *[(f"batched x{b}", dict(workers=1, threads=cores, batch=b)) for b in args.batch],
             (f"process pool x{args.workers}", dict(workers=args.workers, threads=max(1, cores // args.workers)))]
    if not args.no_dask:
        modes.append((f"dask x{args.workers}", dict(threads=max(1, cores // args.workers), dask=args.workers)))
    rows, videos = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in modes:
            root = Path(tmp) / name.replace(" ", "_")
            n_dask = kw.pop("dask", None)
            t0 = time.perf_counter()
            if n_dask:
                from distributed import LocalCluster

                with LocalCluster(n_workers=n_dask, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
                    s = execute(spec, root, scheduler=cluster.scheduler_address, **kw)
            else:
                s = execute(spec, root, **kw)
            dt = time.perf_counter() - t0
            if s["failed"]:
                print(f"{name}: {len(s['failed'])} failed: {s['failed'][0]}")
                return 1
            videos[name] = {d.name: run_video(d) for d in list_run_dirs(root)}
            rows.append((name, s["ran"], dt, kw["threads"]))
            print(f"{name}: {s['ran']} runs in {dt:.1f} s", flush=True)
    base = rows[0][1] / rows[0][2] * 60
    print(f"\nmodel {args.model}, {args.steps} steps, {rows[0][1]} runs, {cores} cores")
    print("video Δ: largest |difference| (uint8 levels) from the sequential run with the same torch threads per run "
          "(other thread counts or batch shapes change float reduction order)")
    print(f"{'mode':<22} {'threads/run':>11} {'runs':>5} {'seconds':>8} {'runs/min':>9} {'vs sequential':>14} "
          f"{'video Δ':>8}")
    refs = {}
    for name, n, dt, th in rows:
        ref = refs.setdefault(th, videos[name])
        if videos[name].keys() != ref.keys():
            delta = "runs differ"
        else:
            delta = str(max(int(np.abs(videos[name][k].astype(int) - ref[k]).max()) for k in ref))
        print(f"{name:<22} {th:>11} {n:>5} {dt:>8.1f} {n / dt * 60:>9.1f} {n / dt * 60 / base:>13.2f}x {delta:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
