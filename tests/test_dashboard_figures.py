"""Figure builders against hand-computed expectations on random inputs."""

import numpy as np
import pandas as pd
import pytest

from capture import dims
from dashboard import figures, rules
from dashboard.data import MapData


def _long(rng, kinds=("spatial", "temporal", "cross"), layers_per_kind=3, steps=5):
    rows, li = [], 0
    for k in kinds:
        for j in range(layers_per_kind):
            for s in range(steps):
                rows.append(dict(layer=li, layer_name=f"blocks.{li}.{k}", kind=k, step=s, timestep=1000 - s,
                                 value=rng.random()))
            li += 1
    return pd.DataFrame(rows)


def test_heatmap_panels_hold_the_pivoted_values():
    rng = np.random.default_rng(1)
    df = _long(rng).sample(frac=1.0, random_state=0)  # input order must not matter
    fig = figures.layer_step_heatmap(df, label="x", title="t")
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == 3
    for t, k in zip(heat, ("spatial", "temporal", "cross")):
        sub = df[df["kind"] == k].sort_values(["layer", "step"])
        expected = sub.pivot(index="layer", columns="step", values="value").to_numpy()
        np.testing.assert_array_equal(np.asarray(t.z), expected)
        assert list(t.customdata[:, 0]) == [f"blocks.{i}.{k}" for i in sorted(sub["layer"].unique())]


def test_heatmap_diverging_is_symmetric():
    rng = np.random.default_rng(2)
    df = _long(rng)
    df["value"] -= 0.3
    fig = figures.layer_step_heatmap(df, label="d", title="t", diverging=True)
    ca = fig.layout.coloraxis
    assert ca.cmid == 0 and ca.cmax == pytest.approx(np.abs(df["value"]).max()) and ca.cmin == -ca.cmax


def test_proportion_figure_bars_lines_and_halves():
    rng = np.random.default_rng(3)
    n = 7
    kinds = ["spatial"] * 4 + ["temporal"] * 3
    df = pd.DataFrame({"layer": range(n), "layer_name": [f"l{i}" for i in range(n)], "kind": kinds,
                       dims.ENERGY: rng.random(n) * 10, dims.ENTROPY_NORM: rng.random(n)})
    for col in (dims.ENERGY, dims.ENTROPY_NORM):
        df[f"{col}_prop"] = rules.proportion(df[col], df["kind"], "share_of_kind")
        df[f"{col}_line"] = rules.red_line(df[f"{col}_prop"], df["kind"], "median")
        df[f"{col}_half"] = np.where(df[f"{col}_prop"] > df[f"{col}_line"], "top", "bottom")
    fig = figures.proportion_figure(df, formula="share_of_kind", red_line="median", title="T")
    bars = [t for t in fig.data if t.type == "bar"]
    np.testing.assert_allclose(bars[0].y, df[dims.ENERGY])
    np.testing.assert_allclose(bars[1].y, df[f"{dims.ENERGY}_prop"])
    np.testing.assert_allclose(bars[2].y, df[f"{dims.ENTROPY_NORM}_prop"])
    lines = [t for t in fig.data if t.type == "scatter" and t.mode == "lines"]
    assert len(lines) == 4  # two kinds x two proportion panels
    legend = {t.name for t in fig.data if t.type == "scatter" and t.showlegend and t.mode == "markers"}
    assert legend == set(df["kind"])  # the kind colours have a legend
    sp = df[df["kind"] == "spatial"]
    assert lines[0].y[0] == pytest.approx(np.median(sp[f"{dims.ENERGY}_prop"]))
    assert list(lines[0].x) == [-0.5, 3.5]
    top = df[f"{dims.ENERGY}_half"] == "top"
    assert [o == 1.0 for o in bars[1].marker.opacity] == list(top)
    assert "share_of_kind" in fig.layout.title.text and "median" in fig.layout.title.text


