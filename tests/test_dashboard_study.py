"""The Perturbation study view through AppTest, on a root whose effects are known by hand."""

import json
import sys

import numpy as np
import pytest

from .study_root import make_study_root
from .test_dashboard_app import _arr, _title

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest


@pytest.fixture(scope="module")
def study_root(tmp_path_factory):
    path = tmp_path_factory.mktemp("studyroot")
    return path, make_study_root(path)


def _app(path, monkeypatch, **query):
    monkeypatch.setenv("ATTNLENS_ROOT", str(path))
    monkeypatch.setattr(sys, "argv", ["streamlit"])
    from dashboard import cache

    cache.reload()
    at = AppTest.from_string("from dashboard.views import perturbation\nperturbation.render()", default_timeout=90)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def test_view_shows_per_layer_effects_histograms_scatter_and_videos(study_root, monkeypatch):
    path, truth = study_root
    at = _app(path, monkeypatch, ps_sweep="s1", ps_metric="ssim_mean")
    assert not at.exception, [e.value for e in at.exception]
    figs = [json.loads(e.proto.spec) for e in at.get("plotly_chart")]
    assert len(figs) == 3
    assert "Per layer" in _title(figs[0]) and "SSIM vs baseline" in _title(figs[0])
    assert "Distribution over layers" in _title(figs[1]) and "entropy" in _title(figs[2])
    # the bars are the hand-computed means over the two (prompt, seed) pairs
    want = truth[truth["metric"] == "ssim_mean"].groupby(["layer_name", "perturbation"])["effect"].mean()
    seen = 0
    for tr in figs[0]["data"]:
        for name, y in zip(tr["customdata"], _arr(tr["y"])):
            assert y == pytest.approx(want[(name, tr["name"])])
            seen += 1
    assert seen == len(want) == 6
    # spatial and temporal layers in separate panels
    assert {a["text"] for a in figs[0]["layout"]["annotations"]} >= {"spatial layers", "temporal layers"}
    # baseline and perturbed side by side for the largest effect (lowest SSIM) first
    worst = want.idxmin()
    assert at.selectbox(key="ps_layer").value == f"{worst[0]}|{worst[1]}"
    pair = at.selectbox(key="ps_pair")
    assert pair.value == 0 and len(pair.options) == 2  # the layer's two (prompt, seed) pairs
    assert len(at.get("image")) == 2  # the baseline's and the perturbed run's GIFs
    caption = " ".join(c.value for c in at.caption)
    assert f"map replaced by {worst[1]}" in caption


def test_view_switches_metric_and_filters_perturbations(study_root, monkeypatch):
    path, truth = study_root
    at = _app(path, monkeypatch, ps_sweep="s1", ps_metric="temporal_flicker", ps_perts="U")
    assert not at.exception
    figs = [json.loads(e.proto.spec) for e in at.get("plotly_chart")]
    assert {tr["name"] for tr in figs[0]["data"]} == {"U"}
    want = truth[(truth["metric"] == "temporal_flicker") & (truth["perturbation"] == "U")]
    want = want.groupby("layer_name")["effect"].mean()
    got = {n: y for tr in figs[0]["data"] for n, y in zip(tr["customdata"], _arr(tr["y"]))}
    assert got == pytest.approx(want.to_dict())
    assert np.all(np.isfinite(list(got.values())))


def test_view_without_sweeps_says_how_to_make_one(tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    at = _app(tmp_path, monkeypatch)
    assert not at.exception
    assert any("attnlens study" in i.value for i in at.info)
