"""Dashboard queries against hand-computed (pandas/numpy) references on a synthetic root."""

import numpy as np
import pandas as pd
import pytest

from capture import dims
from capture.catalog import stats_frame
from capture.store import open_run
from dashboard import rules
from dashboard.data import RunUnavailable, TraceRoot, pivot

from .dashboard_root import make_root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("root")
    ids = make_root(path)
    return TraceRoot(path), ids


def _frame(tr, run_id):
    return stats_frame(open_run(tr.run_dir(run_id)), run_id)


def test_runs_filters(root):
    tr, ids = root
    all_runs = tr.runs()
    assert len(all_runs) == 6
    assert set(tr.runs(model=["m2"])["run"]) == {ids["c"]}
    assert set(tr.runs(prompt="RED")["run"]) == {ids["a"], ids["c"]}
    assert set(tr.runs(seed=[1])["run"]) == {ids["a"], ids["c"]}
    assert set(tr.runs(perturbation="any")["run"]) == {ids["b"]}
    assert ids["b"] not in set(tr.runs(perturbation="none")["run"])
    assert set(tr.runs(perturbation="I@")["run"]) == {ids["b"]}
    states = dict(zip(all_runs["run"], all_runs["state"]))
    assert states[ids["failed"]] == "failed" and states[ids["unreadable"]] == "unreadable"
    assert states[ids["running"]] == "running"  # its writer, this process, is alive
    assert set(tr.runs(status=["complete"])["run"]) == {ids["a"], ids["b"], ids["c"]}


@pytest.mark.parametrize("head", [None, 1])
@pytest.mark.parametrize("stat", [dims.ENTROPY_NORM, dims.ENERGY])
def test_layer_step_matches_pandas(root, stat, head):
    tr, ids = root
    got = tr.layer_step(ids["a"], stat, branch="cond", head=head)
    df = _frame(tr, ids["a"])
    df = df[(df[dims.BRANCH] == "cond") & (df[dims.PART] == "all")]
    if head is not None:
        df = df[df[dims.HEAD] == head]
    ref = df.groupby([dims.LAYER_NAME, dims.STEP])[stat].mean()
    got_s = got.set_index([dims.LAYER_NAME, dims.STEP])["value"]
    assert len(got_s) == len(ref) > 0
    np.testing.assert_allclose(got_s.sort_index().to_numpy(), ref.sort_index().to_numpy(), rtol=1e-6)
    # heads really are distinct, so a wrong head filter would show
    if head is not None:
        mean = tr.layer_step(ids["a"], stat, branch="cond").set_index([dims.LAYER_NAME, dims.STEP])["value"]
        assert not np.allclose(mean.sort_index().to_numpy(), got_s.sort_index().to_numpy())


def test_head_aggregations(root):
    tr, ids = root
    df = _frame(tr, ids["a"])
    df = df[(df[dims.BRANCH] == "uncond") & (df[dims.PART] == "all")]
    for agg in ("max", "min"):
        got = tr.layer_step(ids["a"], dims.ENTROPY, branch="uncond", head_agg=agg)
        ref = df.groupby([dims.LAYER_NAME, dims.STEP])[dims.ENTROPY].agg(agg)
        np.testing.assert_allclose(got.set_index([dims.LAYER_NAME, dims.STEP])["value"].sort_index(), ref.sort_index(),
                                   rtol=1e-6)


def test_layer_step_diff(root):
    tr, ids = root
    d = tr.layer_step_diff(ids["a"], ids["b"], dims.ENTROPY_NORM)
    a = _frame(tr, ids["a"])
    b = _frame(tr, ids["b"])
    sel = lambda f: f[(f[dims.BRANCH] == "cond") & (f[dims.PART] == "all")].groupby(  # noqa: E731
        [dims.LAYER_NAME, dims.STEP])[dims.ENTROPY_NORM].mean()
    ref = (sel(a) - sel(b)).sort_index()
    np.testing.assert_allclose(d.set_index([dims.LAYER_NAME, dims.STEP])["value"].sort_index(), ref, rtol=1e-5, atol=1e-6)




