"""Plotly figure builders: plain functions from DataFrames / arrays to figures.

Every figure carries its recorded choices in its title or annotation, so a downloaded PNG says
how it was made. No streamlit, no torch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from capture import dims
from capture import effects as E
from capture.naming import short_name

from . import rules
from .data import KIND_ORDER, MapData, pivot

KIND_COLOURS = {"spatial": "#1f77b4", "temporal": "#2ca02c", "cross": "#9467bd", "joint": "#ff7f0e"}
INK = "#1f2328"  # dark text: tick labels and titles stay readable on a projector and in a PNG
_FONT = dict(size=12, color=INK)
TICKS = dict(size=11, color=INK)


def _wrap(text: str, width: int) -> str:
    """Break a title into lines of at most ``width`` characters at spaces (Plotly never wraps)."""
    if not text or "<br>" in text or len(text) <= width:
        return text
    lines, cur = [], ""
    for word in text.split(" "):
        if cur and len(cur) + 1 + len(word) > width:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    return "<br>".join([*lines, cur])


def _legible(fig: go.Figure, *, title_width: int = 110) -> go.Figure:
    """Every figure's last step: dark tick labels of at least 11 px on every axis, axis labels that
    push the margins instead of being clipped, and titles (and subplot titles) wrapped to fit."""
    fig.update_xaxes(tickfont=TICKS, title_font=dict(size=12, color=INK), automargin=True)
    fig.update_yaxes(tickfont=TICKS, title_font=dict(size=12, color=INK), automargin=True)
    bar = dict(tickfont=TICKS, title_font=dict(size=12, color=INK))
    if any(getattr(t, "coloraxis", None) for t in fig.data):
        fig.update_coloraxes(colorbar=bar)
    fig.update_traces(colorbar=bar, selector=dict(type="heatmap"))
    title = fig.layout.title.text or ""
    if title:
        wrapped = _wrap(title, title_width) if "<br>" not in title else title
        lines = wrapped.count("<br>") + 1
        fig.update_layout(title=dict(text=wrapped, font=dict(size=15, color=INK)))
        top = fig.layout.margin.t if fig.layout.margin.t is not None else 60
        fig.update_layout(margin=dict(t=max(top, 36 + 22 * lines)))
    fig.update_layout(font=_FONT, legend=dict(font=dict(size=12, color=INK)))
    return fig


def _step_axis(fig: go.Figure, steps) -> None:
    """Steps as categories: one cell per captured step, labelled with its step index (a run captured
    every k-th step shows 0, k, 2k, ... without gaps or cells k steps wide)."""
    steps = sorted(steps)
    every = max(1, -(-len(steps) // 12))
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=steps, tickmode="array",
                     tickvals=steps[::every], ticktext=[str(s) for s in steps[::every]])


def _kind_legend(fig: go.Figure, kinds, **where) -> None:
    """A legend entry per layer kind present (bars carry the kind's colour)."""
    for k in sorted(set(kinds), key=lambda k: KIND_ORDER.get(k, 99)):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=k, showlegend=True, hoverinfo="skip",
                                 marker=dict(symbol="square", size=12, color=KIND_COLOURS.get(k, "#7f7f7f"))),
                      **where)
    fig.update_layout(legend=dict(title_text="layer kind", orientation="h", y=1.02, yanchor="bottom", x=1,
                                  xanchor="right"))


