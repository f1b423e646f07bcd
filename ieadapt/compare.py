"""IE-Adapt enhancement compared with plain CFG and PAG on the same prompts and seeds (SPEC §5.2).

Methods (all captured into one trace root, each video measured against the CFG video of its
prompt and seed):

- ``cfg``: plain classifier-free guidance (the calibration runs: layers are selected from them);
- ``pag``: guidance with I on diffusers' default PAG layers (``mid_block.*attn1``), which is
  perturbed-attention guidance exactly (tested against diffusers' AnimateDiffPAGPipeline);
- ``ie-high`` / ``ie-low``: guidance with the same perturbation on the layers with the highest /
  lowest normalized entropy in the CFG runs (a fraction of each kind, spatial and temporal apart);
- ``ie-random``: the same number of layers of each kind drawn at random (fixed seed);
- ``ie-temp-high``: temperature mode on the high-entropy layers (no extra pass).

Reported per method: the weight-free metrics, the demo world's exact fidelity (classifier
accuracy per attribute) and Fréchet distance to real clips of the same prompts when the prompts
are demo-world prompts, the number of layers and the cost per video (seconds, extra denoiser
calls).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

METHODS = ("cfg", "pag", "ie-high", "ie-low", "ie-random", "ie-temp-high")


@dataclass(frozen=True)
class CompareConfig:
    scale: float = 3.0
    perturb: str = "I"
    fraction: float = 0.5  # of each kind's self-attention layers (rounded down, at least 1), for ie-high / ie-low
    factor: float = 0.8  # ie-temp-high: logits × factor on the high-entropy layers
    steps: tuple[int, int] | None = None
    random_seed: int = 0

    def __post_init__(self):
        if not 0 < self.fraction <= 1:
            raise ValueError(f"--fraction {self.fraction} must be in (0, 1]")
        for name in ("scale", "factor"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"--{name} {v} must be finite and > 0")


def demo_pairs(n_prompts: int, seeds: list[int], split: str = "heldout", seed: int = 0) -> list[tuple[str, int]]:
    """(prompt, seed) pairs: ``n_prompts`` demo-world prompts of ``split`` × ``seeds``."""
    from capture.models import world as W

    rng = np.random.default_rng(seed)
    prompts = [W.sample_spec(rng, split).prompt for _ in range(n_prompts)]
    return [(p, s) for p in prompts for s in seeds]


def layer_sets(tr, cfg_runs: list[str], kinds: dict[str, str], cfg: CompareConfig) -> dict[str, list[str]]:
    """The layers of every method, selected on the CFG runs' statistics."""
    from .enhance import pag_layers
    from .select import layer_values

    vals, _ = layer_values(tr, "entropy_norm", cfg_runs)
    out: dict[str, list[str]] = {"cfg": [], "pag": pag_layers(list(kinds.items()))}
    high, low, rand = [], [], []
    rng = np.random.default_rng(cfg.random_seed)
    for kind in ("spatial", "temporal", "joint"):
        ranked = vals[vals["kind"] == kind].sort_values(["value", "layer_name"], ascending=[False, True])
        if ranked.empty:
            continue
        k = max(1, int(cfg.fraction * len(ranked)))  # rounded down: high and low never share a layer
        names = list(ranked["layer_name"])
        high += names[:k]
        low += names[::-1][:k]
        pool = sorted(names)
        rand += [pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False))]
    out.update({"ie-high": high, "ie-low": low, "ie-random": rand, "ie-temp-high": high})
    return out


