"""Sweep specs and their expansion into runs: counts, keys stable for resume, validation first."""

import json

import pytest

from capture.layers import LayerInfo
from capture.perturb import PerturbSpec
from capture.sweep import SweepSpec, SweepSpecError, plan


def _layers():
    out, i = [], 0
    for b in range(2):
        for kind, name in (("spatial", f"down_blocks.{b}.attentions.0.transformer_blocks.0.attn1"),
                           ("cross", f"down_blocks.{b}.attentions.0.transformer_blocks.0.attn2"),
                           ("temporal", f"down_blocks.{b}.motion_modules.0.transformer_blocks.0.attn1")):
            out.append(LayerInfo(name=name, kind=kind, block=f"down.{b}", heads=2, index=i))
            i += 1
    return out


def _spec(**kw):
    d = dict(name="s1", model="demo", prompts=["p1", "p2"], seeds=[0, 1], layer_sets=["each:kind=spatial",
             "kind=temporal"], perturbations=["I", "U", "T=0.5"], windows=["all", "0-3"])
    d.update(kw)
    return SweepSpec.from_dict(d)


def test_counts_and_contents():
    tasks = plan(_spec(), _layers(), n_steps=8)
    base = [t for t in tasks if t.baseline]
    assert len(base) == 4  # prompts x seeds
    # per (prompt, seed): (2 single spatial layers + 1 temporal group) x 3 perturbations x 2 windows
    assert len(tasks) == 4 + 4 * 3 * 3 * 2
    t = next(t for t in tasks if t.layer_set == "kind=temporal" and t.perturbation == "T=0.5" and t.window == "0-3")
    assert t.layers == ("down_blocks.0.motion_modules.0.transformer_blocks.0.attn1",
                        "down_blocks.1.motion_modules.0.transformer_blocks.0.attn1")
    specs = [PerturbSpec.parse(s) for s in t.perturb]
    assert all(s.kind == "T" and s.factor == 0.5 and s.steps == (0, 3) for s in specs)
    assert len({t.key for t in tasks}) == len(tasks)


def test_keys_are_stable_and_content_addressed():
    a = plan(_spec(), _layers(), 8)
    b = plan(_spec(seeds=[1, 0]), _layers(), 8)
    assert {t.key for t in a} == {t.key for t in b}  # order of seeds does not matter
    c = plan(_spec(call={"steps": 10}), _layers(), 8)
    assert not {t.key for t in a} & {t.key for t in c}  # a different call is a different run
    assert a[0].run_id("s1") == f"s1-{a[0].key}"


def test_overlapping_sets_plan_each_run_once():
    tasks = plan(_spec(layer_sets=["each:kind=spatial", "each:down_blocks.0.*attn1"], perturbations=["U"],
                       windows=["all"]), _layers(), 8)
    # spatial 0, spatial 1, temporal 0 (spatial 0 appears in both sets)
    assert len(tasks) == 4 * (1 + 3)


@pytest.mark.parametrize("kw, msg", [
    (dict(layer_sets=["each:nothing.*"]), "matches no layer"),
    (dict(layer_sets=["kind=joint"]), "matches no layer"),
    (dict(perturbations=["X"]), "unknown perturbation"),
    (dict(perturbations=["T=-1"]), ">= 0"),
    (dict(windows=["5-2"]), "end before start"),
    (dict(windows=["9-10"]), "after the last step"),
    (dict(metrics=["lpipsx"]), "unknown metric"),
    (dict(layer_sets=["kind=cross"]), "I needs self-attention"),
    (dict(branch="both"), "branch"),
])
def test_bad_specs_fail_before_generation(kw, msg):
    with pytest.raises(SweepSpecError, match=msg):
        plan(_spec(**kw), _layers(), n_steps=8)


def test_spec_files(tmp_path):
    (tmp_path / "prompts.txt").write_text("# c\np1\n\np2\n")
    (tmp_path / "s.toml").write_text('name = "t"\nmodel = "demo"\nprompts_file = "prompts.txt"\nseeds = [3]\n'
                                     'perturbations = ["U"]\n[call]\nsteps = 4\n')
    s = SweepSpec.load(tmp_path / "s.toml")
    assert s.prompts == ("p1", "p2") and s.seeds == (3,) and s.call == {"steps": 4}
    (tmp_path / "s.json").write_text(json.dumps({"name": "t", "model": "demo", "prompts": ["x"], "colour": 1}))
    with pytest.raises(SweepSpecError, match="unknown sweep field 'colour'"):
        SweepSpec.load(tmp_path / "s.json")
    (tmp_path / "bad.toml").write_text("name = ")
    with pytest.raises(SweepSpecError, match="not valid TOML"):
        SweepSpec.load(tmp_path / "bad.toml")
    with pytest.raises(SweepSpecError, match="needs at least one prompt"):
        SweepSpec.from_dict({"name": "t", "model": "demo", "prompts": []})
    with pytest.raises(SweepSpecError, match="sweep name"):
        SweepSpec.from_dict({"name": "a/b", "model": "demo", "prompts": ["x"]})
