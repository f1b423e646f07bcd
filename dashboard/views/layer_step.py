"""Layer × step: heat maps of a statistic over (layer, step), one run or the difference of two."""

from __future__ import annotations

import streamlit as st

from capture import dims

from .. import cache, figures, rules, state
from ..data import STATS
from .common import complete_runs, guard, pick_run, root, run_label, show, steps_paired

NO_COMPARE = "(none)"


def render() -> None:
    st.header("Layer × step")
    guard(_body)


def _body() -> None:
    tr = root()
    runs = complete_runs(tr)
    run_id = pick_run(runs, "ls_run")
    if run_id is None:
        return
    path = str(tr.root)
    c1, c2, c3, c4, c5 = st.columns(5)
    stats = [dims.ENTROPY, dims.ENTROPY_NORM, dims.ENERGY]
    stat = c1.selectbox("statistic", stats, key=state.init("ls_stat", dims.ENTROPY_NORM, options=stats),
                        format_func=STATS.get)
    brs = cache.branches(path, run_id)
    branch = c2.selectbox("branch", brs, key=state.init("ls_branch", brs[0], options=brs))
    n_heads = cache.heads(path, run_id)
    head_opts = ["avg"] + [str(h) for h in range(n_heads)]
    head = c3.selectbox("head", head_opts, key=state.init("ls_head", "avg", options=head_opts),
                        format_func=lambda h: "heads aggregated" if h == "avg" else f"head {h}")
    aggs = list(rules.HEAD_AGG)
    agg = c4.selectbox("head aggregation", aggs, key=state.init("ls_hagg", "mean", options=aggs),
                       format_func=rules.HEAD_AGG.get, disabled=head != "avg")
    others = [NO_COMPARE] + [r for r in runs["run"] if r != run_id]
    label_of = run_label(runs)  # built once: per option it would cost O(runs) each, O(runs²) in all
    other = c5.selectbox("minus run", others, key=state.init("ls_minus", NO_COMPARE, options=others),
                         format_func=lambda r: r if r == NO_COMPARE else label_of(r))
    state.sync("ls_run", "ls_stat", "ls_branch", "ls_head", "ls_hagg", "ls_minus")
    kw = dict(branch=branch, head=None if head == "avg" else int(head), head_agg=agg)
    label = STATS[stat]
    how = "heads: " + (rules.HEAD_AGG[agg] if head == "avg" else f"head {head}")
    if other == NO_COMPARE:
        df = cache.layer_step(path, run_id, stat, **kw)
        title = f"{label} · run {run_id} · branch {branch} · {how}"
        fig = cache.figure(("layer_step", path, run_id, stat, tuple(sorted(kw.items())), title),
                           lambda: figures.layer_step_heatmap(df, label=label, title=title))
    else:
        if not steps_paired(path, run_id, other):
            return
        df = cache.layer_step_diff(path, run_id, other, stat, **kw)
        title = f"Δ {label} = run {run_id} − run {other} · branch {branch} · {how}"
        fig = cache.figure(("layer_step_diff", path, run_id, other, stat, tuple(sorted(kw.items())), title),
                           lambda: figures.layer_step_heatmap(df, label=f"Δ {label}", title=title, diverging=True))
    show(fig, df, title, "layer_step")
