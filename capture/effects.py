"""Per-layer perturbation effects of a sweep, from the catalog: what replacing one layer's
attention map (I, U, temperature) changed in the video, next to that layer's entropy.

For every complete perturbed run of a sweep, each per-video metric is set against the sweep's
unperturbed baseline of the same (prompt, seed):

- metrics measured *against* the baseline (``psnr_mean``, ``ssim_mean``: their ``baseline`` column
  names the paired run) are effects in themselves: ``effect`` is the value;
- every other metric (``temporal_flicker``, ``motion_amount_mean``, ``sharpness_mean``, the demo
  world's ``world_*_correct``) gets ``effect = perturbed - baseline``.

Torch-free (the dashboard and the report both use it).
"""

from __future__ import annotations

import pandas as pd

from . import dims

PAIRED = ("psnr_mean", "ssim_mean")
# What each metric's effect says, for labels: (label, higher effect means ...)
LABELS = {
    "ssim_mean": "SSIM vs baseline",
    "psnr_mean": "PSNR vs baseline (dB)",
    "temporal_flicker": "Δ flickering score (higher = steadier)",
    "motion_amount_mean": "Δ motion amount",
    "sharpness_mean": "Δ sharpness",
    "world_colour_correct": "Δ colour read correctly",
    "world_shape_correct": "Δ shape read correctly",
    "world_motion_correct": "Δ motion read correctly",
}

EFFECT_COLUMNS = ["run", "baseline_run", "prompt", "seed", "layer_name", "kind", "perturbation", "window", "metric",
                  "value", "baseline_value", "effect"]


def label(metric: str) -> str:
    return LABELS.get(metric, metric if metric in PAIRED else f"Δ {metric}")


def sweeps(cat) -> pd.DataFrame:
    """Sweeps in the root with their run counts (complete perturbed single-layer runs, baselines),
    newest first (by the last run to finish)."""
    return cat.query(f"""
        SELECT sweep, count(*) FILTER (WHERE sweep_layers IS NOT NULL AND sweep_layers NOT LIKE '%,%') AS single_layer,
               count(*) FILTER (WHERE sweep_layers IS NULL) AS baselines, any_value(model) AS model,
               max(finished) AS last_finished
        FROM runs WHERE sweep IS NOT NULL AND status = '{dims.COMPLETE}' GROUP BY sweep
        ORDER BY last_finished DESC NULLS LAST, sweep""")


def layer_effects(cat, sweep: str, *, single_layer: bool = True) -> pd.DataFrame:
    """Long form, one row per (perturbed run, per-video metric); see the module docstring.
    ``single_layer``: only runs that perturbed exactly one layer (the one-at-a-time study)."""
    only_one = "AND sweep_layers NOT LIKE '%,%'" if single_layer else ""
    return cat.query(f"""
        WITH r AS (SELECT run, prompt, seed, sweep_layers, sweep_perturbation, sweep_window FROM runs
                   WHERE sweep = ? AND status = '{dims.COMPLETE}'),
             b AS (SELECT run AS baseline_run, prompt, seed FROM r WHERE sweep_layers IS NULL),
             p AS (SELECT r.*, b.baseline_run FROM r JOIN b USING (prompt, seed)
                   WHERE r.sweep_layers IS NOT NULL {only_one}),
             m AS (SELECT run, metric, value, baseline FROM metrics WHERE frame IS NULL),
             k AS (SELECT DISTINCT {dims.LAYER_NAME} AS layer_name, kind FROM stats
                   WHERE run IN (SELECT baseline_run FROM b))
        SELECT p.run, p.baseline_run, p.prompt, p.seed, p.sweep_layers AS layer_name, k.kind,
               p.sweep_perturbation AS perturbation, p.sweep_window AS window, m.metric, m.value,
               mb.value AS baseline_value,
               CASE WHEN m.baseline <> '' THEN m.value ELSE m.value - mb.value END AS effect
        FROM p JOIN m ON m.run = p.run
             LEFT JOIN m AS mb ON mb.run = p.baseline_run AND mb.metric = m.metric AND mb.baseline = ''
             LEFT JOIN k ON k.layer_name = p.sweep_layers
        WHERE m.baseline = '' OR m.baseline = p.baseline_run
        ORDER BY p.sweep_layers, p.sweep_perturbation, m.metric, p.prompt, p.seed""", [sweep])


def layer_summary(effects: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread of the effect over prompts and seeds per (layer, kind, perturbation, window,
    metric); columns ``effect`` (mean), ``effect_std``, ``n``."""
    keys = ["layer_name", "kind", "perturbation", "window", "metric"]
    if effects.empty:
        return pd.DataFrame(columns=[*keys, "effect", "effect_std", "n"])
    g = effects.fillna({"window": "all", "kind": "?"}).groupby(keys, sort=False)["effect"]
    return g.agg(effect="mean", effect_std="std", n="count").reset_index()


def layer_entropy(cat, sweep: str, stat: str = dims.ENTROPY_NORM, branch: str = "cond") -> pd.DataFrame:
    """Each layer's mean ``stat`` (over steps, heads and the sweep's baseline runs) on ``branch``;
    columns layer_name, kind, value."""
    if stat not in dims.SCALAR_STATS:
        raise ValueError(f"unknown statistic {stat!r}; one of {', '.join(dims.SCALAR_STATS)}")
    return cat.query(f"""
        SELECT {dims.LAYER_NAME} AS layer_name, kind, avg({stat}) AS value FROM stats
        WHERE run IN (SELECT run FROM runs WHERE sweep = ? AND status = '{dims.COMPLETE}' AND sweep_layers IS NULL)
          AND {dims.BRANCH} = ? AND {dims.PART} = 'all'
        GROUP BY ALL ORDER BY layer_name""", [sweep, branch])


def with_entropy(summary: pd.DataFrame, entropy: pd.DataFrame) -> pd.DataFrame:
    """``summary`` joined with each layer's baseline entropy (column ``entropy``)."""
    e = entropy.rename(columns={"value": "entropy"})[["layer_name", "entropy"]]
    return summary.merge(e, on="layer_name", how="left")


def rank_correlation(x: pd.Series, y: pd.Series) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None below 3 pairs or without spread."""
    d = pd.DataFrame({"x": x, "y": y}).dropna()
    if len(d) < 3 or d["x"].nunique() < 2 or d["y"].nunique() < 2:
        return None
    return float(d["x"].rank().corr(d["y"].rank()))
