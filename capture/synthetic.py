"""Synthetic trace roots: runs written through the real store with generated statistics and maps.

For the dashboard's tests and benchmarks (a 200-run root in seconds, no model). Values are random
but structured like real traces, so views have something to show: per-layer entropy levels that
drift smoothly over steps, temporal layers more diffuse than spatial ones, attention maps that are
softmax rows with a local bias, and a short video of a moving square. Every run is written by
``RunWriter``, so the layout, attributes and catalog tables are exactly those of captured runs.

Must not import torch.
"""

from __future__ import annotations

import math

import numpy as np

from . import dims
from .store import RunWriter

HEADS = 8


def animatediff_like_layers(n_down: int = 3, heads: int = HEADS, frames: int = 16, grid: int = 8,
                            latent: int = 32, cross: bool = True) -> list[dict]:
    """Layer metadata shaped like an SD1.5 AnimateDiff UNet's attention layers, with the model's
    own module names: spatial self-attention (attn1), cross-attention (attn2, 77 text keys, when
    ``cross``) and temporal attention; 53 layers by default, 37 without cross-attention."""
    layers = []

    def add(name, kind, block, side):
        tokens = side * side
        g = min(grid, side)
        if kind == "spatial":
            layers.append(dict(name=name, kind=kind, block=block, n_query=tokens, n_key=tokens, heads=heads, gy=g,
                               gx=g))
            if cross:
                layers.append(dict(name=name[:-1] + "2", kind="cross", block=block, n_query=tokens, n_key=77,
                                   heads=heads, gy=g, gx=g))
        else:
            layers.append(dict(name=name, kind=kind, block=block, n_query=frames, n_key=frames, heads=heads, gy=g,
                               gx=g))

    for b in range(n_down + 1):
        side = max(1, latent // 2**b)
        for i in range(2):
            if b < n_down:
                add(f"down_blocks.{b}.attentions.{i}.transformer_blocks.0.attn1", "spatial", f"down.{b}", side)
            add(f"down_blocks.{b}.motion_modules.{i}.transformer_blocks.0.attn1", "temporal", f"down.{b}", side)
    side = max(1, latent // 2**n_down)
    add("mid_block.attentions.0.transformer_blocks.0.attn1", "spatial", "mid", side)
    add("mid_block.motion_modules.0.transformer_blocks.0.attn1", "temporal", "mid", side)
    for b in range(n_down + 1):
        side = max(1, latent // 2 ** (n_down - b))
        for i in range(3):
            if b > 0:
                add(f"up_blocks.{b}.attentions.{i}.transformer_blocks.0.attn1", "spatial", f"up.{b}", side)
            add(f"up_blocks.{b}.motion_modules.{i}.transformer_blocks.0.attn1", "temporal", f"up.{b}", side)
    return layers


def _softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _row_entropy(p):
    return -(p * np.log(np.clip(p, 1e-30, None))).sum(-1)


def _video(rng, frames: int, size: int) -> np.ndarray:
    clip = np.full((frames, size, size, 3), 40, dtype=np.uint8)
    colour = rng.integers(80, 255, 3).astype(np.uint8)
    s = size // 4
    y = int(rng.integers(0, size - s))
    for f in range(frames):
        x = int(f * (size - s) / max(1, frames - 1))
        clip[f, y : y + s, x : x + s] = colour
    return clip


def write_run(root, rng: np.random.Generator, *, layers: list[dict], steps: int = 25, frames: int = 16,
              grid: int = 8, branches=dims.BRANCHES_CFG, maps: bool = True, video_size: int = 32,
              attrs: dict | None = None, status: str = dims.COMPLETE, run_id: str | None = None,
              perturbed_layers: tuple[int, ...] = (), maps_every: int = 1, timesteps=None) -> str:
    """Write one synthetic run; returns its id. ``status`` 'running' leaves it unfinished, 'failed'
    marks it failed. ``perturbed_layers``: layer indices flagged perturbed at every step.
    ``maps_every``: maps only at steps that are multiples of it (capture's ``maps_every``).
    ``timesteps``: the scheduler's timestep at each step (default: evenly from 999 to 0)."""
    nl, nb = len(layers), len(branches)
    heads = max(l["heads"] for l in layers)
    a = {"model": "synthetic", "family": "animatediff", "prompt": "a synthetic prompt", "negative_prompt": "",
         "seed": 0, "num_inference_steps": steps, "num_frames": frames, "height": video_size, "width": video_size,
         "guidance_scale": 7.5, "capture": {"mode": "exact", "maps": maps, "grid": grid, "maps_every": maps_every},
         "layers_selected": [l["name"] for l in layers], "perturbation": [], "synthetic": True}
    a.update(attrs or {})
    w = RunWriter(root, a, run_id=run_id)
    # per-layer level and per-head spread of normalized entropy; temporal layers more diffuse
    level = np.array([rng.uniform(0.55, 0.95) if l["kind"] == "temporal" else rng.uniform(0.2, 0.8) for l in layers])
    level[[i for i, l in enumerate(layers) if l["kind"] == "cross"]] *= 0.6  # text attention is peaked
    head_offset = rng.normal(0, 0.05, (nl, heads))
    drift = rng.normal(0, 0.08, nl)
    energy_scale = np.exp(rng.normal(0, 0.7, nl)) * np.array([l["n_query"] for l in layers])
    timesteps = np.linspace(999, 0, steps).round() if timesteps is None else np.asarray(timesteps, dtype=float)
    if len(timesteps) != steps:
        raise ValueError(f"{len(timesteps)} timesteps for {steps} steps")
    perturbed = np.zeros((nl, nb), dtype=bool)
    perturbed[list(perturbed_layers)] = True
    for s in range(steps):
        phase = s / max(1, steps - 1)
        results = []
        for li, lay in enumerate(layers):
            h = lay["heads"]
            en = np.clip(level[li] + drift[li] * phase + head_offset[li, :h] + rng.normal(0, 0.01, (nb, h)), 0.01, 0.99)
            log_keys = math.log(lay["n_key"])
            r = {dims.ENTROPY_NORM: np.full((nb, len(dims.PARTS), h), np.nan, dtype="float32")}
            r[dims.ENTROPY_NORM][:, 0] = en
            r[dims.ENTROPY] = r[dims.ENTROPY_NORM] * log_keys
            ve = energy_scale[li] * (1 + rng.uniform(0, 0.1, (nb, h)))
            r[dims.VALUE_ENERGY] = np.full_like(r[dims.ENTROPY], np.nan)
            r[dims.VALUE_ENERGY][:, 0] = ve
            r[dims.ENERGY] = np.full_like(r[dims.ENTROPY], np.nan)
            r[dims.ENERGY][:, 0] = ve * (1.05 - en) * (0.8 + 0.4 * phase)  # diffuse attention averages V away
            r[dims.MASS] = np.full_like(r[dims.ENTROPY], np.nan)
            r[dims.MASS][:, 0] = 1.0
            if maps and s % maps_every == 0:
                gy, gx = lay["gy"], lay["gx"]
                g2 = gy * gx
                sharp = 6.0 * (1.0 - float(en.mean()))
                if lay["kind"] == "cross":  # no key grid: text tokens
                    r[dims.MAP_SPATIAL] = None
                    r[dims.MAP_TEMPORAL] = np.full((nb, frames, frames), np.nan, dtype="float32")
                else:  # spatial: cell maps; temporal: frame maps; joint (across both): both
                    r[dims.MAP_SPATIAL] = None
                    r[dims.MAP_TEMPORAL] = np.full((nb, frames, frames), 1.0 / frames, dtype="float32")
                    if lay["kind"] in ("spatial", "joint"):
                        yy, xx = np.divmod(np.arange(g2), gx)
                        d2 = (yy[:, None] - yy[None]) ** 2 + (xx[:, None] - xx[None]) ** 2
                        logits = -sharp * np.sqrt(d2)[None] + rng.normal(0, 0.6, (nb, g2, g2))
                        r[dims.MAP_SPATIAL] = _softmax(logits).astype("float32")
                    if lay["kind"] in ("temporal", "joint"):
                        idx = np.arange(frames)
                        logits = -sharp * np.abs(idx[:, None] - idx[None])[None] + rng.normal(0, 0.6, (nb, frames, frames))
                        r[dims.MAP_TEMPORAL] = _softmax(logits).astype("float32")
                field = rng.normal(0, 0.1, (nb, frames, g2)) + np.linspace(-0.1, 0.1, g2)
                r[dims.ENTROPY_MAP] = (np.clip(en.mean(-1)[:, None, None] + field, 0.01, 0.99) * log_keys).astype("float32")
            elif not maps:
                for k in (dims.MAP_SPATIAL, dims.MAP_TEMPORAL, dims.ENTROPY_MAP):
                    r[k] = None
            # (a step without maps in a maps_every run has no map keys, as Accumulator.result gives)
            results.append(r)
        w.write_step(s, float(timesteps[s]), layers, list(branches), results, perturbed, grid, frames)
    if status == dims.RUNNING:
        w.flush()
        return w.run_id
    if status == dims.FAILED:
        w.fail("RuntimeError: synthetic failure")
        return w.run_id
    w.write_video(_video(rng, frames, video_size))
    w.complete(seconds=0.0)
    return w.run_id


PROMPTS = ("a red circle moving left", "a blue square moving up", "a green triangle standing still",
           "a cat walking on the beach", "fireworks over a city at night", "a car driving through snow")


def make_root(root, *, runs: int = 200, steps: int = 25, map_runs: int = 10, heads: int = HEADS, frames: int = 16,
              seed: int = 0, progress=None, first: int = 0) -> list[str]:
    """A benchmark root: ``runs`` complete runs of an AnimateDiff-shaped model (53 attention layers:
    spatial, cross, temporal) with varied prompts, seeds and perturbations; the first ``map_runs``
    carry attention maps, the rest scalar statistics only (maps are ~20 MB per run at this size).
    ``first``: index of the first run to write (runs first..runs-1; so several processes can
    write one root, each its own range, with the same runs a single process would write)."""
    layers = animatediff_like_layers(heads=heads, frames=frames)
    ids = []
    for i in range(first, runs):
        rng = np.random.default_rng([seed, i])
        pert = [] if i % 4 else [{"spec": f"{'IU'[i // 4 % 2]}@{layers[i % len(layers)]['name']}"}]
        attrs = {"model": f"synthetic-{'ab'[i % 2]}", "prompt": PROMPTS[i % len(PROMPTS)], "seed": int(i // 6),
                 "perturbation": pert}
        ids.append(write_run(root, rng, layers=layers, steps=steps, frames=frames, maps=i < map_runs, attrs=attrs,
                             run_id=f"bench-{i:04d}", perturbed_layers=(i % len(layers),) if pert else ()))
        if progress:
            progress(i + 1)
    return ids
