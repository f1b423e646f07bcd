"""Layer selection: rank layers by a statistic over calibration runs, choose a rule, export the
selection JSON (read by `attnlens apply`) and the equivalent diffusers `pag_applied_layers`."""

from __future__ import annotations

import streamlit as st

from capture import dims
from capture.selection import Selection, SelectionError, apply_rule

from .. import cache, figures, notes, rules, state
from ..data import STATS
from .common import complete_runs, guard, pick_runs, root, show

RULE_KINDS = ["top", "bottom", "threshold", "names"]
KINDS = ["any", "spatial", "temporal", "cross", "joint"]


def render() -> None:
    st.header("Layer selection")
    guard(_body)


def _body() -> None:
    tr = root()
    runs = complete_runs(tr)
    chosen = pick_runs(runs, "sel_runs", "calibration runs", "Choose at least one calibration run.")
    if chosen is None:
        return
    path = str(tr.root)
    models = sorted(set(runs.set_index("run").loc[chosen, "model"].astype(str)))
    if len(models) > 1:
        st.warning(f"The calibration runs come from different models ({', '.join(models)}); layers are matched by name.")
    c1, c2, c3, c4 = st.columns([2, 1, 1, 2])
    stats = [dims.ENTROPY_NORM, dims.ENTROPY, dims.ENERGY]
    stat = c1.selectbox("rank by", stats, format_func=STATS.get,
                        key=state.init("sel_stat", dims.ENTROPY_NORM, options=stats))
    kind = c2.selectbox("layer kind", KINDS, key=state.init("sel_kind", "spatial", options=KINDS))
    rk = c3.selectbox("rule", RULE_KINDS, key=state.init("sel_rule", "bottom", options=RULE_KINDS),
                      help="top/bottom: a fraction of the layers; threshold: a bound; names: hand-picked")
    brs = cache.branches(path, chosen[0])
    branch = c4.selectbox("branch", brs, key=state.init("sel_branch", brs[0], options=brs))
    vals = cache.per_layer(path, tuple(chosen), stat, branch=branch)
    if kind != "any":
        vals = vals[vals["kind"] == kind]
    if vals.empty:
        st.info(f"No {kind} layers in these runs.")
        return
    values = dict(zip(vals["layer_name"], vals["value"]))
    kinds = dict(zip(vals["layer_name"], vals["kind"]))
    if rk in ("top", "bottom"):
        frac = st.slider("fraction of layers", 0.05, 1.0, step=0.05, key=state.init("sel_frac", 0.5, cast=float, bounds=(0.05, 1.0)))
        rule = f"{rk}:{frac:g}"
    elif rk == "threshold":
        t1, t2 = st.columns([1, 3])
        op = t1.selectbox("keep values", [">=", "<="], key=state.init("sel_op", ">=", options=[">=", "<="]))
        x = t2.number_input("bound", value=float(vals["value"].median()), key="sel_bound", format="%.5g")
        rule = f"threshold:{op}{x:.6g}"
    else:
        picked = st.multiselect("layers", list(values), key=state.init("sel_names", [], options=list(values),
                                                                       multi=True))
        rule = "names:" + ",".join(picked)
    state.sync("sel_runs", "sel_stat", "sel_kind", "sel_rule", "sel_branch", "sel_frac", "sel_op", "sel_names")
    try:
        layers = apply_rule(values, kinds, rule)
    except SelectionError as e:
        st.info(str(e) if rk != "names" else "Pick layers by name.")
        layers = []
    title = f"{STATS[stat]} per layer ({rules.STEP_AGG['mean']}, {rules.HEAD_AGG['mean']}) · " \
            f"{len(chosen)} run(s) · rule {rule.split(':')[0]}"
    show(figures.ranking_figure(vals, layers, label=STATS[stat], title=title), vals, title, "ranking")
    st.markdown(f"**{len(layers)} layer(s) chosen** by `{rule}`" + (f" among {kind} layers" if kind != "any" else ""))
    sel = Selection(model=models[0], layers=layers, rule=rule, statistic=stat, kind=None if kind == "any" else kind,
                    source_runs=list(chosen), values={n: values[n] for n in layers},
                    options={"branch": branch, "head_agg": "mean", "step_agg": "mean", "part": "all"})
    text = sel.to_json()
    st.download_button("Download selection JSON", text.encode(), file_name="selection.json",
                       mime="application/json", key="sel_download", disabled=not layers)
    if layers:  # full names, never cut: a table as wide as the page
        st.dataframe({"layer": layers, "kind": [kinds[n] for n in layers],
                      STATS[stat]: [round(float(values[n]), 6) for n in layers]},
                     hide_index=True, width="stretch", key="sel_chosen_table")
    st.markdown("diffusers `pag_applied_layers`:")
    st.code(repr(sel.pag_applied_layers()), language="python", wrap_lines=True)
    with st.form("sel_save", clear_on_submit=False):
        name = st.text_input("save in the trace root as", key="sel_save_name")
        if st.form_submit_button("Save selection", disabled=not layers, key="sel_save_submit"):
            try:
                p = notes.save_selection(tr.root, name, sel)
                st.success(f"saved as {p.stem}")
            except (ValueError, notes.NotSaved) as e:
                st.error(str(e))
    saved = notes.list_selections(tr.root)
    if saved:
        st.subheader("Saved selections")
        st.dataframe([{"name": k, "model": s.model, "rule": s.rule, "statistic": s.statistic, "kind": s.kind,
                       "layers": len(s.layers), "created": s.created} for k, s in saved.items()], hide_index=True,
                     key="sel_saved_table")