def test_runs_filter_matches_ieadapt_method(tmp_path):
    from capture import synthetic as S

    rng = np.random.default_rng(3)
    layers = S.animatediff_like_layers(n_down=1, heads=1, frames=2, grid=2, latent=4)
    g = S.write_run(tmp_path, rng, layers=layers, steps=2, frames=2, grid=2, run_id="20260101-000000-a1a1a1",
                    attrs={"model": "m", "ieadapt": {"method": "enhance", "mode": "guidance", "scale": 3, "perturb": "I"}})
    S.write_run(tmp_path, rng, layers=layers, steps=2, frames=2, grid=2, run_id="20260101-000001-b2b2b2",
                attrs={"model": "m"})
    tr = TraceRoot(tmp_path)
    assert list(tr.runs(perturbation="guidance")["run"]) == [g]
    labels = tr.runs()["ieadapt"]
    assert labels.iloc[0] == "guidance s=3 I constant" and labels.isna().iloc[1]


def test_runs_table_is_read_once_per_catalog_read(tmp_path, monkeypatch):
    """runs() answers from memory until the catalog is read again; callers get their own copy."""
    from capture import synthetic as S

    rng = np.random.default_rng(4)
    layers = S.animatediff_like_layers(n_down=1, heads=1, frames=2, grid=2, latent=4)
    first = S.write_run(tmp_path, rng, layers=layers, steps=2, frames=2, grid=2, run_id="20260101-000000-a1a1a1",
                        attrs={"model": "m", "seed": 1})
    tr = TraceRoot(tmp_path)
    queries = []
    real = tr.catalog.query
    monkeypatch.setattr(tr.catalog, "query", lambda sql, params=None: queries.append(sql) or real(sql, params))
    a = tr.runs(status=["complete"])
    a.loc[:, "model"] = "changed by the caller"
    b = tr.runs(status=["complete"])
    assert list(b["run"]) == [first] and list(b["model"]) == ["m"] and len(queries) == 1
    assert list(tr.runs(seed=[2])["run"]) == [] and len(queries) == 2  # another filter: its own query
    second = S.write_run(tmp_path, rng, layers=layers, steps=2, frames=2, grid=2, run_id="20260101-000001-b2b2b2",
                         attrs={"model": "m", "seed": 2})
    assert list(tr.runs(status=["complete"])["run"]) == [first]  # the catalog as last read
    tr.refresh()
    assert list(tr.runs(status=["complete"])["run"]) == [first, second]
    assert list(tr.runs(seed=[2])["run"]) == [second]


@pytest.mark.parametrize("step", [None, 2])
@pytest.mark.parametrize("step_agg", ["mean", "max"])
def test_per_layer_over_runs(root, step, step_agg):
    tr, ids = root
    got = tr.per_layer([ids["a"], ids["b"]], dims.ENERGY, step=step, step_agg=step_agg)
    per_run = []
    for r in (ids["a"], ids["b"]):
        f = _frame(tr, r)
        f = f[(f[dims.BRANCH] == "cond") & (f[dims.PART] == "all")]
        if step is not None:
            f = f[f[dims.STEP] == step]
        per_step = f.groupby([dims.LAYER_NAME, dims.STEP])[dims.ENERGY].mean()
        per_run.append(per_step.groupby(level=0).agg(step_agg))
    ref = (per_run[0] + per_run[1]) / 2
    np.testing.assert_allclose(got.set_index(dims.LAYER_NAME)["value"].sort_index(), ref.sort_index(), rtol=1e-5)
    assert (got["runs"] == 2).all()


