"""The dashboard reads at a glance: dark tick labels of at least 11 px on every figure of every
view, a legend wherever colour means a layer kind, steps on the axis as captured, perturbations in
words, and the study view opening on the newest sweep without carrying a choice made for another."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from capture.catalog import write_run_metrics
from capture.store import run_dir
from dashboard import figures, words

from .dashboard_root import make_root
from .study_root import PERTURBED, _run, make_study_root

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
VIEWS = ["layer_step", "proportions", "maps", "compare", "selection", "perturbation"]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    path = tmp_path_factory.mktemp("legible")
    ids = make_root(path)
    truth = make_study_root(path)
    return path, ids, truth


def _app(path, monkeypatch, view, **query):
    monkeypatch.setenv("ATTNLENS_ROOT", str(path))
    monkeypatch.setattr(sys, "argv", ["streamlit"])
    from dashboard import cache

    cache.reload()
    at = AppTest.from_string(f"from dashboard.views import {view}\n{view}.render()", default_timeout=90)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _figs(at):
    return [json.loads(e.proto.spec) for e in at.get("plotly_chart")]


def _luminance(colour: str) -> float:
    c = colour.lstrip("#")
    r, g, b = (int(c[i:i + 2], 16) / 255 for i in (0, 2, 4))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _axes(fig):
    return [(k, v) for k, v in fig["layout"].items() if k.startswith(("xaxis", "yaxis"))]


@pytest.mark.parametrize("view", VIEWS)
def test_every_axis_has_dark_ticks_of_at_least_11px(roots, monkeypatch, view):
    path, ids, _ = roots
    at = _app(path, monkeypatch, view, cmp_a=ids["a"], cmp_b=ids["b"], ps_sweep="s1")
    figs = _figs(at)
    assert figs, view
    for fig in figs:
        for name, ax in _axes(fig):
            if ax.get("visible") is False:
                continue
            font = ax.get("tickfont", {})
            assert font.get("size", 0) >= 11, (view, name, font)
            assert _luminance(font.get("color", "#ffffff")) < 0.3, (view, name, font)
            assert ax.get("automargin") is True, (view, name)  # long labels push the margin, never clipped


def test_kind_colours_have_a_legend(roots, monkeypatch):
    path, ids, _ = roots
    for view, query in (("compare", dict(cmp_a=ids["a"], cmp_b=ids["b"])), ("selection", dict(sel_kind="any"))):
        at = _app(path, monkeypatch, view, **query)
        bars = [f for f in _figs(at) if any(t["type"] == "bar" for t in f["data"])][0]
        shown = {t["name"] for t in bars["data"] if t.get("showlegend", True) and t.get("name")}
        kinds = {"spatial", "temporal", "cross"}
        assert kinds <= shown, (view, shown)


def test_compare_describes_the_perturbation_in_words(roots, monkeypatch):
    path, ids, _ = roots
    at = _app(path, monkeypatch, "compare", cmp_a=ids["a"], cmp_b=ids["b"])
    table = at.table[0].value
    row = table[table["attribute"] == "perturbation"].iloc[0]
    assert row["run A"] == "none"
    assert row["run B"] == "identity map (I) on kind=temporal, every step, both CFG branches"
    assert "{" not in " ".join(map(str, table.to_numpy().ravel()))  # no raw dicts anywhere


def test_perturbation_words():
    assert words.perturbation([{"spec": "U@mid_block.*:steps=0-3:branch=cond"}]) == \
        "uniform map (U) on mid_block.*, steps 0–3, cond branch only"
    assert words.perturbation(["T=0.5@kind=spatial", "M=0@all:video=1"]) == \
        "logits × 0.5 (T) on kind=spatial, every step, both CFG branches; " \
        "maps of video 0 injected (M) on all, every step, both CFG branches, video 1 only"
    assert words.perturbation([]) == "none"
    assert words.capture({"mode": "exact", "layers": ["self"], "every": 2, "maps": False}) == \
        "exact statistics, layers self, every 2 steps, no maps"


def test_minmax_minimum_is_visible():
    df = pd.DataFrame({"layer_name": ["a", "b", "c"], "kind": ["spatial"] * 3, "energy": [1.0, 3.0, 2.0]})
    from dashboard import rules

    for col in ("energy", "entropy_norm"):
        v = df["energy"] if col == "energy" else pd.Series([0.2, 0.9, 0.5])
        df[f"{col}_prop"] = rules.proportion(v, df["kind"], "minmax_of_kind")
        df[f"{col}_line"] = float(df[f"{col}_prop"].median())
        df[f"{col}_half"] = np.where(df[f"{col}_prop"] >= df[f"{col}_line"], "top", "bottom")
    df["entropy_norm"] = [0.2, 0.9, 0.5]
    fig = figures.proportion_figure(df, formula="minmax_of_kind", red_line="median", title="t")
    dots = [t for t in fig.data if t.type == "scatter" and t.mode == "markers" and not t.showlegend]
    assert dots and all(list(t.y) == [0.0] for t in dots)  # the zero-height bar of each panel has a dot
    assert {tuple(t.customdata) for t in dots} == {("a",)}


def test_long_titles_wrap():
    long = "where query cell 12 attends · down_blocks.0.motion_modules.0.transformer_blocks.0.attn1 · step 24"
    assert all(len(line) <= 60 for line in figures._wrap(long, 60).split("<br>"))
    assert figures._wrap(long, 60).replace("<br>", " ") == long


# --- steps as captured -----------------------------------------------------------------------------
def test_step_axis_of_an_every_2_run_is_in_captured_steps(tmp_path, monkeypatch):
    p = subprocess.run([sys.executable, "-m", "capture.cli", "capture", "--model", "tiny-animatediff", "--prompt",
                        "a red circle", "--steps", "8", "--every", "2", "--no-maps", "--quiet", "--root",
                        str(tmp_path)], capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    at = _app(tmp_path, monkeypatch, "layer_step")
    fig = _figs(at)[0]
    heat = [t for t in fig["data"] if t["type"] == "heatmap"]
    assert heat and all(list(t["x"]) == [0, 2, 4, 6] for t in heat)
    xs = [ax for name, ax in _axes(fig) if name.startswith("xaxis")]
    assert all(ax["type"] == "category" for ax in xs)
    assert all(list(ax["categoryarray"]) == [0, 2, 4, 6] for ax in xs)  # one cell per captured step, no gaps


# --- the study view: newest sweep, no stale choice -------------------------------------------------
def _second_sweep(path, truth):
    """Sweep s3, finished after s1, whose largest effect is on another layer than s1's."""
    s1_worst = truth[truth["metric"] == "ssim_mean"].groupby(["layer_name", "perturbation"])["effect"].mean().idxmin()
    rng = np.random.default_rng(3)
    base = _run(path, rng, "s3-base-0", "a red circle", 0, sweep="s3")
    target = next(n for n in PERTURBED if n != s1_worst[0])
    for li, name in enumerate(PERTURBED):
        for kind in ("I", "U"):
            rid = _run(path, rng, f"s3-0-{li}-{kind}", "a red circle", 0,
                       {"layer_set": "each:self", "layers": [name], "perturbation": kind, "window": "all"}, sweep="s3")
            ssim = 0.1 if (name, kind) == (target, "I") else 0.9
            write_run_metrics(run_dir(path, rid), pd.DataFrame([("ssim_mean", ssim, None, base)],
                                                               columns=["metric", "value", "frame", "baseline"]))
    return s1_worst, (target, "I")


