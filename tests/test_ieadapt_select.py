"""attnlens select: rankings against hand-computed tables, rules per kind, sweep effects, the file
round trip with the dashboard's format, and clear errors."""

import json

import pytest

from capture.cli import main
from capture.selection import Selection, SelectionError
from dashboard.data import TraceRoot
from ieadapt.select import check_layers, select

from .study_root import LAYERS, make_study_root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("selroot")
    truth = make_study_root(path)
    return path, truth


def _by_hand(tr, runs, stat):
    """Mean over heads per (run, layer, step), then over steps, then over runs; cond branch."""
    raw = tr.catalog.query("SELECT * FROM stats WHERE branch = 'cond' AND part = 'all'")
    raw = raw[raw["run"].isin(runs)].astype({stat: "float64"})
    per_step = raw.groupby(["run", "layer_name", "kind", "step"])[stat].mean()
    per_run = per_step.groupby(["run", "layer_name", "kind"]).mean()
    return per_run.groupby(["layer_name", "kind"]).mean().reset_index()


def test_bottom_half_of_spatial_layers_by_normalized_entropy(root):
    path, _ = root
    tr = TraceRoot(path)
    runs = ["s1-base-0", "s1-base-1"]
    sel = select(tr, stat="entropy_norm", rule="bottom:0.5", kind="spatial", runs=runs)
    want = _by_hand(tr, runs, "entropy_norm")
    spatial = want[want["kind"] == "spatial"].sort_values(["entropy_norm", "layer_name"])
    k = max(1, round(0.5 * len(spatial)))
    assert sel.layers == list(spatial["layer_name"][:k])
    for n in sel.layers:
        assert sel.values[n] == pytest.approx(float(spatial.set_index("layer_name").loc[n, "entropy_norm"]), rel=1e-6)
    assert sel.model == "synthetic" and sel.kind == "spatial" and sel.source_runs == runs
    assert sel.statistic == "entropy_norm" and sel.rule == "bottom:0.5"


def test_energy_proportion_is_the_share_of_its_kind(root):
    path, _ = root
    tr = TraceRoot(path)
    runs = ["s1-base-0"]
    sel = select(tr, stat="energy_proportion", rule="top:1", runs=runs)
    want = _by_hand(tr, runs, "energy")
    want["p"] = want["energy"] / want.groupby("kind")["energy"].transform("sum")
    assert set(sel.layers) == set(want["layer_name"])
    for r in want.itertuples():
        assert sel.values[r.layer_name] == pytest.approx(r.p, rel=1e-6)
    for kind in set(want["kind"]):
        assert sum(sel.values[n] for n in want[want["kind"] == kind]["layer_name"]) == pytest.approx(1.0)


def test_rank_by_a_sweeps_measured_effect(root):
    path, truth = root
    tr = TraceRoot(path)
    sel = select(tr, stat="effect:s1:ssim_mean:I", rule="bottom:0.34")
    ssim = truth[(truth["metric"] == "ssim_mean") & (truth["perturbation"] == "I")]
    mean = ssim.groupby("layer_name")["effect"].mean().sort_values()
    assert sel.layers == [mean.index[0]]
    assert sel.values[mean.index[0]] == pytest.approx(mean.iloc[0])
    both = select(tr, stat="effect:s1:temporal_flicker", rule="top:1")
    flick = truth[truth["metric"] == "temporal_flicker"].groupby(["layer_name", "perturbation"])["effect"].mean()
    for n, v in both.values.items():
        assert v == pytest.approx(flick[n].mean())
    assert set(both.source_runs) >= {"s1-base-0", "s1-base-1"}


def test_cli_writes_the_dashboards_selection_format(root, tmp_path, capsys):
    path, _ = root
    out = tmp_path / "sel.json"
    assert main(["select", "--root", str(path), "--runs", "s1-base-0", "s1-base-1", "--stat", "entropy_norm",
                 "--rule", "top:0.5", "--kind", "temporal", "-o", str(out)]) == 0
    assert "-> " + str(out) in capsys.readouterr().err
    sel = Selection.load(out)
    d = json.loads(out.read_text())
    assert d["format"] == "attnlens.selection/1" and d["kind"] == "temporal" and d["layers"] == sel.layers
    assert Selection.from_json(sel.to_json()).layers == sel.layers  # round trip
    direct = select(TraceRoot(path), stat="entropy_norm", rule="top:0.5", kind="temporal",
                    runs=["s1-base-0", "s1-base-1"])
    assert direct.layers == sel.layers and direct.values == pytest.approx(sel.values)
    default = select(TraceRoot(path), stat="entropy_norm", rule="top:1")  # every unperturbed run
    assert set(default.source_runs) == {"s1-base-0", "s1-base-1", "s2-base"}
    assert main(["select", "--root", str(path), "--stat", "nope"]) == 2
    assert "unknown statistic 'nope'" in capsys.readouterr().err
    assert main(["select", "--root", str(path), "--runs", "missing-run"]) == 2
    assert "no complete run 'missing-run'" in capsys.readouterr().err
    assert main(["select", "--root", str(path), "--stat", "effect:nosweep:ssim_mean"]) == 2
    assert "no measured one-layer runs" in capsys.readouterr().err


def test_loading_against_another_model_or_unknown_names_is_a_clear_error():
    names = [l["name"] for l in LAYERS]
    sel = Selection(model="demo", layers=[names[0]], rule="top:0.5", statistic="entropy_norm")
    check_layers(sel, names, model="demo")
    with pytest.raises(SelectionError, match="made for model 'demo', not 'other'"):
        check_layers(sel, names, model="other")
    typo = Selection(model="demo", layers=[names[0].replace("down_blocks", "down_block")], rule="r", statistic="s")
    with pytest.raises(SelectionError, match=f"nearest: {names[0]}"):
        check_layers(typo, names)


def test_model_filter_uses_only_that_models_runs(tmp_path):
    """select --model M ranks M's runs alone; several models without --model stay an error."""
    from .test_store import write_run

    root = tmp_path / "mixed"
    m1 = [write_run(root, s, model="model-one")[0].dir.name for s in (1, 2)]
    m2 = [write_run(root, s, model="model-two")[0].dir.name for s in (3,)]
    tr = TraceRoot(root)
    with pytest.raises(SelectionError, match="several models"):
        select(tr, stat="entropy_norm", rule="top:0.5")
    sel = select(tr, stat="entropy_norm", rule="top:0.5", model="model-one")
    assert sorted(sel.source_runs) == sorted(m1) and sel.model == "model-one"
    with pytest.raises(SelectionError, match="not 'model-one'"):
        select(tr, stat="entropy_norm", rule="top:0.5", runs=m1 + m2, model="model-one")
    with pytest.raises(SelectionError, match="no complete unperturbed runs of model 'demo'"):
        select(tr, stat="entropy_norm", rule="top:0.5", model="demo")
