"""Selection rules, the selection file format and diffusers' pag_applied_layers equivalence."""

import re

import numpy as np
import pytest

from capture.selection import Selection, SelectionError, apply_rule, pag_applied_layers, parse_rule


def _values(seed=0, n=12):
    rng = np.random.default_rng(seed)
    names = [f"down_blocks.{i // 4}.attentions.{i % 4}.transformer_blocks.0.attn1" for i in range(n)]
    kinds = {nm: ("spatial" if i % 3 else "temporal") for i, nm in enumerate(names)}
    return dict(zip(names, rng.random(n))), kinds


def test_top_bottom_threshold_against_sorting():
    vals, kinds = _values()
    order = sorted(vals, key=vals.get, reverse=True)
    assert apply_rule(vals, kinds, "top:0.5") == order[:6]
    assert apply_rule(vals, kinds, "bottom:0.25") == order[::-1][:3]
    assert apply_rule(vals, kinds, "top:0.01") == order[:1]  # at least one layer
    sp = [n for n in order if kinds[n] == "spatial"]
    assert apply_rule(vals, kinds, "top:0.5", kind="spatial") == sp[: round(len(sp) / 2)]
    x = float(np.median(list(vals.values())))
    assert set(apply_rule(vals, kinds, f"threshold:>={x}")) == {n for n, v in vals.items() if v >= x}
    assert set(apply_rule(vals, kinds, f"threshold:<{x}")) == {n for n, v in vals.items() if v < x}
    picked = order[3:5]
    assert apply_rule(vals, kinds, "names:" + ",".join(picked)) == picked


def test_nan_values_never_chosen():
    vals, kinds = _values()
    first = next(iter(vals))
    vals[first] = float("nan")
    assert first not in apply_rule(vals, kinds, "top:1.0")
    assert first not in apply_rule(vals, kinds, "threshold:>=-1")


@pytest.mark.parametrize("rule", ["top", "top:2", "top:x", "best:0.5", "threshold:0.5", "names:", "bottom:0"])
def test_bad_rules(rule):
    with pytest.raises(SelectionError):
        parse_rule(rule)


def test_unknown_names():
    vals, kinds = _values()
    with pytest.raises(SelectionError, match="unknown layer 'nope'"):
        apply_rule(vals, kinds, "names:nope")


def test_round_trip_and_errors(tmp_path):
    vals, kinds = _values()
    sel = Selection(model="demo", layers=apply_rule(vals, kinds, "bottom:0.5"), rule="bottom:0.5",
                    statistic="entropy_norm", kind=None, source_runs=["r1", "r2"],
                    options={"head_agg": "mean"}, values={**vals, "x": float("nan")})
    p = sel.save(tmp_path / "s.json")
    back = Selection.load(p)
    assert back.layers == sel.layers and back.model == "demo" and back.source_runs == ["r1", "r2"]
    assert back.created and back.values["x"] is None
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(SelectionError, match="not a selection file"):
        Selection.load(tmp_path / "bad.json")
    with pytest.raises(SelectionError, match="cannot read"):
        Selection.load(tmp_path / "missing.json")


def test_pag_applied_layers_select_exactly_these_modules():
    # diffusers PAG: re.search(layer_id, name) over module names, and not a "fake integral" match
    names = [f"down_blocks.{b}.attentions.{a}.transformer_blocks.0.attn1" for b in range(3) for a in range(2)]
    names += [n.replace("attn1", "attn2") for n in names] + ["mid_block.attentions.0.transformer_blocks.0.attn1"]
    names += ["down_blocks.1.attentions.10.transformer_blocks.0.attn1"]
    chosen = [names[0], names[3], names[-2]]
    pats = pag_applied_layers(chosen)
    matched = {n for p in pats for n in names if re.search(p, n)}
    assert matched == set(chosen)
