"""One capture in a fresh process, as ``attnlens capture`` makes it, against the same generation
without capture: what a researcher waits for when capturing one video.

    python benchmarks/bench_first_capture.py                  # demo model, 5 rounds
    python benchmarks/bench_first_capture.py --model tiny-animatediff --reps 3

Each round starts one Python process per mode, interleaved on the same seed:

- ``plain``: import torch and attnlens' preset loader, load the model, generate;
- ``capture``: the same, the generation inside ``trace(...)`` (statistics and maps, the default);
- ``cli``: ``attnlens capture --model M --prompt P --seed 0`` itself (progress bars included).

Prints the medians of: loading (imports and the model), the generation (for ``capture`` until the
run is complete on disk), and the process's whole wall time; and the capture's cost over ``plain``
for each. bench_overhead.py measures the same generation again and again in one process; this is
its first time, when the capture's own imports and first calls are paid too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a red circle moving left"

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import torch
from capture.models.presets import load_pipeline, pipeline_call, set_guider_scale
mode, model, root = sys.argv[1:4]
pipe, preset, defaults = load_pipeline(model, quiet=True)
pipe.set_progress_bar_config(disable=True)
kw = pipeline_call(preset, defaults)  # what `attnlens capture` calls with its default options
set_guider_scale(pipe, preset, defaults.get("guidance"))
t1 = time.perf_counter()
gen = torch.Generator().manual_seed(0)
if mode == "capture":
    from capture.tracer import trace
    with trace(pipe, root=root, model=model):
        pipe(%r, generator=gen, **kw)
else:
    pipe(%r, generator=gen, **kw)
t2 = time.perf_counter()
print("TIMES=" + json.dumps({"load": t1 - t0, "generate": t2 - t1}))
""" % (PROMPT, PROMPT)


def one(mode: str, model: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory(prefix="attnlens-first-") as root:
        if mode == "cli":
            cmd = [sys.executable, "-m", "capture.cli", "capture", "--model", model, "--prompt", PROMPT, "--seed", "0",
                   "--root", root]
        else:
            cmd = [sys.executable, "-c", CHILD, mode, model, root]
        t = time.perf_counter()
        got = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        wall = time.perf_counter() - t
    if got.returncode:
        raise RuntimeError(f"{mode} failed:\n{got.stderr[-3000:]}")
    out = {"wall": wall}
    for ln in got.stdout.splitlines():
        if ln.startswith("TIMES="):
            out.update(json.loads(ln[6:]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--modes", nargs="+", default=["plain", "capture", "cli"], choices=["plain", "capture", "cli"])
    args = ap.parse_args()
    got: dict[str, list[dict]] = {m: [] for m in args.modes}
    for r in range(args.reps):
        for m in args.modes:
            got[m].append(one(m, args.model))
        print(f"  round {r + 1}/{args.reps}: " + "  ".join(f"{m} {got[m][-1]['wall']:.2f} s" for m in args.modes),
              flush=True)
    med = {m: {k: statistics.median(x[k] for x in xs) for k in xs[0]} for m, xs in got.items()}
    print(f"{args.model}, one generation per fresh process, medians of {args.reps} (seconds)")
    print(f"  {'mode':<10}{'load':>8}{'generate':>10}{'process':>10}")
    for m in args.modes:
        d = med[m]
        print(f"  {m:<10}{d.get('load', float('nan')):>8.2f}{d.get('generate', float('nan')):>10.2f}{d['wall']:>10.2f}")
    if "plain" in med and "capture" in med:
        p, c = med["plain"], med["capture"]
        print(f"  capture over plain: generation {c['generate'] / p['generate']:.2f}x (+{c['generate'] - p['generate']:.2f} s), "
              f"process +{c['wall'] - p['wall']:.2f} s")
    if "plain" in med and "cli" in med:
        print(f"  attnlens capture over the plain script: process +{med['cli']['wall'] - med['plain']['wall']:.2f} s")


if __name__ == "__main__":
    main()
