"""Attention maps (the paper's Figure 3): a stored map "original" and "threshold" side by side,
the per-query entropy on the frame grid, and where one query attends."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from .. import cache, figures, rules, state
from .common import complete_runs, guard, pick_run, root, show

DEFAULT_PARAM = {"absolute": 0.05, "quantile": 0.9, "mean_std": 1.0}
MAP_KINDS = ("spatial", "temporal", "joint")  # the kinds whose query-key maps are stored
AXES = {"spatial": "spatial: cell → cell, over frames", "temporal": "temporal: frame → frame, over positions"}


def render() -> None:
    st.header("Attention maps")
    guard(_body)


def _body() -> None:
    tr = root()
    runs = complete_runs(tr)
    run_id = pick_run(runs, "mp_run")
    if run_id is None:
        return
    path = str(tr.root)
    layers = cache.layers(path, run_id)
    layers = layers[layers["kind"].isin(MAP_KINDS)]
    if layers.empty:
        st.info("This run has no spatial, temporal or joint layers with stored maps.")
        return
    steps = cache.map_steps(path, run_id)  # every captured step, or every K-th (capture's maps_every)
    names = list(layers["layer_name"])
    c1, c2, c3 = st.columns([4, 2, 1])
    name = c1.selectbox("layer", names, key=state.init("mp_layer", names[0], options=names),
                        format_func=lambda n: f"{n} ({layers.set_index('layer_name').loc[n, 'kind']})")
    step = c2.select_slider("step", steps, key=state.init("mp_step", steps[0], cast=int, options=steps))
    brs = cache.branches(path, run_id)
    branch = c3.selectbox("branch", brs, key=state.init("mp_branch", brs[0], options=brs))
    c4, c5 = st.columns([1, 2])
    rule = c4.selectbox("threshold rule", list(rules.THRESHOLDS),
                        key=state.init("mp_rule", "quantile", options=list(rules.THRESHOLDS)),
                        help="; ".join(f"{r}: {d}" for r, d in rules.THRESHOLDS.items()))
    pkey = state.init(f"mp_param_{rule}", DEFAULT_PARAM[rule], cast=float,
                      bounds=(0.0, 1.0) if rule == "quantile" else (0.0, None))
    if rule == "quantile":
        st.session_state[pkey] = min(max(st.session_state[pkey], 0.0), 1.0)
    param = c5.number_input({"absolute": "t", "quantile": "q", "mean_std": "k"}[rule],
                            step=0.01 if rule != "mean_std" else 0.25, key=pkey,
                            min_value=0.0, max_value=1.0 if rule == "quantile" else None)
    axis = None
    if layers.set_index("layer_name").loc[name, "kind"] == "joint":  # attends across frames and positions
        axis = st.radio("joint map", list(AXES), format_func=AXES.get, horizontal=True,
                        key=state.init("mp_axis", "spatial", options=list(AXES)),
                        help="A joint layer's stored map pooled over the frames (query cell to key cell) "
                             "or over the positions (query frame to key frame).")
    state.sync("mp_run", "mp_layer", "mp_step", "mp_branch", "mp_rule", pkey, "mp_axis")
    if len(steps) > 1 and steps[1] - steps[0] > 1:  # captured with maps_every K > 1
        shown = ", ".join(map(str, steps[:12])) + (", …" if len(steps) > 12 else "")
        st.caption(f"This run stored maps every {steps[1] - steps[0]} steps (statistics at every step): "
                   f"steps {shown}.")
    st.caption(f"Threshold rule **{rule}**: {rules.THRESHOLDS[rule]}.")
    layer = int(layers.set_index("layer_name").loc[name, "layer"])
    m = tr.attention_map(run_id, step, layer, branch, axis=axis)
    title = f"{name}{f' ({axis})' if axis else ''} · step {step} · {branch} · run {run_id}"
    data = pd.DataFrame(m.values).rename_axis("query").reset_index().melt(id_vars="query", var_name="key",
                                                                          value_name="weight")
    where = (str(tr.root), run_id, step, layer, branch, axis)
    show(cache.figure(("map_pair", *where, rule, param, title), lambda: figures.map_pair(m, rule=rule, param=param,
                                                                                          title=title)),
         data, f"map {title}", "map_pair")
    left, right = st.columns(2)
    with left:
        emap = tr.entropy_map(run_id, step, layer, branch)
        et = f"per-query entropy · {name} · step {step}"
        edata = pd.DataFrame([(f, y, x, float(emap[f, y, x])) for f, y, x in np.ndindex(*emap.shape)],
                             columns=["frame", "y", "x", "entropy"])
        show(cache.figure(("entropy_grid", *where, et), lambda: figures.entropy_grid(emap, title=et, max_cols=4)),
             edata, et, "entropy_map")
    with right:
        n = m.values.shape[0]
        what = "query frame" if m.kind == "temporal" else f"query cell (row-major over {m.gy}×{m.gx})"
        q = st.number_input(what, min_value=0, max_value=max(0, n - 1), step=1,
                            key=state.init("mp_query", 0, cast=int, bounds=(0, max(0, n - 1))))
        state.sync("mp_query")
        q = min(int(q), n - 1)
        qt = f"where {what.split(' (')[0]} {q} attends · {name} · step {step}"
        qdata = pd.DataFrame({"key": np.arange(m.values.shape[1]), "weight": m.values[q]})
        show(cache.figure(("query", *where, q, qt), lambda: figures.query_attention(m, q, title=qt)), qdata, qt, "query")
