"""Per-layer perturbation effects (capture.effects) against tables computed by hand in pandas."""

import numpy as np
import pandas as pd
import pytest

from capture import effects
from capture.catalog import Catalog, write_run_metrics
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


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("effects")
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
    return Catalog(root), pd.DataFrame(truth, columns=cols)


def test_effects_match_a_hand_computed_table(study):
    cat, truth = study
    got = effects.layer_effects(cat, "s1")
    assert set(got.columns) == set(effects.EFFECT_COLUMNS)
    key = ["run", "metric"]
    got = got.sort_values(key).reset_index(drop=True)
    truth = truth.sort_values(key).reset_index(drop=True)
    assert len(got) == len(truth) == 2 * 3 * 2 * 3
    assert list(got["run"]) == list(truth["run"])
    assert list(got["baseline_run"]) == list(truth["baseline_run"])
    assert list(got["layer_name"]) == list(truth["layer_name"])
    np.testing.assert_allclose(got["effect"], truth["effect"], rtol=1e-12)
    np.testing.assert_allclose(got["baseline_value"].astype(float), truth["baseline_value"], rtol=1e-12)
    kinds = {l["name"]: l["kind"] for l in LAYERS}
    assert list(got["kind"]) == [kinds[n] for n in got["layer_name"]]
    assert "s1-group" not in set(got["run"])
    assert "s1-group" in set(effects.layer_effects(cat, "s1", single_layer=False)["run"])


def test_summary_is_the_mean_over_prompts_and_seeds(study):
    cat, truth = study
    summ = effects.layer_summary(effects.layer_effects(cat, "s1"))
    want = truth.groupby(["layer_name", "perturbation", "metric"])["effect"].agg(["mean", "std", "count"])
    merged = summ.set_index(["layer_name", "perturbation", "metric"]).join(want)
    assert len(merged) == 3 * 2 * 3
    np.testing.assert_allclose(merged["effect"], merged["mean"], rtol=1e-12)
    np.testing.assert_allclose(merged["effect_std"], merged["std"], rtol=1e-12)
    assert (merged["n"] == 2).all()


def test_entropy_is_the_baselines_mean(study):
    cat, _ = study
    ent = effects.layer_entropy(cat, "s1")
    raw = cat.query("SELECT * FROM stats WHERE run IN ('s1-base-0', 's1-base-1') AND branch = 'cond' AND part = 'all'")
    want = raw.astype({"entropy_norm": "float64"}).groupby("layer_name")["entropy_norm"].mean()
    assert len(ent) == len(LAYERS)
    np.testing.assert_allclose(ent.set_index("layer_name")["value"].loc[want.index], want, rtol=1e-12)
    with pytest.raises(ValueError, match="unknown statistic"):
        effects.layer_entropy(cat, "s1", stat="nope")


def test_sweeps_lists_counts(study):
    cat, _ = study
    s = effects.sweeps(cat).set_index("sweep")
    assert s.loc["s1", "single_layer"] == 2 * 3 * 2 and s.loc["s1", "baselines"] == 2
    assert s.loc["s2", "baselines"] == 1


def test_rank_correlation_matches_a_brute_force_spearman():
    rng = np.random.default_rng(3)
    x, y = pd.Series(rng.normal(size=30)), pd.Series(rng.normal(size=30))
    y[:5] = y[0]  # ties
    rx, ry = x.rank(), y.rank()
    want = np.corrcoef(rx, ry)[0, 1]
    assert effects.rank_correlation(x, y) == pytest.approx(want)
    assert effects.rank_correlation(x[:2], y[:2]) is None
    assert effects.rank_correlation(x, pd.Series(np.ones(30))) is None