def test_proportions_by_hand(root):
    tr, ids = root
    p = tr.proportions(ids["a"], step=1, formula="share_of_kind", red_line="median")
    assert set(p["kind"]) == {"spatial", "temporal"}  # cross-attention left out by default
    f = _frame(tr, ids["a"])
    f = f[(f[dims.BRANCH] == "cond") & (f[dims.PART] == "all") & (f[dims.STEP] == 1) & (f["kind"] != "cross")]
    e = f.groupby([dims.LAYER_NAME, "kind"])[dims.ENERGY].mean().reset_index()
    for kind, g in e.groupby("kind"):
        share = g[dims.ENERGY] / g[dims.ENERGY].sum()
        got = p.set_index(dims.LAYER_NAME).loc[g[dims.LAYER_NAME]]
        np.testing.assert_allclose(got[f"{dims.ENERGY}_prop"], share, rtol=1e-5)
        np.testing.assert_allclose(got[f"{dims.ENERGY}_line"], np.median(share), rtol=1e-5)
        assert list(got[f"{dims.ENERGY}_half"]) == ["top" if s > np.median(share) else "bottom" for s in share]
        assert got[f"{dims.ENERGY}_prop"].sum() == pytest.approx(1.0)


def test_rules_by_hand():
    v = pd.Series([1.0, 3.0, 2.0, 10.0, 30.0])
    k = pd.Series(["s", "s", "s", "t", "t"])
    np.testing.assert_allclose(rules.proportion(v, k, "share_of_kind"), [1 / 6, 3 / 6, 2 / 6, 0.25, 0.75])
    np.testing.assert_allclose(rules.proportion(v, k, "share_of_all"), v / 46)
    np.testing.assert_allclose(rules.proportion(v, k, "minmax_of_kind"), [0, 1, 0.5, 0, 1])
    np.testing.assert_allclose(rules.red_line(v, k, "median"), [2, 2, 2, 20, 20])
    np.testing.assert_allclose(rules.red_line(v, k, "mean"), [2, 2, 2, 20, 20])
    m = np.random.default_rng(0).random((6, 6))
    assert rules.threshold_value(m, "quantile", 0.75) == pytest.approx(np.quantile(m, 0.75))
    assert rules.threshold_value(m, "mean_std", 1.5) == pytest.approx(m.mean() + 1.5 * m.std())
    t = rules.apply_threshold(m, "absolute", 0.5)
    assert np.array_equal(t, np.where(m >= 0.5, m, 0))
    with pytest.raises(ValueError):
        rules.proportion(v, k, "nope")


def test_maps_read_lazily_and_match_store(root):
    tr, ids = root
    ds = open_run(tr.run_dir(ids["a"]))
    layers = tr.layers(ids["a"])
    sp = int(layers.loc[layers["kind"] == "spatial", dims.LAYER].iloc[0])
    tp = int(layers.loc[layers["kind"] == "temporal", dims.LAYER].iloc[0])
    m = tr.attention_map(ids["a"], 2, sp, "cond")
    gy, gx = int(ds["map_gy"][sp]), int(ds["map_gx"][sp])
    ref = ds[dims.MAP_SPATIAL].sel(branch="cond").isel(step=2, layer=sp).values[: gy * gx, : gy * gx]
    assert m.kind == "spatial" and np.array_equal(m.values, ref)
    np.testing.assert_allclose(m.values.sum(1), 1, rtol=1e-5)
    t = tr.attention_map(ids["a"], 3, tp, "uncond")
    assert t.kind == "temporal" and t.values.shape == (4, 4)
    np.testing.assert_allclose(t.values.sum(1), 1, rtol=1e-5)
    e = tr.entropy_map(ids["a"], 0, sp, "cond")
    assert e.shape == (4, gy, gx)
    np.testing.assert_array_equal(e, ds[dims.ENTROPY_MAP].sel(branch="cond").isel(step=0, layer=sp).values[:, :gy, :gx])


