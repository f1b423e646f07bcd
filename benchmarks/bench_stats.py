"""Statistics kernel vs torch's scaled_dot_product_attention alone, on the same inputs.

    python benchmarks/bench_stats.py                 # CPU: N = 1024 and 4096, 8 heads, head dim 40
    python benchmarks/bench_stats.py --device cuda --n 4096 17776 --heads 30 --dim 64

Prints one row per (N, mode): median milliseconds and the ratio to SDPA measured in the same run.
Modes: exact (entropy of every row, the path capture chooses), exact+maps (also key pooling onto
an 8x8 grid), sampled (256 evenly spaced query rows), and the two implementations forced:
chunked (explicit scores, chunk by chunk) and fused (one fused attention call with V = K, see
capture/stats.py). Capture's per-layer cost, the model's call included: sdpa+exact (the
model's SDPA call, then the statistics: two calls) against merged (one call gives the output and
the statistics, capture/merged.py), and the same with maps (merged+maps: the maps' pass from the
merged call's log-sum-exp, stats.pooled_rows). Only the CPU has the merged kernel. lse+maps:
the statistics from the fused call, then the maps from its log-sum-exp (what CUDA uses with maps).
maps-pass / maps-pass-jit: that maps pass alone from a known log-sum-exp, eager and with the
compiled kernel (capture/maps_kernel.py; CPU, where it applies: at most head dim 32, e.g.
tiny-animatediff's largest layer at 16x256x256: ``--n 1024 --batch 32 --heads 8 --dim 4``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from capture import maps_kernel, merged  # noqa: E402
from capture.stats import default_chunk_bytes, pooled_rows, row_stats  # noqa: E402
from capture.tracer import sampled_rows  # noqa: E402


def timeit(fn, reps: int, device: str) -> float:
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    fn()
    sync()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--batch", type=int, default=2, help="2 = the two CFG branches of one video")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=40)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--sample-rows", type=int, default=256)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    dev = args.device
    print(f"device={dev} dtype={args.dtype} batch={args.batch} heads={args.heads} head_dim={args.dim} "
          f"threads={torch.get_num_threads()} chunk_bytes={default_chunk_bytes(torch.device(dev))}")
    print(f"{'N':>6} {'mode':<12} {'ms':>10} {'sdpa_ms':>10} {'ratio':>7}")
    for n in args.n:
        g = torch.Generator(device=dev).manual_seed(n)
        q, k, v = (torch.randn(args.batch, args.heads, n, args.dim, generator=g, device=dev, dtype=dtype)
                   for _ in range(3))
        scale = args.dim**-0.5
        sdpa = timeit(lambda: F.scaled_dot_product_attention(q, k, v), args.reps, dev)
        side = int(math.isqrt(n))
        grid = (1, side, side, 8, 8, 0) if side * side == n and side % 8 == 0 else None
        cells = None
        if grid is not None:
            y, x = torch.arange(n, device=dev) // side, torch.arange(n, device=dev) % side
            cells = (y * 8 // side) * 8 + x * 8 // side
        rows = sampled_rows(n, args.sample_rows, dev)
        modes = {
            "exact": lambda: row_stats(q, k, scale=scale),
            "exact+maps": (lambda: row_stats(q, k, scale=scale, key_cells=cells, n_key_cells=64, key_grid=grid))
            if cells is not None else None,
            f"sampled{args.sample_rows}": lambda: row_stats(q, k, scale=scale, rows=rows),
            "chunked": lambda: row_stats(q, k, scale=scale, method="chunked"),
            "chunked+maps": (lambda: row_stats(q, k, scale=scale, key_cells=cells, n_key_cells=64, key_grid=grid,
                                               method="chunked")) if cells is not None else None,
            "fused": lambda: row_stats(q, k, scale=scale, method="fused"),
            "lse+maps": (lambda: row_stats(q, k, scale=scale, key_cells=cells, n_key_cells=64, key_grid=grid,
                                           method="lse")) if cells is not None else None,
            "fused+maps": (lambda: row_stats(q, k, scale=scale, key_cells=cells, n_key_cells=64,
                                             method="fused")) if cells is not None else None,
        }
        if dev == "cpu" and dtype == torch.float32:
            def merged_maps():
                _, rs = merged.merged_attention(q, k, v, scale)
                pooled_rows(q, k, scale=scale, lse=rs.lse, key_cells=cells, n_key_cells=64, key_grid=grid)

            modes.update({
                "sdpa+exact": lambda: (F.scaled_dot_product_attention(q, k, v), row_stats(q, k, scale=scale)),
                "merged": lambda: merged.merged_attention(q, k, v, scale),
                "sdpa+maps": (lambda: (F.scaled_dot_product_attention(q, k, v), row_stats(
                    q, k, scale=scale, key_cells=cells, n_key_cells=64, key_grid=grid))) if cells is not None else None,
                "merged+maps": merged_maps if cells is not None else None,
            })
        if cells is not None and dtype == torch.float32 and maps_kernel.applies(q, n, True):
            lse = row_stats(q, k, scale=scale, method="fused").lse

            def maps_pass(mode):
                def run():
                    with maps_kernel.forced(mode):
                        pooled_rows(q, k, scale=scale, lse=lse, key_cells=cells, n_key_cells=64, key_grid=grid)
                return run

            modes.update({"maps-pass": maps_pass("off"), "maps-pass-jit": maps_pass("on")})
        for name, fn in modes.items():
            if fn is None:
                continue
            ms = timeit(fn, args.reps, dev)
            print(f"{n:>6} {name:<12} {ms:>10.2f} {sdpa:>10.2f} {ms / sdpa:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
