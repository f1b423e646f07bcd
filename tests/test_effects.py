"""Per-layer perturbation effects (capture.effects) against tables computed by hand in pandas."""

import numpy as np
import pandas as pd
import pytest

from capture import effects
from capture.catalog import Catalog

from .study_root import LAYERS, make_study_root

@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("effects")
    truth = make_study_root(root)
    return Catalog(root), truth


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
