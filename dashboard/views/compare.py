"""Compare: two runs side by side (e.g. baseline and perturbed): videos, attributes that differ,
per-layer differences of a statistic and the layer × step difference."""

from __future__ import annotations

import streamlit as st

from capture import dims

from .. import cache, figures, rules, state, words
from ..data import STATS
from .common import complete_runs, guard, pick_run, root, show, steps_paired, unavailable, video

ATTRS = ("model", "prompt", "seed", "perturbation", "num_inference_steps", "guidance_scale", "num_frames", "height",
         "width", "capture")


def render() -> None:
    st.header("Compare two runs")
    guard(_body)


def _body() -> None:
    tr = root()
    runs = complete_runs(tr)
    if len(runs) < 2:
        st.info("Comparing needs at least two complete runs.")
        return
    path = str(tr.root)
    ca, cb = st.columns(2)
    with ca:
        a = pick_run(runs, "cmp_a", "run A (baseline)")
    with cb:
        b = pick_run(runs, "cmp_b", "run B", default_index=1)
    c1, c2 = st.columns(2)
    stats = [dims.ENTROPY, dims.ENTROPY_NORM, dims.ENERGY]
    stat = c1.selectbox("statistic", stats, format_func=STATS.get,
                        key=state.init("cmp_stat", dims.ENTROPY_NORM, options=stats))
    brs = [x for x in cache.branches(path, a) if x in cache.branches(path, b)]
    if not brs:
        unavailable("the two runs have no CFG branch in common")
        return
    branch = c2.selectbox("branch", brs, key=state.init("cmp_branch", brs[0], options=brs))
    state.sync("cmp_a", "cmp_b", "cmp_stat", "cmp_branch")
    va, vb = st.columns(2)
    attrs = {r: tr.attrs(r) for r in (a, b)}
    for col, r in ((va, a), (vb, b)):
        with col:
            video(tr, r, f"run {r}")
    diff = {k: (attrs[a].get(k), attrs[b].get(k)) for k in ATTRS if attrs[a].get(k) != attrs[b].get(k)}
    if diff:
        st.markdown("**Differences in attributes**")
        st.table({"attribute": list(diff), "run A": [words.attribute(k, x[0]) for k, x in diff.items()],
                  "run B": [words.attribute(k, x[1]) for k, x in diff.items()]})
    else:
        st.caption("The two runs have the same model, prompt, seed, settings and perturbation.")
    kw = dict(branch=branch)
    pa = cache.per_layer(path, (a,), stat, **kw)
    pb = cache.per_layer(path, (b,), stat, **kw)
    d = pa.merge(pb[["layer_name", "value"]], on="layer_name", suffixes=("_a", "_b"))
    d["value"] = d["value_b"] - d["value_a"]
    title = f"Δ {STATS[stat]} per layer (B − A, {rules.STEP_AGG['mean']}, {rules.HEAD_AGG['mean']}) · {branch}"
    bars = cache.figure(("cmp_bars", path, a, b, stat, branch, title),
                        lambda: figures.layer_diff_bars(d, label=f"Δ {STATS[stat]}", title=title))
    show(bars, d, title, "cmp_bars")
    if not steps_paired(path, b, a):
        return
    hd = cache.layer_step_diff(path, b, a, stat, branch=branch)
    ht = f"Δ {STATS[stat]} over (layer, step) = run {b} − run {a} · {branch}"
    heat = cache.figure(("cmp_heat", path, a, b, stat, branch, ht),
                        lambda: figures.layer_step_heatmap(hd, label=f"Δ {STATS[stat]}", title=ht, diverging=True))
    show(heat, hd, ht, "cmp_heat")