def layer_step_heatmap(df: pd.DataFrame, *, label: str, title: str, diverging: bool = False) -> go.Figure:
    """Heat map of a long (layer, layer_name, kind, step, value) table; one panel per layer kind."""
    if df.empty:
        return _empty(title, "no values for this choice")
    kinds = sorted(df["kind"].unique(), key=lambda k: KIND_ORDER.get(k, 99))
    counts = [df.loc[df["kind"] == k, dims.LAYER_NAME].nunique() for k in kinds]
    fig = make_subplots(rows=len(kinds), cols=1, shared_xaxes=True, row_heights=counts, vertical_spacing=0.02)
    lim = float(np.nanmax(np.abs(df["value"]))) if diverging else None
    for r, k in enumerate(kinds, start=1):
        p = pivot(df[df["kind"] == k])
        fig.add_trace(go.Heatmap(
            z=p.to_numpy(), x=list(p.columns), y=[short_name(n) for n in p.index], customdata=np.array(
                [[n] * p.shape[1] for n in p.index]), coloraxis="coloraxis",
            hovertemplate="%{customdata}<br>step %{x}<br>" + label + " %{z:.4g}<extra></extra>"), row=r, col=1)
        fig.update_yaxes(autorange="reversed", title_text=f"<b>{k}</b> ({len(p)})", row=r, col=1)
    _step_axis(fig, df[dims.STEP].unique().tolist())
    fig.update_xaxes(title_text="step (captured)", row=len(kinds), col=1)
    ca = dict(colorscale="RdBu_r", cmid=0, cmin=-lim, cmax=lim) if diverging else dict(colorscale="Viridis")
    fig.update_layout(title=title, coloraxis=dict(colorbar=dict(title=label), **ca),
                      height=max(360, 16 * sum(counts) + 140), margin=dict(l=10, r=10, t=70, b=40))
    _legible(fig)
    for r, k in enumerate(kinds, start=1):  # after _legible: the kind's own colour on its panel's label
        fig.update_yaxes(title_font=dict(color=KIND_COLOURS.get(k, INK)), row=r, col=1)
    return fig


def proportion_figure(df: pd.DataFrame, *, formula: str, red_line: str, title: str) -> go.Figure:
    """The paper's Figure 4: per-layer energy, energy proportion and normalized entropy proportion;
    a red line at each kind's split, bars above it solid (top) and below it faded (bottom)."""
    if df.empty:
        return _empty(title, "no values for this choice")
    x = np.arange(len(df))
    names = df[dims.LAYER_NAME].tolist()
    colours = [KIND_COLOURS.get(k, "#7f7f7f") for k in df["kind"]]
    panels = [(dims.ENERGY, "energy", None), (f"{dims.ENERGY}_prop", "energy proportion", f"{dims.ENERGY}"),
              (f"{dims.ENTROPY_NORM}_prop", "normalized entropy proportion", f"{dims.ENTROPY_NORM}")]
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[p[1] for p in panels])
    for r, (col, label, base) in enumerate(panels, start=1):
        opacity = [1.0] * len(df) if base is None else [1.0 if h == "top" else 0.35 for h in df[f"{base}_half"]]
        fig.add_trace(go.Bar(x=x, y=df[col], marker=dict(color=colours, opacity=opacity), customdata=names,
                             hovertemplate="%{customdata}<br>" + label + " %{y:.4g}<extra></extra>", showlegend=False),
                      row=r, col=1)
        zero = np.flatnonzero(np.asarray(df[col], dtype=float) == 0)
        if len(zero):  # a zero-height bar (the minimum under minmax_of_kind) is a dot on the axis, not nothing
            fig.add_trace(go.Scatter(x=x[zero], y=np.zeros(len(zero)), mode="markers", showlegend=False,
                                     marker=dict(color=[colours[i] for i in zero], size=8, symbol="diamond"),
                                     customdata=[names[i] for i in zero],
                                     hovertemplate="%{customdata}<br>" + label + " 0<extra></extra>"), row=r, col=1)
        if base is not None:
            for kind, idx in df.groupby("kind", sort=False).indices.items():
                y = float(df[f"{base}_line"].iloc[idx[0]])
                fig.add_trace(go.Scatter(x=[idx.min() - 0.5, idx.max() + 0.5], y=[y, y], mode="lines",
                                         line=dict(color="red", width=2), name=f"red line ({red_line})",
                                         showlegend=(r == 2 and kind == df["kind"].iloc[0]),
                                         hovertemplate=f"{kind} split: %{{y:.4g}}<extra></extra>"), row=r, col=1)
    _kind_legend(fig, df["kind"], row=1, col=1)
    fig.update_xaxes(tickvals=x, ticktext=[short_name(n) for n in names], tickangle=-60, row=3, col=1)
    subtitle = (f"proportion: {formula} = {rules.PROPORTIONS[formula]}<br>"
                f"red line: {red_line} = {rules.RED_LINES[red_line]}")
    lines = _wrap(title, 100)
    fig.update_layout(title=dict(text=f"{lines}<br><span style='font-size:12px'>{subtitle}</span>"), height=800,
                      margin=dict(l=10, r=10, t=70 + 22 * (lines.count("<br>") + 3), b=130), bargap=0.15,
                      legend=dict(orientation="h", y=1.0, yanchor="bottom", x=1, xanchor="right", title_text=""))
    return _legible(fig)


