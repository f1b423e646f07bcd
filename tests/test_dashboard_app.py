"""Every dashboard view through streamlit's AppTest: widgets driven by key, assertions on what is
shown (figure titles and data, tables, messages), state read from the URL."""

import base64
import json
import sys

import numpy as np

import pytest

from capture import dims
from capture.selection import Selection, apply_rule
from dashboard import notes
from dashboard.data import TraceRoot

from .dashboard_root import make_root

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("approot")
    return path, make_root(path)


@pytest.fixture
def app(root, monkeypatch):
    path, _ = root
    monkeypatch.setenv("ATTNLENS_ROOT", str(path))
    monkeypatch.setattr(sys, "argv", ["streamlit"])

    def make(view, **query):
        at = AppTest.from_string(f"from dashboard.views import {view}\n{view}.render()", default_timeout=90)
        for k, v in query.items():
            at.query_params[k] = v
        return at.run()

    from dashboard import cache

    cache.reload()
    return make


def _figs(at):
    return [json.loads(e.proto.spec) for e in at.get("plotly_chart")]


def _arr(v):
    """A plotly JSON array: a list, or plotly's typed-array encoding {dtype, bdata, shape}."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = v.get("shape")
        return a.reshape([int(x) for x in str(shape).split(",")]) if shape else a
    return np.asarray(v, dtype=float)


def _title(fig):
    t = fig["layout"]["title"]
    return t["text"] if isinstance(t, dict) else t


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]


def test_app_script_opens_on_runs(root, monkeypatch):
    path, _ = root
    monkeypatch.setenv("ATTNLENS_ROOT", str(path))
    monkeypatch.setattr(sys, "argv", ["streamlit"])
    from pathlib import Path

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "streamlit_app.py"), default_timeout=90).run()
    _ok(at)
    assert [h.value for h in at.header] == ["Runs"]
    assert any(str(path) in c.value for c in at.sidebar.caption)


def test_runs_filters_and_messages(app, root):
    _, ids = root
    at = app("runs")
    _ok(at)
    assert "6 of 6 runs" in at.caption[0].value
    at.multiselect(key="runs_model").select("m2").run()
    assert "1 of 6 runs" in at.caption[0].value
    assert at.selectbox(key="run").value == ids["c"]
    assert at.get("image")  # the run's video
    at.multiselect(key="runs_model").unselect("m2").run()
    at.multiselect(key="runs_status").select("unreadable").run()
    assert at.selectbox(key="run").value == ids["unreadable"]
    assert any("cannot be read" in w.value for w in at.warning)
    at.multiselect(key="runs_status").unselect("unreadable").select("failed").run()
    assert any("failed" in w.value and "synthetic failure" in w.value for w in at.warning)
    at.multiselect(key="runs_status").unselect("failed").run()
    at.text_input(key="runs_prompt").input("zebra").run()
    assert any("No run matches" in i.value for i in at.info)


def test_runs_note_form(app, root):
    path, ids = root
    at = app("runs", run=ids["a"])
    at.text_input(key="runs_note_author").input("ana")
    at.text_input(key="runs_note_tags").input("odd, check")
    at.text_area(key="runs_note_text").input("entropy drops at step 2")
    at.button(key="runs_note_submit").click().run()
    got = notes.list_notes(path, ids["a"])
    assert [(n.author, n.text, n.tags) for n in got][-1:] == [("ana", "entropy drops at step 2", ["check", "odd"])]
    assert any("entropy drops at step 2" in m.value for m in at.text)  # plain text, never Markdown
    assert at.text_area(key="runs_note_text").value == "" and at.text_input(key="runs_note_tags").value == ""
    assert at.text_input(key="runs_note_author").value == "ana" and [s.value for s in at.success] == ["note added"]


def test_a_note_the_root_cannot_take_is_an_error_on_the_page(app, root, monkeypatch):
    path, ids = root
    before = notes.list_notes(path, ids["a"])

    def read_only(src, dst):  # a shared root this dashboard's user may only read
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(notes.os, "replace", read_only)
    at = app("runs", run=ids["a"])
    at.text_area(key="runs_note_text").input("entropy drops at step 2")
    at.button(key="runs_note_submit").click().run()
    assert not at.exception
    assert [e.value for e in at.error] == [f"not saved: {path / notes.NOTES_DIR} cannot be written by this "
                                           "dashboard's user (Permission denied)"]
    assert notes.list_notes(path, ids["a"]) == before
    assert at.text_area(key="runs_note_text").value == "entropy drops at step 2"  # kept, to copy or retry


def test_differences_of_runs_with_other_timesteps(tmp_path, monkeypatch):
    """Runs of 5 and 9 steps, and one whose timesteps none of them has: the difference views say
    how the steps were paired, or that none pair up (and draw no heat map of different noise levels)."""
    from capture.synthetic import animatediff_like_layers, write_run
    from dashboard import cache

    layers = animatediff_like_layers(n_down=1, heads=2, frames=4, grid=4, latent=8)
    kw = dict(layers=layers, frames=4, grid=4, maps=False)
    write_run(tmp_path, np.random.default_rng(0), steps=5, run_id="five", **kw)
    write_run(tmp_path, np.random.default_rng(1), steps=9, run_id="nine", **kw)
    write_run(tmp_path, np.random.default_rng(2), steps=5, run_id="shifted", timesteps=[990, 740, 490, 240, 10], **kw)
    monkeypatch.setenv("ATTNLENS_ROOT", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["streamlit"])
    cache.reload()

    def run(view, **query):
        at = AppTest.from_string(f"from dashboard.views import {view}\n{view}.render()", default_timeout=90)
        for k, v in query.items():
            at.query_params[k] = v
        return at.run()

    at = run("layer_step", ls_run="five", ls_minus="nine")
    assert not at.exception and len(_figs(at)) == 1
    assert [c.value for c in at.caption if c.value.startswith("Steps paired")] == [
        "Steps paired by timestep: the 5 steps both runs have (run five: 5 captured steps, run nine: 9); "
        "the others are left out."]
    at = run("layer_step", ls_run="five", ls_minus="shifted")
    assert not at.exception and _figs(at) == []
    assert any("share no denoising timestep (run five: 5 captured steps, run shifted: 5)" in w.value
               for w in at.warning)
    at = run("compare", cmp_a="five", cmp_b="shifted")
    assert not at.exception and len(_figs(at)) == 1  # the per-layer bars (means over each run's steps) only
    assert any("share no denoising timestep" in w.value for w in at.warning)
    at = run("proportions", pr_runs="five,nine", pr_step="1")  # timesteps 749 and 874
    assert not at.exception and len(_figs(at)) == 1
    assert [w.value.lstrip("⚠ ") for w in at.warning] == [
        "the chosen runs are at different timesteps at step 1 (five: 749, nine: 874): the mean mixes noise levels; "
        "choose runs with the same steps, or aggregate over steps"]
    at = run("proportions", pr_runs="five,nine", pr_step="0")  # both at 999: nothing to say
    assert not at.exception and not at.warning
    cache.reload()


def test_layer_step_heatmap_and_difference(app, root):
    path, ids = root
    at = app("layer_step", ls_run=ids["a"], ls_stat=dims.ENERGY)  # state from the URL
    _ok(at)
    assert at.selectbox(key="ls_stat").value == dims.ENERGY
    fig = _figs(at)[0]
    assert _title(fig).startswith("energy · run " + ids["a"])
    kinds = [t for t in fig["data"] if t["type"] == "heatmap"]
    assert len(kinds) == 3  # spatial, temporal, cross panels
    tr = TraceRoot(path)
    ref = tr.layer_step(ids["a"], dims.ENERGY)
    assert sum(len(_arr(t["z"])) for t in kinds) == ref[dims.LAYER_NAME].nunique()
    at.selectbox(key="ls_head").set_value("1").run()
    assert "head 1" in _title(_figs(at)[0])
    at.selectbox(key="ls_minus").set_value(ids["b"]).run()
    _ok(at)
    assert _title(_figs(at)[0]).startswith("Δ energy")
    assert at.query_params["ls_minus"] == [ids["b"]] or at.query_params["ls_minus"] == ids["b"]


def test_proportions_view(app, root):
    path, ids = root
    at = app("proportions", pr_runs=f"{ids['a']},{ids['b']}", pr_step="2")
    _ok(at)
    fig = _figs(at)[0]
    assert "mean of 2 runs" in _title(fig) and "step 2" in _title(fig)
    assert "share_of_kind" in _title(fig) and "median" in _title(fig)
    bars = [t for t in fig["data"] if t["type"] == "bar"]
    ref = TraceRoot(path).proportions([ids["a"], ids["b"]], step=2)
    assert len(bars) == 3 and len(_arr(bars[1]["y"])) == len(ref)
    np.testing.assert_allclose(_arr(bars[1]["y"]), ref[f"{dims.ENERGY}_prop"], rtol=1e-6)
    at.selectbox(key="pr_formula").set_value("share_of_all").run()
    assert _arr(_figs(at)[0]["data"][1]["y"]).sum() == pytest.approx(1.0)
    assert at.get("download_button")


def test_maps_view(app, root):
    path, ids = root
    tr = TraceRoot(path)
    layers = tr.layers(ids["a"])
    temporal = layers.loc[layers["kind"] == "temporal", dims.LAYER_NAME].iloc[1]
    at = app("maps", mp_run=ids["a"])
    _ok(at)
    figs = _figs(at)
    assert len(figs) == 3 and "original" in json.dumps(figs[0]["layout"])
    at.selectbox(key="mp_layer").set_value(temporal).run()
    at.select_slider(key="mp_step").set_value(3).run()
    at.selectbox(key="mp_rule").set_value("absolute").run()
    _ok(at)
    fig = _figs(at)[0]
    assert temporal in _title(fig) and "step 3" in _title(fig)
    li = int(layers.set_index(dims.LAYER_NAME).loc[temporal, dims.LAYER])
    m = tr.attention_map(ids["a"], 3, li, "cond")
    np.testing.assert_allclose(_arr(fig["data"][0]["z"]), m.values, rtol=1e-6)
    at.number_input(key="mp_query").set_value(2).run()
    q = _figs(at)[2]
    np.testing.assert_allclose(_arr(q["data"][0]["y"]), m.values[2], rtol=1e-6)


def test_maps_view_of_a_run_with_maps_every_kth_step(tmp_path, monkeypatch):
    """A run captured with maps every 2nd step (statistics at every step): the step slider offers
    only the steps with maps, a URL step without maps falls back to the first one, and the map
    shown is the one stored for the chosen step."""
    from capture import synthetic as S
    from dashboard import cache
    from dashboard.data import RunUnavailable

    layers = S.animatediff_like_layers(n_down=1, heads=2, frames=4, grid=4, latent=8)
    rid = S.write_run(tmp_path, np.random.default_rng(3), layers=layers, steps=5, frames=4, grid=4, maps_every=2,
                      run_id="20260102-000000-kkkkkk")
    monkeypatch.setenv("ATTNLENS_ROOT", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["streamlit"])
    cache.reload()
    tr = TraceRoot(tmp_path)
    assert tr.map_steps(rid) == [0, 2, 4]
    at = AppTest.from_string("from dashboard.views import maps\nmaps.render()", default_timeout=90)
    at.query_params["mp_run"] = rid
    at.query_params["mp_step"] = "3"  # a step without maps
    at.run()
    _ok(at)
    slider = at.select_slider(key="mp_step")
    assert [int(o) for o in slider.options] == [0, 2, 4] and slider.value == 0
    assert any("stored maps every 2 steps" in c.value and "steps 0, 2, 4" in c.value for c in at.caption)
    slider.set_value(4).run()
    _ok(at)
    fig = _figs(at)[0]
    assert "step 4" in _title(fig)
    spatial = tr.layers(rid)
    spatial = spatial[spatial["kind"] == "spatial"].iloc[0]
    m = tr.attention_map(rid, 4, int(spatial[dims.LAYER]), "cond")
    np.testing.assert_allclose(_arr(fig["data"][0]["z"]), m.values, rtol=1e-6)
    with pytest.raises(RunUnavailable, match="every 2 steps"):
        tr.attention_map(rid, 3, int(spatial[dims.LAYER]), "cond")


def test_maps_view_of_a_joint_layer(tmp_path, monkeypatch):
    """A transformer's joint layer (CogVideoX, Wan, Kandinsky 5: no spatial or temporal layers at
    all) is shown: its cell-to-cell map by default, its frame-to-frame map on the radio's choice,
    each the one stored."""
    from capture import synthetic as S
    from dashboard import cache

    layers = [dict(name="transformer_blocks.0.attn1", kind="joint", block="block.0", n_query=96, n_key=96, heads=2,
                   gy=4, gx=6)]
    rid = S.write_run(tmp_path, np.random.default_rng(6), layers=layers, steps=3, frames=4, grid=8,
                      run_id="20260102-000000-jjjjjj")
    monkeypatch.setenv("ATTNLENS_ROOT", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["streamlit"])
    cache.reload()
    tr = TraceRoot(tmp_path)
    at = AppTest.from_string("from dashboard.views import maps\nmaps.render()", default_timeout=90)
    at.query_params["mp_run"] = rid
    at.run()
    _ok(at)
    fig = _figs(at)[0]
    assert "(spatial)" in _title(fig)
    np.testing.assert_allclose(_arr(fig["data"][0]["z"]), tr.attention_map(rid, 0, 0, "cond").values, rtol=1e-6)
    at.radio(key="mp_axis").set_value("temporal").run()
    _ok(at)
    fig = _figs(at)[0]
    assert "(temporal)" in _title(fig)
    m = tr.attention_map(rid, 0, 0, "cond", axis="temporal")
    np.testing.assert_allclose(_arr(fig["data"][0]["z"]), m.values, rtol=1e-6)
    assert m.values.shape == (4, 4)


def test_compare_view(app, root):
    _, ids = root
    at = app("compare", cmp_a=ids["a"], cmp_b=ids["b"])
    _ok(at)
    table = at.table[0].value
    assert "perturbation" in list(table["attribute"])
    titles = [_title(f) for f in _figs(at)]
    assert titles[0].startswith("Δ normalized entropy per layer") and titles[1].startswith("Δ normalized entropy over")


def test_selection_view_exports_what_the_rule_chooses(app, root, tmp_path):
    path, ids = root
    at = app("selection", sel_runs=ids["a"], sel_kind="spatial", sel_rule="bottom", sel_frac="0.5")
    _ok(at)
    tr = TraceRoot(path)
    v = tr.per_layer([ids["a"]], dims.ENTROPY_NORM)
    v = v[v["kind"] == "spatial"]
    expected = apply_rule(dict(zip(v[dims.LAYER_NAME], v["value"])), dict(zip(v[dims.LAYER_NAME], v["kind"])),
                          "bottom:0.5")
    assert any(f"**{len(expected)} layer(s) chosen**" in m.value for m in at.markdown)
    chosen = [d for d in at.dataframe if "layer" in d.value.columns][0].value  # full names, a table
    assert list(chosen["layer"]) == expected and set(chosen["kind"]) == {"spatial"}
    codes = [c.value for c in at.code]
    assert codes[0] == repr(Selection(model="m1", layers=expected, rule="", statistic="").pag_applied_layers())
    at.text_input(key="sel_save_name").input("low spatial")
    at.button(key="sel_save_submit").click().run()
    saved = notes.list_selections(path)
    assert any(s.layers == expected and s.rule == "bottom:0.5" and s.source_runs == [ids["a"]] for s in saved.values())


def test_notes_view(app, root):
    path, ids = root
    notes.add_note(path, ids["b"], "perturbed run looks flat", author="ben", tags=["flat"])
    at = app("notes_view", nt_tag="flat")
    _ok(at)
    df = at.dataframe[0].value
    assert list(df["note"]) == ["perturbed run looks flat"]


def test_empty_root(tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    monkeypatch.setenv("ATTNLENS_ROOT", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["streamlit"])
    from dashboard import cache

    cache.reload()
    for view in ("layer_step", "proportions", "maps", "compare", "selection"):
        at = AppTest.from_string(f"from dashboard.views import {view}\n{view}.render()", default_timeout=60).run()
        _ok(at)
        assert at.info, view


def test_maps_threshold_from_url(app, root):
    path, ids = root
    at = app("maps", mp_run=ids["b"], mp_rule="mean_std", mp_param_mean_std="2.0")
    _ok(at)
    title = json.dumps(_figs(at)[0]["layout"])
    assert "threshold: mean_std 2" in title
    at.number_input(key="mp_param_mean_std").set_value(0.5).run()
    assert "threshold: mean_std 0.5" in json.dumps(_figs(at)[0]["layout"])
    assert at.query_params["mp_param_mean_std"] in ("0.5", ["0.5"])
