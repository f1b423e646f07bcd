"""A trace root with one small synthetic sweep: two (prompt, seed) baselines, three layers
perturbed one at a time with I and U, metrics with known values; and the effects expected by hand."""

import numpy as np
import pandas as pd

from capture.catalog import write_run_metrics
from capture.store import run_dir
from capture.synthetic import animatediff_like_layers, write_run

LAYERS = animatediff_like_layers(n_down=1, heads=2, frames=4, grid=4, latent=8, cross=False)
PERTURBED = [LAYERS[0]["name"], LAYERS[1]["name"], LAYERS[2]["name"]]


def _run(root, rng, rid, prompt, seed, task=None, sweep="s1"):
    attrs = {"prompt": prompt, "seed": seed, "sweep": sweep, "model": "synthetic"}
    if task:
        attrs["sweep_task"] = task
    write_run(root, rng, layers=LAYERS, steps=3, frames=4, grid=4, maps=False, video_size=8, attrs=attrs,
              run_id=rid)
    return rid


def make_study_root(root) -> pd.DataFrame:
    """Write the sweep ``s1`` (and a baseline of ``s2``) into ``root``; returns the expected effects."""
    rng = np.random.default_rng(7)
    truth = []  # (run, baseline, layer, perturbation, metric, value, baseline value)
    for prompt, seed in (("a red circle", 0), ("a blue square", 1)):
        base = _run(root, rng, f"s1-base-{seed}", prompt, seed)
        bvals = {"temporal_flicker": rng.uniform(0.5, 1), "sharpness_mean": rng.uniform(10, 20)}
        write_run_metrics(run_dir(root, base), pd.DataFrame(
            [(m, v, None, "") for m, v in bvals.items()] + [("sharpness", 1.0, 0, "")],
            columns=["metric", "value", "frame", "baseline"]))
        for li, name in enumerate(PERTURBED):
            for kind in ("I", "U"):
                rid = _run(root, rng, f"s1-{seed}-{li}-{kind}", prompt, seed,
                           {"layer_set": "each:self", "layers": [name], "perturbation": kind, "window": "all"})
                vals = {"temporal_flicker": rng.uniform(0.5, 1), "sharpness_mean": rng.uniform(10, 20)}
                ssim = rng.uniform(0.2, 1)
                write_run_metrics(run_dir(root, rid), pd.DataFrame(
                    [(m, v, None, "") for m, v in vals.items()] + [("ssim_mean", ssim, None, base),
                                                                   ("ssim", 0.5, 0, base)],
                    columns=["metric", "value", "frame", "baseline"]))
                truth += [(rid, base, name, kind, m, v, bvals[m], v - bvals[m]) for m, v in vals.items()]
                truth.append((rid, base, name, kind, "ssim_mean", ssim, np.nan, ssim))
    # a group run (two layers) and a run of another sweep: neither is a one-layer effect of s1
    _run(root, rng, "s1-group", "a red circle", 0,
         {"layer_set": "kind=spatial", "layers": PERTURBED[:2], "perturbation": "I", "window": "all"})
    write_run_metrics(run_dir(root, "s1-group"), pd.DataFrame([("temporal_flicker", 0.1, None, "")],
                                                              columns=["metric", "value", "frame", "baseline"]))
    _run(root, rng, "s2-base", "a red circle", 0, sweep="s2")
    cols = ["run", "baseline_run", "layer_name", "perturbation", "metric", "value", "baseline_value", "effect"]
    return pd.DataFrame(truth, columns=cols)