def _map_axes(m: MapData) -> tuple[str, str]:
    return ("query frame", "key frame") if m.kind == "temporal" else ("query cell", "key cell")


def map_pair(m: MapData, *, rule: str, param: float, title: str) -> go.Figure:
    """The paper's Figure 3: a stored map, "original" and "threshold" side by side."""
    thr = rules.apply_threshold(m.values, rule, param)
    cut = rules.threshold_value(m.values, rule, param)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=["original", _wrap(f"threshold: {rule} {param:g} → cut at {cut:.3g}, "
                                                          f"{np.mean(thr > 0):.0%} of weights kept", 48)])
    qa, ka = _map_axes(m)
    for c, z in enumerate((m.values, thr), start=1):
        fig.add_trace(go.Heatmap(z=z, coloraxis="coloraxis",
                                 hovertemplate=f"{qa} %{{y}}<br>{ka} %{{x}}<br>weight %{{z:.4g}}<extra></extra>"),
                      row=1, col=c)
        fig.update_yaxes(autorange="reversed", title_text=qa if c == 1 else None, scaleanchor=f"x{c}", row=1, col=c)
        fig.update_xaxes(title_text=ka, row=1, col=c)
    fig.update_layout(title=title, coloraxis=dict(colorscale="Viridis", colorbar=dict(title="weight")),
                      height=500, margin=dict(l=10, r=10, t=90, b=40))
    return _legible(fig, title_width=100)


def entropy_grid(emap: np.ndarray, *, title: str, max_cols: int = 8) -> go.Figure:
    """Pooled per-query entropy (frames, gy, gx) as small multiples, one tile per frame, laid out
    in one mosaic heat map (one trace draws much faster than one subplot per frame)."""
    if emap.size == 0:
        return _empty(title, "no per-query entropy stored")
    n, gy, gx = emap.shape
    cols = min(n, max_cols)
    rows = -(-n // cols)
    pad = max(1, round(0.4 * gy))  # empty rows above each tile row: room for its "frame k" labels
    py, px = gy + pad, gx + 1  # pitch of a tile
    z = np.full((rows * py, cols * px - 1), np.nan)
    frame = np.full(z.shape, -1)
    for f in range(n):
        r, c = divmod(f, cols)
        z[r * py + pad: (r + 1) * py, c * px: c * px + gx] = emap[f]
        frame[r * py + pad: (r + 1) * py, c * px: c * px + gx] = f
    yy, xx = np.indices(z.shape)
    custom = np.stack([frame, (yy - pad) % py, xx % px], axis=-1)
    fig = go.Figure(go.Heatmap(z=z, customdata=custom, colorscale="Magma", colorbar=dict(title="nats"),
                               zmin=float(np.nanmin(emap)), zmax=float(np.nanmax(emap)), hoverongaps=False,
                               hovertemplate="frame %{customdata[0]}<br>y %{customdata[1]} x %{customdata[2]}"
                                             "<br>entropy %{z:.3f}<extra></extra>"))
    notes = [dict(x=(f % cols) * px + (gx - 1) / 2, y=(f // cols) * py + pad - 0.5, yanchor="bottom",
                  showarrow=False, text=f"frame {f}", font=dict(size=11, color=INK)) for f in range(n)]
    fig.update_layout(annotations=notes)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x")
    fig.update_layout(title=title, height=max(240, 170 * rows + 100), margin=dict(l=10, r=10, t=70, b=10),
                      plot_bgcolor="rgba(0,0,0,0)")
    return _legible(fig, title_width=60)


def query_attention(m: MapData, query: int, *, title: str) -> go.Figure:
    """Where one query cell (spatial: on the key grid) or frame (temporal) attends."""
    row = m.values[query]
    if m.kind == "temporal":
        fig = go.Figure(go.Bar(x=np.arange(row.size), y=row, marker_color=KIND_COLOURS["temporal"],
                               hovertemplate="key frame %{x}<br>weight %{y:.4g}<extra></extra>"))
        fig.add_vline(x=query, line=dict(color="red", dash="dot"))
        fig.update_xaxes(title_text="key frame")
        fig.update_yaxes(title_text="attention weight")
    else:
        grid = row.reshape(m.gy, m.gx)
        qy, qx = divmod(query, m.gx)
        fig = go.Figure(go.Heatmap(z=grid, colorscale="Viridis", colorbar=dict(title="weight"),
                                   hovertemplate="key y %{y} x %{x}<br>weight %{z:.4g}<extra></extra>"))
        fig.add_shape(type="rect", x0=qx - 0.5, x1=qx + 0.5, y0=qy - 0.5, y1=qy + 0.5, line=dict(color="red", width=3))
        fig.update_yaxes(autorange="reversed", scaleanchor="x")
    fig.update_layout(title=title, height=400, margin=dict(l=10, r=10, t=60, b=40))
    return _legible(fig, title_width=60)


def ranking_figure(df: pd.DataFrame, selected, *, label: str, title: str) -> go.Figure:
    """Layers sorted by value (highest first); chosen layers in red."""
    if df.empty:
        return _empty(title, "no values for this choice")
    d = df.sort_values("value", ascending=False)
    chosen = set(selected)
    fig = go.Figure(go.Bar(
        x=d["value"], y=[short_name(n) for n in d[dims.LAYER_NAME]], orientation="h", customdata=d[dims.LAYER_NAME],
        marker_color=["#d62728" if n in chosen else KIND_COLOURS.get(k, "#7f7f7f")
                      for n, k in zip(d[dims.LAYER_NAME], d["kind"])], showlegend=False,
        hovertemplate="%{customdata}<br>" + label + " %{x:.4g}<extra></extra>"))
    _kind_legend(fig, d["kind"])
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="chosen", hoverinfo="skip",
                             marker=dict(symbol="square", size=12, color="#d62728")))
    fig.update_yaxes(autorange="reversed", categoryorder="array",
                     categoryarray=[short_name(n) for n in d[dims.LAYER_NAME]])
    fig.update_layout(title=title, height=max(340, 18 * len(d) + 130), xaxis_title=label,
                      margin=dict(l=10, r=10, t=90, b=40))
    return _legible(fig)