def test_unavailable_runs_say_why(root):
    tr, ids = root
    for key, word in (("running", "captured"), ("failed", "failed"), ("unreadable", "cannot be read")):
        with pytest.raises(RunUnavailable, match=word):
            tr.layer_step(ids[key], dims.ENTROPY)
    with pytest.raises(RunUnavailable, match="without maps"):
        tr.attention_map(ids["c"], 0, 0, "cond")
    with pytest.raises(RunUnavailable, match="no branch"):
        tr.attention_map(ids["a"], 0, 0, "nope")
    for bad in ("../etc", "..", "/abs", "a/b", ""):
        with pytest.raises(RunUnavailable):
            tr.run_dir(bad)
    # the other runs keep working
    assert len(tr.layer_step(ids["a"], dims.ENTROPY)) > 0


def test_layer_step_diff_pairs_steps_by_timestep(tmp_path):
    """A 5-step run against a 9-step one (evenly spaced timesteps 999 … 0): the 9-step run reaches
    the 5-step run's timesteps at its steps 0, 2, 4, 6 and 8, and only those pairs are compared;
    a run with none of those timesteps pairs with nothing."""
    from capture.synthetic import animatediff_like_layers, write_run

    layers = animatediff_like_layers(n_down=1, heads=2, frames=4, grid=4, latent=8)
    kw = dict(layers=layers, frames=4, grid=4, maps=False)
    a = write_run(tmp_path, np.random.default_rng(0), steps=5, run_id="five", **kw)
    b = write_run(tmp_path, np.random.default_rng(1), steps=9, run_id="nine", **kw)
    c = write_run(tmp_path, np.random.default_rng(2), steps=5, run_id="shifted", timesteps=[990, 740, 490, 240, 10],
                  **kw)
    tr = TraceRoot(tmp_path)
    assert tr.step_match(a, b) == {"by": dims.TIMESTEP, "steps_a": 5, "steps_b": 9, "common": 5}
    d = tr.layer_step_diff(a, b, dims.ENTROPY_NORM)
    fa, fb = _frame(tr, a), _frame(tr, b)
    sel = lambda f: f[(f[dims.BRANCH] == "cond") & (f[dims.PART] == "all")].groupby(  # noqa: E731
        [dims.LAYER_NAME, dims.STEP])[dims.ENTROPY_NORM].mean()
    ra, rb = sel(fa), sel(fb)
    pairs = {0: 0, 1: 2, 2: 4, 3: 6, 4: 8}  # step of a -> step of b at the same timestep
    ref = pd.Series({(n, sa): ra[(n, sa)] - rb[(n, sb)] for n in ra.index.levels[0] for sa, sb in pairs.items()})
    got = d.set_index([dims.LAYER_NAME, dims.STEP])["value"]
    assert len(got) == len(ref) == 5 * len(layers)
    np.testing.assert_allclose(got.sort_index().to_numpy(), ref.sort_index().to_numpy(), rtol=1e-5, atol=1e-6)
    assert tr.step_match(b, a)["common"] == 5 and len(tr.layer_step_diff(b, a, dims.ENTROPY_NORM)) == len(got)
    assert tr.step_match(a, c)["common"] == 0 and tr.layer_step_diff(a, c, dims.ENTROPY_NORM).empty
    # a chunked pipeline's run goes through its schedule once per chunk: its steps pair by index,
    # never one step with several of the other run's
    e = write_run(tmp_path, np.random.default_rng(3), steps=4, run_id="chunks", timesteps=[990, 500, 990, 500], **kw)
    f = write_run(tmp_path, np.random.default_rng(4), steps=4, run_id="chunks2", timesteps=[990, 500, 990, 500], **kw)
    tr = TraceRoot(tmp_path)
    assert tr.step_match(e, f) == {"by": dims.STEP, "steps_a": 4, "steps_b": 4, "common": 4}
    d = tr.layer_step_diff(e, f, dims.ENTROPY_NORM)
    assert len(d) == 4 * len(layers) and not d.duplicated([dims.LAYER_NAME, dims.STEP]).any()
    assert tr.step_match(e, a)["by"] == dims.STEP


