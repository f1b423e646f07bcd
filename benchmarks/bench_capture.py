"""End-to-end cost of capture: generation without capture vs with capture (stats only / with maps).

    python benchmarks/bench_capture.py                                   # tiny-animatediff, demo size
    python benchmarks/bench_capture.py --height 256 --width 256 --frames 16
    python benchmarks/bench_capture.py --model sd15-animatediff-random --device cuda --dtype float16 \
        --height 512 --width 512 --frames 16 --steps 10                # real-size random weights (GPU)

Each mode runs in its own fresh process (so peak memory is its own), with the same warm-up and
the same seeds (modes: none, stats = every self-attention layer and step without maps, maps = the
default capture, stats-sampled = stats from
256 sampled query rows per map); the parent prints median wall time, peak RSS (and peak GPU memory on CUDA), the
ratios to the no-capture run, and the bytes one run's store takes on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

MODES = ("none", "stats", "maps", "stats-sampled")


def build(args):
    import torch

    if args.model in ("sd15-animatediff-random", "cogvideox-2b-random"):
        import realsize

        pipe = realsize.build(args.model, device=args.device, dtype=getattr(torch, args.dtype))
        return pipe, realsize.CALL_KWARGS.get(args.model, {})
    from capture.models.presets import load_pipeline

    pipe, preset, _ = load_pipeline(args.model, dtype=None if args.dtype == "float32" else args.dtype,
                                    device=args.device)
    return pipe, dict(preset.call_kwargs) if preset else {}


def worker(args) -> dict:
    import torch

    from capture.tracer import trace

    pipe, extra = build(args)
    call = dict(num_frames=args.frames, height=args.height, width=args.width, num_inference_steps=args.steps,
                guidance_scale=7.5, output_type="np", **extra)
    root = Path(tempfile.mkdtemp(prefix="attnlens-bench-"))

    def once(seed, steps=None):
        kw = dict(call, num_inference_steps=steps or args.steps)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        if args.mode == "none":
            pipe("a red circle moving left", generator=gen, **kw)
            return None
        with trace(pipe, root=root, maps=args.mode.startswith("maps"), sample_rows=256 if args.mode.endswith("sampled") else None) as tr:
            pipe("a red circle moving left", generator=gen, **kw)
        return tr.run_dirs[-1]

    cuda = args.device and args.device.startswith("cuda")
    once(100, steps=2)  # warm-up: kernels, allocator, first-call caches
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    secs, last = [], None
    for r in range(args.reps):
        t0 = time.perf_counter()
        last = once(r)
        if cuda:
            torch.cuda.synchronize()
        secs.append(time.perf_counter() - t0)
    out = {"seconds": secs, "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if cuda:
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if last is not None:
        out["store_bytes"] = sum(f.stat().st_size for f in Path(last).rglob("*") if f.is_file())
        out["zarr_bytes"] = sum(f.stat().st_size for f in (Path(last) / "trace.zarr").rglob("*") if f.is_file())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-animatediff")
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(worker(args)))
        return
    base = [sys.executable, __file__, "--model", args.model, "--height", str(args.height), "--width",
            str(args.width), "--frames", str(args.frames), "--steps", str(args.steps), "--reps", str(args.reps),
            "--dtype", args.dtype] + (["--device", args.device] if args.device else [])
    print(f"model={args.model} {args.frames}x{args.height}x{args.width} steps={args.steps} reps={args.reps} "
          f"device={args.device or 'cpu'} dtype={args.dtype}", flush=True)
    res = {}
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error")
    for mode in args.modes:
        p = subprocess.run(base + ["--mode", mode], capture_output=True, text=True, env=env)
        if p.returncode != 0:
            print(f"{mode}: failed\n{p.stderr[-3000:]}", flush=True)
            continue
        res[mode] = json.loads(p.stdout.strip().splitlines()[-1])
        r = res[mode]
        print(f"  {mode:<15} median {statistics.median(r['seconds']):8.2f} s  rss {r['rss_peak_mb']:8.0f} MB"
              + (f"  gpu {r['gpu_peak_mb']:8.0f} MB" if "gpu_peak_mb" in r else ""), flush=True)
    if "none" not in res:
        return
    t0 = statistics.median(res["none"]["seconds"])
    print(f"\n{'mode':<15}{'seconds':>10}{'time x':>9}{'rss MB':>10}{'rss x':>8}{'gpu MB':>10}{'gpu x':>8}{'store MB':>10}")
    for mode, r in res.items():
        t = statistics.median(r["seconds"])
        g = r.get("gpu_peak_mb")
        g0 = res["none"].get("gpu_peak_mb")
        print(f"{mode:<15}{t:>10.2f}{t / t0:>9.2f}{r['rss_peak_mb']:>10.0f}{r['rss_peak_mb'] / res['none']['rss_peak_mb']:>8.2f}"
              f"{(g or 0):>10.0f}{(g / g0 if g and g0 else float('nan')):>8.2f}"
              f"{r.get('store_bytes', 0) / 2**20:>10.2f}")


if __name__ == "__main__":
    main()