def test_map_pair_threshold_panel():
    rng = np.random.default_rng(4)
    m = rng.random((16, 16))
    m /= m.sum(1, keepdims=True)
    md = MapData("spatial", m, 4, 4)
    fig = figures.map_pair(md, rule="quantile", param=0.8, title="t")
    np.testing.assert_array_equal(fig.data[0].z, m)
    cut = np.quantile(m, 0.8)
    np.testing.assert_array_equal(fig.data[1].z, np.where(m >= cut, m, 0))
    assert "20%" in fig.layout.annotations[1].text  # the share kept is shown


def test_entropy_grid_one_panel_per_frame():
    rng = np.random.default_rng(5)
    e = rng.random((6, 3, 4))
    fig = figures.entropy_grid(e, title="t", max_cols=4)
    z = np.asarray(fig.data[0].z, dtype=float)
    # 2 rows x 4 columns of 3x4 tiles; one empty row above each tile row (its labels), one column between
    assert z.shape == (2 * 4, 4 * 5 - 1)
    for f in range(6):
        r, c = divmod(f, 4)
        np.testing.assert_array_equal(z[r * 4 + 1: r * 4 + 4, c * 5: c * 5 + 4], e[f])
        assert (np.asarray(fig.data[0].customdata)[r * 4 + 1, c * 5] == [f, 0, 0]).all()
    assert np.isnan(z[0]).all() and np.isnan(z[4]).all() and np.isnan(z[:, 4]).all()  # gaps
    assert [a.text for a in fig.layout.annotations] == [f"frame {f}" for f in range(6)]
    assert fig.data[0].zmin == pytest.approx(e.min()) and fig.data[0].zmax == pytest.approx(e.max())


def test_query_attention_spatial_and_temporal():
    rng = np.random.default_rng(6)
    m = rng.random((12, 12))
    fig = figures.query_attention(MapData("spatial", m, 3, 4), 7, title="t")
    np.testing.assert_array_equal(fig.data[0].z, m[7].reshape(3, 4))
    rect = fig.layout.shapes[0]
    assert (rect.x0 + 0.5, rect.y0 + 0.5) == (3, 1)  # query 7 on a 3x4 grid is row 1, column 3
    t = rng.random((5, 5))
    fig = figures.query_attention(MapData("temporal", t, 2, 2), 2, title="t")
    np.testing.assert_array_equal(fig.data[0].y, t[2])


def test_ranking_and_diff_bars():
    rng = np.random.default_rng(7)
    df = pd.DataFrame({"layer_name": [f"l{i}" for i in range(6)], "kind": ["spatial"] * 6, "value": rng.random(6)})
    fig = figures.ranking_figure(df, ["l2", "l4"], label="v", title="t")
    order = df.sort_values("value", ascending=False)
    assert list(fig.data[0].customdata) == list(order["layer_name"])
    red = [n for n, c in zip(fig.data[0].customdata, fig.data[0].marker.color) if c == "#d62728"]
    assert sorted(red) == ["l2", "l4"]
    fig = figures.layer_diff_bars(df, label="d", title="t")
    np.testing.assert_array_equal(fig.data[0].y, df["value"])


def test_empty_inputs_give_a_message():
    empty = pd.DataFrame(columns=["layer", "layer_name", "kind", "step", "value"])
    for fig in (figures.layer_step_heatmap(empty, label="x", title="t"),
                figures.ranking_figure(empty, [], label="x", title="t"),
                figures.entropy_grid(np.zeros((0, 2, 2)), title="t")):
        assert fig.layout.annotations and "no" in fig.layout.annotations[0].text


def test_short_names_of_every_block_kind():
    """Axis labels: each common block prefix shortened, the longer one first (SVD's temporal
    transformer blocks are tt, not temporal_t); names without those prefixes are kept."""
    from capture.naming import short_name

    assert short_name("down_blocks.1.attentions.0.transformer_blocks.0.attn1") == "d1.a0.t0.attn1"
    assert short_name("up_blocks.2.motion_modules.1.transformer_blocks.0.attn1") == "u2.m1.t0.attn1"
    assert short_name("mid_block.attentions.0.temporal_transformer_blocks.0.attn1") == "mid.a0.tt0.attn1"
    assert short_name("transformer_blocks.3.attn1") == "t3.attn1"
    assert short_name("blocks.0.attn2.text") == "blocks.0.attn2.text"