def layer_diff_bars(df: pd.DataFrame, *, label: str, title: str) -> go.Figure:
    """Per-layer difference (columns layer_name, kind, value) as bars coloured by kind."""
    if df.empty:
        return _empty(title, "no layers in common")
    fig = go.Figure(go.Bar(x=[short_name(n) for n in df[dims.LAYER_NAME]], y=df["value"],
                           customdata=df[dims.LAYER_NAME], marker_color=[KIND_COLOURS.get(k, "#7f7f7f")
                                                                         for k in df["kind"]], showlegend=False,
                           hovertemplate="%{customdata}<br>" + label + " %{y:.4g}<extra></extra>"))
    _kind_legend(fig, df["kind"])
    fig.update_xaxes(tickangle=-60, categoryorder="array", categoryarray=[short_name(n) for n in df[dims.LAYER_NAME]])
    fig.update_layout(title=title, height=460, yaxis_title=label, margin=dict(l=10, r=10, t=90, b=130))
    return _legible(fig)


PERTURBATION_COLOURS = {"I": "#1f77b4", "U": "#ff7f0e"}


def _study_kinds(df: pd.DataFrame) -> list[str]:
    return sorted(set(df["kind"].dropna()), key=lambda k: KIND_ORDER.get(k, 99))


def _pert_colour(p: str, i: int) -> str:
    return PERTURBATION_COLOURS.get(p, ["#2ca02c", "#d62728", "#9467bd", "#8c564b"][i % 4])


