"""Capture vs plain generation vs the hook a researcher would hand-write, in one process.

    python benchmarks/bench_overhead.py                                  # both default cases
    python benchmarks/bench_overhead.py --case demo --reps 5
    python benchmarks/bench_overhead.py --case animatediff --profile build/profile   # + profiles

Cases: ``demo`` (the shipped demo model at its default size: 8 frames x 32x32, 25 steps) and
``animatediff`` (tiny-animatediff at 16 frames x 256x256, 4 steps). Modes, interleaved round by
round on the same seeds, median of ``--reps`` rounds after one warm-up round:

- ``plain``: the pipeline alone;
- ``hand``: the baseline a user writes today: an attention processor on every self-attention
  layer that materializes the softmax map the way diffusers' ``AttnProcessor`` does
  (``attn.get_attention_scores``) and keeps each layer's mean row entropy and output energy
  per call (as attention-map-diffusers and DAAM do);
- ``stats``: ``attnlens`` exact statistics on the same layers, no maps;
- ``maps``: the default capture (exact statistics + downsampled maps, every step);
- ``maps-k4``: statistics every step, maps every 4th step (``maps_every=4``);
- ``maps-every4``: maps and statistics every 4th step; ``sampled``: statistics of 256 rows;
- ``maps-grid4``, ``maps-grid16``: the default capture with maps pooled onto at most 4x4 or 16x16
  cells instead of 8x8 (``grid=``; a layer's grid is never finer than its latent);
- ``maps-eager``: ``maps`` without the compiled maps kernel (capture.maps_kernel), as with
  ``ATTNLENS_COMPILE=0``: the eager passes it replaces, for a before/after in one run.

The benchmark sets ``ATTNLENS_COMPILE=1`` (unless set): ``maps`` is then what a long capture or a
sweep gets once the kernel has compiled, and ``maps-eager`` what a single short capture gets (by
default the kernel compiles only after 10 s of the eager passes in a process).

The warm-up round (2 steps) is timed too and printed beside each mode: it holds first-call costs,
compiling the maps kernel among them.

Prints a table of median and best-round seconds and their ratios to ``plain``, and the median of
the rounds' own ratios to their ``plain`` run (``paired``: steadier when the machine's speed
drifts across rounds). ``--profile DIR`` also writes a
cProfile summary of one ``stats`` and one ``maps`` generation (top functions by own time) so
the time per layer call can be traced to Python, op dispatch or arithmetic.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ATTNLENS_COMPILE", "1")  # see the docstring
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

CASES = {
    "demo": dict(model="demo", frames=8, height=32, width=32, steps=25),
    "animatediff": dict(model="tiny-animatediff", frames=16, height=256, width=256, steps=4),
}
MODES = ("plain", "hand", "stats", "maps", "maps-k4", "maps-every4", "sampled", "maps-eager", "maps-grid4",
         "maps-grid16")
PROMPT = "a red circle moving left"


class HandWrittenProcessor:
    """What a researcher writes: diffusers' AttnProcessor with the probabilities kept for statistics."""

    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        ndim = hidden_states.ndim
        if ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, seq, _ = ctx.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            ctx = attn.norm_encoder_hidden_states(ctx)
        key, value = attn.to_k(ctx), attn.to_v(ctx)
        query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B*H, Nq, Nk), materialized
        out = torch.bmm(probs, value)
        entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1).mean()
        self.log.append((self.name, float(entropy), float(out.pow(2).sum())))
        hidden_states = attn.batch_to_head_dim(out)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def self_attention_modules(pipe) -> list[str]:
    """The modules attnlens captures by default (so both hooks see the same layers)."""
    from capture.layers import DEFAULT_SELECTION, inventory, select
    from capture.models.families import family_of

    fam = family_of(pipe)
    return sorted({l.module for l in select(inventory(pipe, fam), [DEFAULT_SELECTION])})


