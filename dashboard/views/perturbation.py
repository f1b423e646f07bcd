"""Perturbation study: what replacing one layer's attention map (I, U, temperature) did to the
video, per layer (spatial and temporal apart), as a distribution (the paper's Figure 2), against the
layer's entropy, and as baseline and perturbed videos side by side. Reads sweeps' runs and the
metrics table; run `attnlens study` or `attnlens sweep` first."""

from __future__ import annotations

import streamlit as st

from capture import effects

from .. import cache, figures, state
from .common import guard, root, show, video


def render() -> None:
    st.header("Perturbation study")
    guard(_body)


def _body() -> None:
    tr = root()
    path = str(tr.root)
    sw = tr.sweeps()
    sw = sw[sw["single_layer"] > 0]
    if sw.empty:
        st.info("No sweep with measured one-layer runs in this root. Run the paper's study with "
                "`attnlens study --root DIR`, or a sweep with `attnlens sweep`.")
        return
    names = list(sw["sweep"])  # newest first: the view opens on the sweep that finished last
    c1, c2, c3 = st.columns([2, 2, 2])
    sweep = c1.selectbox("sweep", names, key=state.init("ps_sweep", names[0], options=names),
                         format_func=lambda s: f"{s} · {sw.set_index('sweep').loc[s, 'model']}")
    df = cache.study(path, sweep)
    if df.empty:
        st.info(f"Sweep {sweep} has no measured one-layer runs yet: `attnlens sweep` measures them when it ends.")
        return
    metrics = sorted(set(df["metric"]), key=lambda m: (m not in ("ssim_mean", "temporal_flicker"), m))
    metric = c2.selectbox("metric", metrics, format_func=effects.label,
                          key=state.init("ps_metric", metrics[0], options=metrics))
    perts = sorted(set(df["perturbation"]))
    chosen = c3.multiselect("maps replaced by", perts, key=state.init("ps_perts", perts, options=perts, multi=True))
    state.sync("ps_sweep", "ps_metric", "ps_perts")
    d = df[(df["metric"] == metric) & df["perturbation"].isin(chosen)]
    n = int(d["n"].max()) if len(d) else 0
    what = f"{effects.label(metric)} · sweep {sweep} · mean over {n} prompt × seed pairs"
    if metric in effects.PAIRED:
        st.caption(f"{effects.label(metric)}: the perturbed video measured against its baseline (same prompt and "
                   "seed); lower means a larger change.")
    else:
        st.caption(f"{effects.label(metric)}: perturbed minus baseline of the same prompt and seed.")
    show(figures.effect_bars(d, metric, title=f"Per layer · {what}"), d, f"study {sweep} {metric} per layer",
         "ps_bars")
    show(figures.effect_histograms(d, metric, title=f"Distribution over layers · {what}"), None, "", "ps_hist")
    show(figures.entropy_scatter(d, metric, title=f"Layer entropy vs effect · {what}"), None, "", "ps_scatter")
    _videos(tr, sweep, d, metric)


def _videos(tr, sweep, d, metric) -> None:
    st.subheader("Baseline and perturbed videos")
    if d.empty:
        return
    ranked = d.sort_values("effect", ascending=metric in effects.PAIRED)
    options = [f"{r.layer_name}|{r.perturbation}" for r in ranked.itertuples()]
    # another sweep, metric or set of maps ranks differently: start again from its largest effect
    state.forget_when_changed("ps_layer", (sweep, metric, tuple(sorted(set(d["perturbation"])))))
    c1, c2 = st.columns([3, 2])
    pick = c1.selectbox("layer and map (largest effect first)", options, key=state.init("ps_layer", options[0],
                                                                                          options=options),
                        format_func=lambda o: f"{figures.short_name(o.split('|')[0])} · {o.split('|')[1]}")
    layer, pert = pick.split("|")
    pairs = tr.study_pairs(sweep, layer, pert)
    if pairs.empty:
        st.info("No measured run of this layer and map.")
        return
    labels = [f"{r.prompt[:60]} · seed {r.seed}" for r in pairs.itertuples()]
    state.forget_when_changed("ps_pair", (sweep, pick))
    i = c2.selectbox("prompt and seed", range(len(labels)), format_func=labels.__getitem__, key="ps_pair")
    state.sync("ps_layer")
    row = pairs.iloc[i]
    st.caption(f"`{layer}`, map replaced by {pert} · " + " · ".join(
        f"{effects.label(m)} {row[m]:.4g}" for m in pairs.columns[4:] if row[m] == row[m]))
    a, b = st.columns(2)
    with a:
        video(tr, row["baseline_run"], f"baseline {row['baseline_run']}")
    with b:
        video(tr, row["run"], f"{pert} at {figures.short_name(layer)} · {row['run']}")