def effect_bars(df: pd.DataFrame, metric: str, *, title: str) -> go.Figure:
    """Per-layer mean effect (``capture.effects.layer_summary`` rows of one metric), one row of
    bars per layer kind, perturbations side by side, ± one standard deviation over prompts/seeds."""
    if df.empty:
        return _empty(title, "no measured one-layer runs")
    kinds = _study_kinds(df)
    fig = make_subplots(rows=len(kinds), cols=1, subplot_titles=[f"{k} layers" for k in kinds], vertical_spacing=0.18)
    for r, kind in enumerate(kinds, start=1):
        d = df[df["kind"] == kind]
        names = list(dict.fromkeys(d[dims.LAYER_NAME]))
        for i, p in enumerate(sorted(set(d["perturbation"]))):
            v = d[d["perturbation"] == p].set_index(dims.LAYER_NAME).reindex(names)
            fig.add_trace(go.Bar(x=[short_name(n) for n in names], y=v["effect"], name=p, legendgroup=p,
                                 showlegend=r == 1, marker_color=_pert_colour(p, i), customdata=names,
                                 error_y=dict(type="data", array=v["effect_std"].fillna(0), thickness=1),
                                 hovertemplate="%{customdata}<br>" + p + ": %{y:.4g}<extra></extra>"), row=r, col=1)
        fig.update_yaxes(title_text=E.label(metric), row=r, col=1)
    fig.update_xaxes(tickangle=-60)
    fig.update_layout(title=title, barmode="group", height=320 * len(kinds) + 100,
                      legend_title_text="map replaced by", margin=dict(l=10, r=10, t=70, b=10))
    return _legible(fig)


def effect_histograms(df: pd.DataFrame, metric: str, *, title: str) -> go.Figure:
    """How the per-layer effect is distributed (the paper's Figure 2): one panel per layer kind,
    perturbations overlaid."""
    if df.empty:
        return _empty(title, "no measured one-layer runs")
    kinds = _study_kinds(df)
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=[f"{k} layers" for k in kinds])
    lo, hi = float(df["effect"].min()), float(df["effect"].max())
    size = (hi - lo) / 15 if hi > lo else 1.0
    for c, kind in enumerate(kinds, start=1):
        for i, p in enumerate(sorted(set(df["perturbation"]))):
            v = df[(df["kind"] == kind) & (df["perturbation"] == p)]
            fig.add_trace(go.Histogram(x=v["effect"], name=p, legendgroup=p, showlegend=c == 1, opacity=0.65,
                                       marker_color=_pert_colour(p, i), xbins=dict(start=lo, end=hi + size, size=size)),
                          row=1, col=c)
        fig.update_xaxes(title_text=E.label(metric), row=1, col=c)
    fig.update_yaxes(title_text="layers", row=1, col=1)
    fig.update_layout(title=title, barmode="overlay", height=380, legend_title_text="map replaced by",
                      margin=dict(l=10, r=10, t=70, b=10))
    return _legible(fig)


def entropy_scatter(df: pd.DataFrame, metric: str, *, title: str) -> go.Figure:
    """Layer entropy (baseline runs) against the layer's mean effect, one panel per kind; the
    legend gives Spearman's ρ per perturbation."""
    if df.empty:
        return _empty(title, "no measured one-layer runs")
    kinds = _study_kinds(df)
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=[f"{k} layers" for k in kinds])
    for c, kind in enumerate(kinds, start=1):
        for i, p in enumerate(sorted(set(df["perturbation"]))):
            v = df[(df["kind"] == kind) & (df["perturbation"] == p)]
            rho = E.rank_correlation(v["entropy"], v["effect"])
            fig.add_trace(go.Scatter(x=v["entropy"], y=v["effect"], mode="markers", marker=dict(
                color=_pert_colour(p, i), size=8), name=f"{p} · {kind} ρ = {rho:+.2f}" if rho is not None else
                f"{p} · {kind}", customdata=v[dims.LAYER_NAME], hovertemplate=(
                "%{customdata}<br>entropy %{x:.3f}<br>" + p + ": %{y:.4g}<extra></extra>")), row=1, col=c)
        fig.update_xaxes(title_text="normalized entropy (baseline)", row=1, col=c)
    fig.update_yaxes(title_text=E.label(metric), row=1, col=1)
    fig.update_layout(title=title, height=400, margin=dict(l=10, r=10, t=70, b=10))
    return _legible(fig)


def _empty(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title, height=240, xaxis_visible=False, yaxis_visible=False)
    return _legible(fig)