def run_comparison(pipe, pairs: list[tuple[str, int]], call: dict, root, *, model: str, cfg: CompareConfig,
                   methods=METHODS, progress=None) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Generate every (method, prompt, seed) and measure it; returns one row per video and the
    layer sets."""
    from capture.layers import inventory
    from capture.metrics import measure_run
    from capture.models.families import family_of
    from capture.tracer import CaptureConfig
    from dashboard.data import TraceRoot

    from .enhance import EnhanceConfig, enhance

    fam = family_of(pipe)
    kinds = {l.name: l.kind for l in inventory(pipe, fam) if l.kind != "cross"}
    capture = CaptureConfig(maps=False)
    rows = []

    def go(method, layers, ecfg):
        for prompt, seed in pairs:
            r = enhance(pipe, layers, ecfg, prompt=prompt, seed=seed, call=call, root=root, model=model,
                        capture=capture, attrs={"ieadapt": {"comparison": method}})
            rows.append(dict(method=method, prompt=prompt, seed=seed, run=r.run_id, run_dir=str(r.run_dir),
                             seconds=r.seconds, extra_calls=r.extra_calls, layers=len(layers)))
            if progress:
                progress(method)

    t0 = time.perf_counter()
    go("cfg", [], EnhanceConfig(mode="cfg"))
    cfg_runs = [r["run"] for r in rows]
    sets = layer_sets(TraceRoot(Path(root)), cfg_runs, kinds, cfg)
    for m in methods:
        if m == "cfg":
            continue
        if m == "ie-temp-high":
            e = EnhanceConfig(mode="temperature", factor=cfg.factor, steps=cfg.steps)
        else:
            e = EnhanceConfig(mode="guidance", scale=cfg.scale, perturb=cfg.perturb, steps=cfg.steps)
        go(m, sets[m], e)
    log.info("generated %d videos in %.0f s", len(rows), time.perf_counter() - t0)
    df = pd.DataFrame(rows)
    base = {(r.prompt, r.seed): r.run_dir for r in df[df["method"] == "cfg"].itertuples()}
    metrics = []
    for r in df.itertuples():
        paired = None if r.method == "cfg" else base[(r.prompt, r.seed)]
        m = measure_run(r.run_dir, paired)
        metrics.append(dict(zip(m.loc[m["frame"].isna(), "metric"], m.loc[m["frame"].isna(), "value"])))
    df = pd.concat([df, pd.DataFrame(metrics)], axis=1)
    return _world(df), sets


def _world(df: pd.DataFrame) -> pd.DataFrame:
    """Add the demo world's per-video correctness columns when every prompt is a world prompt."""
    from capture.models import world as W

    try:
        targets = [W.parse_prompt(p).main for p in df["prompt"]]
    except ValueError:
        return df
    from capture.metrics import run_video
    from capture.models.demo_eval import DEFAULT_CLASSIFIER
    from capture.models.world_classifier import HEADS, ClipClassifier

    clf = ClipClassifier.load(Path(DEFAULT_CLASSIFIER))
    videos = np.stack([run_video(d) for d in df["run_dir"]])
    pred = clf.predict(videos)
    for k in HEADS:
        df[f"world_{k}"] = [float(p == getattr(t, k)) for p, t in zip(pred[k], targets)]
    return df


def frechet_by_method(df: pd.DataFrame, seed: int = 0) -> dict[str, float]:
    """Fréchet distance (demo classifier features) of each method's videos to real clips of the
    same prompts, and of other real clips of those prompts (the floor) under ``real``."""
    import torch

    from capture.metrics import run_video
    from capture.models import world as W
    from capture.models.demo_eval import DEFAULT_CLASSIFIER
    from capture.models.world_classifier import ClipClassifier, frechet_distance

    clf = ClipClassifier.load(Path(DEFAULT_CLASSIFIER))
    rng = np.random.default_rng(seed)
    pairs = df[df["method"] == "cfg"][["prompt", "seed"]].itertuples(index=False)
    specs = [W.parse_prompt(p) for p, _ in pairs]
    with torch.no_grad():
        real_a = clf.features(np.stack([W.render(s, int(rng.integers(2**31))) for s in specs])).numpy()
        real_b = clf.features(np.stack([W.render(s, int(rng.integers(2**31))) for s in specs])).numpy()
        out = {"real": frechet_distance(real_b, real_a)}
        for m, g in df.groupby("method", sort=False):
            out[m] = frechet_distance(clf.features(np.stack([run_video(d) for d in g["run_dir"]])).numpy(), real_a)
    return out


def summary(df: pd.DataFrame, fd: dict[str, float] | None) -> pd.DataFrame:
    cols = [c for c in ("world_colour", "world_shape", "world_motion", "temporal_flicker", "sharpness_mean",
                        "motion_amount_mean", "ssim_mean", "psnr_mean", "seconds", "extra_calls", "layers")
            if c in df]
    s = df.groupby("method", sort=False)[cols].mean()
    s.insert(0, "videos", df.groupby("method", sort=False).size())
    if fd:
        s.insert(1 + sum(c.startswith("world_") for c in cols), "frechet", pd.Series(fd))
    return s


