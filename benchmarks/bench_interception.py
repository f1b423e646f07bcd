"""What intercepting SDPA costs by itself, on the demo model: no statistics, no store.

    python benchmarks/bench_interception.py              # demo, 25 steps, median of 7
    python benchmarks/bench_interception.py --reps 11

Every self-attention layer gets capture.hooks.AttentionLayerHook with a handler that only makes
the model's own call, so what is measured is the route that brings the call to the handler:

- ``plain``: no hooks;
- ``hook only``: a diffusers ModelHook on each layer that runs the forward untouched (the
  registry's own cost);
- ``mode``: every forward under a TorchFunctionMode (the route for processors that hold their
  own reference to SDPA): every torch op of the forward makes a Python round trip;
- ``attribute``: the default: the first forward under both routes, later forwards with
  ``torch.nn.functional.scaled_dot_product_attention`` routed to the handler and nothing else
  touched.

Rounds are interleaved; prints median and best seconds and the extra milliseconds per run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench_overhead import CASES, PROMPT, self_attention_modules  # noqa: E402


class _Passthrough:
    """A ModelHook that runs the forward as it is (built lazily: diffusers imports on first use)."""

    @staticmethod
    def make():
        from diffusers.hooks import ModelHook

        class Passthrough(ModelHook):
            def new_forward(self, module, *args, **kwargs):
                return self.fn_ref.original_forward(*args, **kwargs)

        return Passthrough()


def run(pipe, case: dict, mods: dict, route: str) -> float:
    from capture import hooks

    for name, m in mods.items():
        if route == "hook only":
            hooks.register(m, _Passthrough.make(), hooks.LAYER_HOOK)
        elif route in ("mode", "attribute"):
            hook = hooks.AttentionLayerHook(name, lambda layer, call: call.original())
            if route == "mode":
                hook.attribute_only = False  # never switches to the attribute route alone
            hooks.register(m, hook, hooks.LAYER_HOOK)
    try:
        t0 = time.perf_counter()
        pipe(PROMPT, generator=torch.Generator().manual_seed(0), num_frames=case["frames"], height=case["height"],
             width=case["width"], num_inference_steps=case["steps"], guidance_scale=7.5, output_type="np")
        return time.perf_counter() - t0
    finally:
        if route != "plain":
            for m in mods.values():
                hooks.remove(m, hooks.LAYER_HOOK)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    from capture.console import quiet_libraries
    from capture.models.presets import load_pipeline

    quiet_libraries()
    case = CASES["demo"]
    pipe, _, _ = load_pipeline(case["model"], quiet=True)
    pipe.set_progress_bar_config(disable=True)
    mods = {n: pipe.unet.get_submodule(n.split(".", 1)[1] if n.startswith("unet.") else n)
            for n in self_attention_modules(pipe)}
    routes = ("plain", "hook only", "mode", "attribute")
    print(f"demo {case['frames']}x{case['height']}x{case['width']}, {case['steps']} steps, {len(mods)} intercepted "
          f"layers, torch threads {torch.get_num_threads()}, median of {args.reps}", flush=True)
    for r in routes:  # warm-up
        run(pipe, dict(case, steps=2), mods, r)
    secs: dict[str, list[float]] = {r: [] for r in routes}
    for _ in range(args.reps):
        for r in routes:
            secs[r].append(run(pipe, case, mods, r))
    p, pb = statistics.median(secs["plain"]), min(secs["plain"])
    print(f"  {'route':<11}{'median s':>10}{'extra ms':>10}{'best s':>9}{'extra ms':>10}")
    for r, s in secs.items():
        med, best = statistics.median(s), min(s)
        print(f"  {r:<11}{med:>10.3f}{(med - p) * 1e3:>10.0f}{best:>9.3f}{(best - pb) * 1e3:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