def run_mode(pipe, mode: str, case: dict, seed: int, root: Path, mods: dict) -> float:
    from capture.tracer import trace

    kw = dict(num_frames=case["frames"], height=case["height"], width=case["width"],
              num_inference_steps=case["steps"], guidance_scale=7.5, output_type="np")
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    if mode == "plain":
        pipe(PROMPT, generator=gen, **kw)
    elif mode == "hand":
        log: list = []
        saved = {n: m.processor for n, m in mods.items()}
        try:
            for n, m in mods.items():
                m.set_processor(HandWrittenProcessor(n, log))
            pipe(PROMPT, generator=gen, **kw)
        finally:
            for n, m in mods.items():
                m.set_processor(saved[n])
    elif mode == "maps-eager":
        from capture import maps_kernel

        with maps_kernel.forced("off"):
            return run_mode(pipe, "maps", case, seed, root, mods)
    else:
        opts = dict(maps=mode.startswith("maps"), every=4 if mode.endswith("every4") else 1,
                    maps_every=4 if mode == "maps-k4" else 1, sample_rows=256 if mode == "sampled" else None,
                    grid=int(mode.removeprefix("maps-grid")) if mode.startswith("maps-grid") else 8)
        with trace(pipe, root=root, **opts):
            pipe(PROMPT, generator=gen, **kw)
    return time.perf_counter() - t0


def profile(pipe, case, mode, root, mods, out: Path) -> None:
    prof = cProfile.Profile()
    prof.enable()
    run_mode(pipe, mode, case, 0, root, mods)
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(30)
    out.write_text(s.getvalue())
    print(f"  profile of {mode}: {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=sorted(CASES), nargs="+", default=list(CASES))
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--profile", type=Path, default=None, help="write cProfile summaries into this folder")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from capture.console import quiet_libraries
    from capture.models.presets import load_pipeline

    quiet_libraries()
    root = Path(tempfile.mkdtemp(prefix="attnlens-overhead-"))
    for name in args.case:
        case = CASES[name]
        pipe, _, _ = load_pipeline(case["model"], quiet=True)
        pipe.set_progress_bar_config(disable=True)
        den = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
        mods = {n: den.get_submodule(n.split(".", 1)[1] if n.startswith(("unet.", "transformer.")) else n)
                for n in self_attention_modules(pipe)}
        print(f"{name}: {case['model']} {case['frames']}x{case['height']}x{case['width']}, {case['steps']} steps, "
              f"{len(mods)} self-attention layers, torch threads {torch.get_num_threads()}", flush=True)
        warm = {m: run_mode(pipe, m, dict(case, steps=2), 100, root, mods)  # first-call caches, compiling
                for m in args.modes}
        secs: dict[str, list[float]] = {m: [] for m in args.modes}
        for r in range(args.reps):
            for mode in args.modes:
                secs[mode].append(run_mode(pipe, mode, case, r, root, mods))
        t0 = statistics.median(secs["plain"]) if "plain" in secs else float("nan")
        b0 = min(secs["plain"]) if "plain" in secs else float("nan")
        # the best round is the least disturbed by other load on a shared machine (as timeit
        # reports); the median is shown beside it. "paired" is the median over rounds of each
        # round's ratio to that round's plain run, taken minutes apart at most: a machine that
        # slows down or speeds up across the rounds moves both sides of each ratio alike
        print(f"  {'mode':<13}{'median s':>10}{'x plain':>9}{'best s':>9}{'x plain':>9}{'paired x':>10}"
              f"{'warm-up s':>11}   all rounds")
        for mode, s in secs.items():
            med, best = statistics.median(s), min(s)
            paired = statistics.median(x / p for x, p in zip(s, secs["plain"])) if "plain" in secs else float("nan")
            print(f"  {mode:<13}{med:>10.2f}{med / t0:>9.2f}{best:>9.2f}{best / b0:>9.2f}{paired:>10.2f}"
                  f"{warm[mode]:>11.2f}   " + " ".join(f"{x:.2f}" for x in s), flush=True)
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for mode in ("stats", "maps"):
                profile(pipe, case, mode, root, mods, args.profile / f"{name}-{mode}.txt")


if __name__ == "__main__":
    main()