def paired_difference(df: pd.DataFrame, a: str, b: str, metric: str, n_boot: int = 2000, seed: int = 0):
    """Mean of (a − b) over paired (prompt, seed) videos, with a bootstrap 95 % interval."""
    x = df[df["method"] == a].set_index(["prompt", "seed"])[metric]
    y = df[df["method"] == b].set_index(["prompt", "seed"])[metric]
    d = (x - y.reindex(x.index)).dropna().to_numpy()
    rng = np.random.default_rng(seed)
    boots = rng.choice(d, size=(n_boot, len(d)), replace=True).mean(1)
    return float(d.mean()), float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def write_report(df: pd.DataFrame, sets: dict[str, list[str]], fd: dict[str, float] | None, out, *, model: str,
                 cfg: CompareConfig, call: dict, command: str) -> Path:
    """docs-ready Markdown (README.md) plus per-video and summary CSVs in ``out``."""
    from capture.naming import short_name

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df.drop(columns=["run_dir"]).to_csv(out / "videos.csv", index=False)
    s = summary(df, fd)
    s.to_csv(out / "summary.csv")
    pairs = df[df["method"] == "cfg"][["prompt", "seed"]]
    lines = [
        "# IE-Adapt enhancement vs CFG and PAG" + (" on the demo model" if model == "demo" else f" on {model}"),
        "",
        f"Generated by `{command}` ({len(pairs)} prompt × seed pairs, {pairs['prompt'].nunique()} prompts; "
        f"{call['num_inference_steps']} DDIM steps, CFG w = {call.get('guidance_scale')}). Guidance methods use "
        f"s = {cfg.scale:g} with {cfg.perturb} on their layers"
        + (f" in steps {cfg.steps[0]}–{cfg.steps[1]}" if cfg.steps else " at every step")
        + f"; ie-temp-high multiplies the high-entropy layers' logits by {cfg.factor:g}. Layers were selected on "
        f"the CFG videos' own normalized entropy: the top / bottom {cfg.fraction:g} of spatial and of temporal "
        "layers (rounded down, so the two sets are disjoint); random layers have the same count per kind "
        "(fixed seed).",
        "",
        "## Results (means over videos)",
        "",
        _markdown(s),
        "",
        "Columns: `world_*` — share of videos whose colour / shape / motion direction the demo world's classifier "
        "reads as the prompt says; `frechet` — Fréchet distance to real clips of the same prompts in the "
        "classifier's feature space"
        + (f" (real clips vs other real clips: {fd['real']:.1f})" if fd else "")
        + "; `temporal_flicker` (VBench, higher = steadier), `sharpness_mean`, `motion_amount_mean`; "
        "`ssim_mean` / `psnr_mean` against the CFG video of the same prompt and seed (how far the method moved "
        "the video); `seconds` per video including attention capture; `extra_calls` — extra denoiser calls per "
        "video (one per guided step, on the conditional batch half).",
        "",
        "## Entropy-selected vs random layers (paired over prompt × seed, bootstrap 95 % interval)",
        "",
        "| comparison | metric | mean difference | 95 % interval |",
        "| --- | --- | --- | --- |",
    ]
    verdicts = []
    for a in ("ie-high", "ie-low"):
        for metric in [c for c in ("world_shape", "world_motion", "world_colour", "temporal_flicker", "ssim_mean")
                       if c in df]:
            mean, lo, hi = paired_difference(df, a, "ie-random", metric)
            lines.append(f"| {a} − ie-random | {metric} | {mean:+.4f} | [{lo:+.4f}, {hi:+.4f}] |")
            if metric.startswith("world_") or metric == "temporal_flicker":
                verdicts.append((a, metric, mean, lo, hi))
    for a in ("ie-high", "ie-low"):
        if "motion_amount_mean" in df:
            mean, lo, hi = paired_difference(df, a, "ie-random", "motion_amount_mean")
            lines.append(f"| {a} − ie-random | motion_amount_mean | {mean:+.4f} | [{lo:+.4f}, {hi:+.4f}] |")
    better = [v for v in verdicts if v[3] > 0]
    worse = [v for v in verdicts if v[4] < 0]
    lines += ["", "**Do entropy-selected layers beat random ones here?** "
              + ("Yes, where the interval excludes zero: " + "; ".join(f"{a} on {m} ({mn:+.3f})" for a, m, mn, _, _ in better)
                 + "." if better else "No: on no quality or fidelity metric is the interval of an entropy-selected "
                 "set above random layers of the same count.")
              + (" Worse than random, interval below zero: " + "; ".join(f"{a} on {m} ({mn:+.3f})" for a, m, mn, _, _ in worse)
                 + "." if worse else "")
              + " (VBench's flicker score also rises when a method simply moves things less: read it next to "
              "`motion_amount_mean`.)",
              "", "## Layers", ""]
    for m, layers in sets.items():
        if layers:
            lines.append(f"- **{m}** ({len(layers)}): " + ", ".join(f"`{short_name(n)}`" for n in layers))
    lines += ["", "Per-video rows: `videos.csv`; this table: `summary.csv`.", ""]
    (out / "README.md").write_text("\n".join(lines))
    return out / "README.md"


def _markdown(s: pd.DataFrame) -> str:
    cols = ["method", *s.columns]
    rows = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for name, r in s.iterrows():
        vals = [f"{int(v)}" if c in ("videos", "layers") else f"{v:.3f}" for c, v in r.items()]
        rows.append(f"| {name} | " + " | ".join(vals) + " |")
    return "\n".join(rows)