@pytest.mark.parametrize("name", ["copy of run (1)", "it's a run", "run[1]*", "été"])
def test_runs_named_as_people_name_copies(tmp_path, name):
    """A run directory copied by hand under another name is a run like any other in every view."""
    import shutil

    ids = make_root(tmp_path)
    shutil.copytree(tmp_path / "runs" / ids["a"], tmp_path / "runs" / name)
    tr = TraceRoot(tmp_path)
    assert tr.runs().set_index("run").loc[name, "state"] == "complete"
    for stat in (dims.ENTROPY_NORM, dims.ENERGY):
        pd.testing.assert_frame_equal(tr.layer_step(name, stat), tr.layer_step(ids["a"], stat))
    assert (tr.layer_step_diff(name, ids["a"], dims.ENTROPY)["value"] == 0).all()
    per = tr.per_layer([name, ids["a"]], dims.ENTROPY_NORM)
    pd.testing.assert_frame_equal(per.drop(columns="runs"), tr.per_layer([ids["a"]], dims.ENTROPY_NORM).drop(columns="runs"))
    np.testing.assert_array_equal(tr.attention_map(name, 0, 0, "cond").values,
                                  tr.attention_map(ids["a"], 0, 0, "cond").values)
    np.testing.assert_array_equal(tr.entropy_map(name, 0, 0, "cond"), tr.entropy_map(ids["a"], 0, 0, "cond"))
    assert tr.video_file(name) is not None


def test_pivot_groups_kinds_in_model_order(root):
    tr, ids = root
    p = pivot(tr.layer_step(ids["a"], dims.ENTROPY_NORM))
    layers = tr.layers(ids["a"]).set_index(dims.LAYER_NAME)
    kinds = list(layers.loc[p.index, "kind"])
    assert kinds == sorted(kinds, key=list(dims.KINDS).index)
    for k in set(kinds):
        idx = [layers.loc[n, dims.LAYER] for n in p.index if layers.loc[n, "kind"] == k]
        assert idx == sorted(idx)
    assert list(p.columns) == [0, 1, 2, 3]


def test_joint_layer_maps_over_frames_and_over_positions(tmp_path):
    """A joint layer (attention across frames and positions at once: CogVideoX, Wan, Kandinsky 5)
    stores a cell-to-cell map pooled over frames and a frame-to-frame map pooled over positions:
    both are read, each as stored, and an unknown axis is refused."""
    from capture.synthetic import write_run

    layers = [dict(name="transformer_blocks.0.attn1", kind="joint", block="block.0", n_query=96, n_key=96, heads=2,
                   gy=4, gx=6),
              dict(name="transformer_blocks.0.attn2", kind="cross", block="block.0", n_query=96, n_key=16, heads=2,
                   gy=4, gx=6)]
    rid = write_run(tmp_path, np.random.default_rng(5), layers=layers, steps=3, frames=4, grid=8, run_id="joint")
    tr, ds = TraceRoot(tmp_path), open_run(tmp_path / "runs" / "joint")
    s = tr.attention_map(rid, 1, 0, "cond")  # spatial by default
    ref_s = ds[dims.MAP_SPATIAL].sel(branch="cond").isel(step=1, layer=0).values[:24, :24]
    assert s.kind == "spatial" and (s.gy, s.gx) == (4, 6) and np.array_equal(s.values, ref_s)
    t = tr.attention_map(rid, 1, 0, "cond", axis="temporal")
    ref_t = ds[dims.MAP_TEMPORAL].sel(branch="cond").isel(step=1, layer=0).values
    assert t.kind == "temporal" and np.array_equal(t.values, ref_t) and t.values.shape == (4, 4)
    np.testing.assert_allclose(np.concatenate([s.values.sum(1), t.values.sum(1)]), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="axis"):
        tr.attention_map(rid, 1, 0, "cond", axis="diagonal")
    with pytest.raises(RunUnavailable, match="cross layer"):
        tr.attention_map(rid, 1, 1, "cond")