def test_study_opens_on_newest_sweep_and_never_keeps_a_stale_layer(tmp_path, monkeypatch):
    truth = make_study_root(tmp_path)
    s1_worst, s3_worst = _second_sweep(tmp_path, truth)
    at = _app(tmp_path, monkeypatch, "perturbation")
    assert at.selectbox(key="ps_sweep").value == "s3"  # newest first, not alphabetical
    assert at.selectbox(key="ps_layer").value == f"{s3_worst[0]}|{s3_worst[1]}"
    # open on s1 (its largest effect), then switch to s3: the choice follows the sweep
    at = _app(tmp_path, monkeypatch, "perturbation", ps_sweep="s1", ps_metric="ssim_mean")
    assert at.selectbox(key="ps_layer").value == f"{s1_worst[0]}|{s1_worst[1]}"
    at.selectbox(key="ps_sweep").set_value("s3").run()
    assert not at.exception
    assert at.selectbox(key="ps_layer").value == f"{s3_worst[0]}|{s3_worst[1]}"
    assert at.query_params.get("ps_layer") in (None, f"{s3_worst[0]}|{s3_worst[1]}")  # the URL follows
    # a choice the user makes within one sweep stays
    other = f"{s3_worst[0]}|U"
    at.selectbox(key="ps_layer").set_value(other).run()
    assert at.selectbox(key="ps_layer").value == other
