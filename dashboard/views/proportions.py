"""Proportions (the paper's Figure 4): per-layer energy, energy proportion and normalized entropy
proportion with the red line, at one step or aggregated, for one run or the mean of several."""

from __future__ import annotations

import streamlit as st

from .. import cache, figures, rules, state
from .common import complete_runs, guard, pick_runs, root, show

ALL_STEPS = "all steps"


def render() -> None:
    st.header("Proportions")
    guard(_body)


def _body() -> None:
    tr = root()
    runs = complete_runs(tr)
    chosen = pick_runs(runs, "pr_runs", "runs (the mean over them is shown)", "Choose at least one run.")
    if chosen is None:
        return
    path = str(tr.root)
    c1, c2, c3, c4, c5, c6 = st.columns(6)
    step_opts = [ALL_STEPS] + [str(s) for s in cache.steps(path, chosen[0])["step"]]
    step = c1.selectbox("step", step_opts, key=state.init("pr_step", ALL_STEPS, options=step_opts))
    sagg = c2.selectbox("step aggregation", list(rules.STEP_AGG), format_func=rules.STEP_AGG.get,
                        key=state.init("pr_sagg", "mean", options=list(rules.STEP_AGG)), disabled=step != ALL_STEPS)
    hagg = c3.selectbox("head aggregation", list(rules.HEAD_AGG), format_func=rules.HEAD_AGG.get,
                        key=state.init("pr_hagg", "mean", options=list(rules.HEAD_AGG)))
    formula = c4.selectbox("proportion formula", list(rules.PROPORTIONS),
                           key=state.init("pr_formula", "share_of_kind", options=list(rules.PROPORTIONS)),
                           help="\n".join(f"{k}: {v}" for k, v in rules.PROPORTIONS.items()))
    line = c5.selectbox("red-line rule", list(rules.RED_LINES),
                        key=state.init("pr_line", "median", options=list(rules.RED_LINES)),
                        help="\n".join(f"{k}: {v}" for k, v in rules.RED_LINES.items()))
    brs = cache.branches(path, chosen[0])
    branch = c6.selectbox("branch", brs, key=state.init("pr_branch", brs[0], options=brs))
    state.sync("pr_runs", "pr_step", "pr_sagg", "pr_hagg", "pr_formula", "pr_line", "pr_branch")
    df = cache.proportions(path, tuple(chosen), step=None if step == ALL_STEPS else int(step), branch=branch,
                           formula=formula, red_line=line, head_agg=hagg, step_agg=sagg)
    if step != ALL_STEPS and len(chosen) > 1:
        _same_timestep(path, chosen, int(step))
    where = f"step {step}" if step != ALL_STEPS else rules.STEP_AGG[sagg]
    who = f"run {chosen[0]}" if len(chosen) == 1 else f"mean of {len(chosen)} runs"
    title = f"Energy and entropy proportions · {who} · {where} · {rules.HEAD_AGG[hagg]} · branch {branch}"
    show(figures.proportion_figure(df, formula=formula, red_line=line, title=title), df, title, "proportions")


def _same_timestep(path: str, run_ids, step: int) -> None:
    """The mean over runs at one step index mixes noise levels where the runs reach that step at
    different timesteps (different step counts, or captured every k-th step): say so."""
    at = {}
    for r in run_ids:
        st_ = cache.steps(path, r)
        row = st_[st_["step"] == step]
        at[r] = float(row["timestep"].iloc[0]) if len(row) and row["timestep"].notna().all() else None
    values = {t for t in at.values() if t is not None}
    missing = [r for r, t in at.items() if t is None]
    if len(values) > 1 or missing:
        shown = ", ".join(f"{r}: {t:g}" if t is not None else f"{r}: none" for r, t in at.items())
        st.warning(f"⚠ the chosen runs are at different timesteps at step {step} ({shown}): the mean mixes noise "
                   f"levels; choose runs with the same steps, or aggregate over steps", icon=None)
