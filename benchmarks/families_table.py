"""Every family's tiny preset, checked and timed in one run: a markdown table of captured layers
by kind, the largest relative error of step-0 entropy against an explicit float64 softmax on the
same SDPA calls, bit-identity with capture on, an I perturbation limited to its layer and step,
IE-Adapt guidance with s = 0 bit-identical to plain CFG, and seconds per run without and with
the default capture (median of --repeat, interleaved).

    python benchmarks/families_table.py                 # every tiny preset, 4 steps
    python benchmarks/families_table.py --models tiny-ltx tiny-mochi --steps 8 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from capture import dims  # noqa: E402
from capture.layers import inventory  # noqa: E402
from capture.models.families import family_of  # noqa: E402
from capture.models.presets import PRESETS, load_pipeline, pipeline_call  # noqa: E402
from capture.tracer import CaptureConfig, trace  # noqa: E402
from capture.tracer import takes_prompt  # noqa: E402
from ieadapt.enhance import EnhanceConfig, enhance  # noqa: E402
from tests.families.reference import check_run, record_step0  # noqa: E402

PROMPT = "a red circle moving left"
SELF = ("spatial", "temporal", "joint")


def generate(pipe, call, seed=0):
    torch.manual_seed(seed)
    text = {"prompt": PROMPT} if takes_prompt(pipe) else {}
    return pipe(generator=torch.Generator().manual_seed(seed), **call, **text).frames


def row(name: str, steps: int, repeat: int) -> dict:
    pipe, preset, defaults = load_pipeline(name)
    call = pipeline_call(preset, defaults, steps=steps)
    family = family_of(pipe)
    inv = [l for l in inventory(pipe, family) if not l.not_capturable]
    default = "self" if any(l.kind in SELF + ("self",) for l in inv) else "all"  # SanaVideo: cross only
    with tempfile.TemporaryDirectory() as root:
        generate(pipe, call)  # warm-up
        plain, traced = [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            ref = generate(pipe, call)
            plain.append(time.perf_counter() - t0)
            with trace(pipe, root=root, layers=default):
                t0 = time.perf_counter()
                generate(pipe, call)
                traced.append(time.perf_counter() - t0)
        tr = trace(pipe, root=root, layers="all")
        seen = record_step0(tr)
        with tr:
            out = generate(pipe, call)
        ds = tr.dataset()
        err = check_run(ds, seen, family)
        kinds = Counter(str(k) for k in ds[dims.LAYER_KIND].values)
        # I on the first self-attention layer that runs at step 1 (U on a cross layer if there is
        # none), steps 1-1 only
        ran = ~np.isnan(ds[dims.ENTROPY].isel(step=1).values).all(axis=(1, 2, 3))
        names = ds[dims.LAYER_NAME].values.tolist()
        kind_of = dict(zip(names, (str(k) for k in ds[dims.LAYER_KIND].values)))
        cands = [n for n in names if ran[names.index(n)]]
        target = next((n for n in cands if kind_of[n] in SELF), cands[0])
        spec = "I" if kind_of[target] in SELF else "U"
        with trace(pipe, root=root, layers=default, perturb=[f"{spec}@{target}:steps=1-1"]) as p:
            pert = generate(pipe, call)
        flags = p.dataset()[dims.PERTURBED].values
        pnames = p.dataset()[dims.LAYER_NAME].values.tolist()
        expected = np.zeros_like(flags)
        expected[1, pnames.index(target), :] = 1
        perturb_ok = bool(np.array_equal(flags, expected) and not np.array_equal(pert, ref))
        run = lambda cfg: enhance(pipe, [target], cfg, prompt=PROMPT, seed=0, call=dict(call), root=root,  # noqa: E731
                                  capture=CaptureConfig(layers=(default,)))
        guidance_ok = bool(np.array_equal(run(EnhanceConfig(mode="cfg")).frames,
                                          run(EnhanceConfig(mode="guidance", scale=0.0)).frames))
    return dict(preset=name, pipeline=type(pipe).__name__, family=family.name, spec=spec,
                layers=", ".join(f"{v} {k}" for k, v in sorted(kinds.items())),
                not_capturable=sum(1 for l in inventory(pipe, family) if l.not_capturable),
                err=err, bit_identical=bool(np.array_equal(ref, out)), perturb=perturb_ok, guidance=guidance_ok,
                plain=statistics.median(plain), traced=statistics.median(traced))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=[n for n, p in PRESETS.items() if p.tiny])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(f"# {len(args.models)} presets, {args.steps} steps, median of {args.repeat}; "
          f"{os.cpu_count()} CPU threads, torch {torch.__version__}")
    print("| preset | pipeline | family | captured layers (all) | stats rel. err | bit-identical | I perturbation "
          "| guidance s=0 | s/run plain | s/run capture | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        r = row(name, args.steps, args.repeat)
        extra = f" (+{r['not_capturable']} not capturable)" if r["not_capturable"] else ""
        print(f"| {r['preset']} | {r['pipeline']} | {r['family']} | {r['layers']}{extra} | {r['err']:.1e} | "
              f"{'yes' if r['bit_identical'] else 'NO'} | {r['spec']}: {'ok' if r['perturb'] else 'FAIL'} | "
              f"{'ok' if r['guidance'] else 'FAIL'} | {r['plain']:.2f} | {r['traced']:.2f} | "
              f"{r['traced'] / r['plain']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
