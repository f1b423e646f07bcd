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

from . import rules
from .data import KIND_ORDER, MapData, pivot

KIND_COLOURS = {"spatial": "#1f77b4", "temporal": "#2ca02c", "cross": "#9467bd", "joint": "#ff7f0e"}
_FONT = dict(size=11)


def short_name(name: str) -> str:
    """A compact label for a qualified module name (hover text keeps the full name)."""
    return (name.replace("down_blocks.", "d").replace("up_blocks.", "u").replace("mid_block.", "mid.")
            .replace("attentions.", "a").replace("motion_modules.", "m").replace("transformer_blocks.", "t")
            .replace("temporal_transformer_blocks.", "tt"))


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
        fig.update_yaxes(autorange="reversed", tickfont=dict(size=9), title_text=f"<b>{k}</b> ({len(p)})",
                         title_font=dict(color=KIND_COLOURS.get(k, "#333")), row=r, col=1)
    n_steps = df[dims.STEP].nunique()
    fig.update_xaxes(dtick=max(1, n_steps // 12))
    fig.update_xaxes(title_text="step", row=len(kinds), col=1)
    ca = dict(colorscale="RdBu_r", cmid=0, cmin=-lim, cmax=lim) if diverging else dict(colorscale="Viridis")
    fig.update_layout(title=title, coloraxis=dict(colorbar=dict(title=label), **ca), font=_FONT,
                      height=max(360, 14 * sum(counts) + 120), margin=dict(l=10, r=10, t=70, b=40))
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
        if base is not None:
            for kind, idx in df.groupby("kind", sort=False).indices.items():
                y = float(df[f"{base}_line"].iloc[idx[0]])
                fig.add_trace(go.Scatter(x=[idx.min() - 0.5, idx.max() + 0.5], y=[y, y], mode="lines",
                                         line=dict(color="red", width=2), name=f"red line ({red_line})",
                                         showlegend=(r == 2 and kind == df["kind"].iloc[0]),
                                         hovertemplate=f"{kind} split: %{{y:.4g}}<extra></extra>"), row=r, col=1)
    for kind, idx in df.groupby("kind", sort=False).indices.items():
        fig.add_annotation(x=(idx.min() + idx.max()) / 2, y=1.0, yref="paper", yanchor="bottom", showarrow=False,
                           text=f"<b>{kind}</b>", font=dict(color=KIND_COLOURS.get(kind, "#333")))
    fig.update_xaxes(tickvals=x, ticktext=[short_name(n) for n in names], tickangle=-60, tickfont=dict(size=8),
                     row=3, col=1)
    subtitle = (f"proportion: {formula} = {rules.PROPORTIONS[formula]} · "
                f"red line: {red_line} = {rules.RED_LINES[red_line]}")
    fig.update_layout(title=dict(text=f"{title}<br><sup>{subtitle}</sup>"), height=740, font=_FONT,
                      margin=dict(l=10, r=10, t=100, b=110), bargap=0.15,
                      legend=dict(orientation="h", y=1.08, x=1, xanchor="right"))
    return fig


def _map_axes(m: MapData) -> tuple[str, str]:
    return ("query frame", "key frame") if m.kind == "temporal" else ("query cell", "key cell")


def map_pair(m: MapData, *, rule: str, param: float, title: str) -> go.Figure:
    """The paper's Figure 3: a stored map, "original" and "threshold" side by side."""
    thr = rules.apply_threshold(m.values, rule, param)
    cut = rules.threshold_value(m.values, rule, param)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08,
                        subplot_titles=["original", f"threshold ({rule} {param:g} → cut {cut:.3g}, "
                                                    f"{np.mean(thr > 0):.0%} kept)"])
    qa, ka = _map_axes(m)
    for c, z in enumerate((m.values, thr), start=1):
        fig.add_trace(go.Heatmap(z=z, coloraxis="coloraxis",
                                 hovertemplate=f"{qa} %{{y}}<br>{ka} %{{x}}<br>weight %{{z:.4g}}<extra></extra>"),
                      row=1, col=c)
        fig.update_yaxes(autorange="reversed", title_text=qa if c == 1 else None, scaleanchor=f"x{c}", row=1, col=c)
        fig.update_xaxes(title_text=ka, row=1, col=c)
    fig.update_layout(title=title, coloraxis=dict(colorscale="Viridis", colorbar=dict(title="weight")), font=_FONT,
                      height=460, margin=dict(l=10, r=10, t=80, b=40))
    return fig


def entropy_grid(emap: np.ndarray, *, title: str, max_cols: int = 8) -> go.Figure:
    """Pooled per-query entropy (frames, gy, gx) as small multiples, one tile per frame, laid out
    in one mosaic heat map (one trace draws much faster than one subplot per frame)."""
    if emap.size == 0:
        return _empty(title, "no per-query entropy stored")
    n, gy, gx = emap.shape
    cols = min(n, max_cols)
    rows = -(-n // cols)
    z = np.full((rows * (gy + 1) - 1, cols * (gx + 1) - 1), np.nan)
    frame = np.full(z.shape, -1)
    for f in range(n):
        r, c = divmod(f, cols)
        z[r * (gy + 1): r * (gy + 1) + gy, c * (gx + 1): c * (gx + 1) + gx] = emap[f]
        frame[r * (gy + 1): r * (gy + 1) + gy, c * (gx + 1): c * (gx + 1) + gx] = f
    yy, xx = np.indices(z.shape)
    custom = np.stack([frame, yy % (gy + 1), xx % (gx + 1)], axis=-1)
    fig = go.Figure(go.Heatmap(z=z, customdata=custom, colorscale="Magma", colorbar=dict(title="nats"),
                               zmin=float(np.nanmin(emap)), zmax=float(np.nanmax(emap)), hoverongaps=False,
                               hovertemplate="frame %{customdata[0]}<br>y %{customdata[1]} x %{customdata[2]}"
                                             "<br>entropy %{z:.3f}<extra></extra>"))
    notes = [dict(x=(f % cols) * (gx + 1) + (gx - 1) / 2, y=(f // cols) * (gy + 1) - 0.5, yanchor="bottom",
                  showarrow=False, text=f"frame {f}", font=dict(size=10)) for f in range(n)]
    fig.update_layout(annotations=notes)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x")
    fig.update_layout(title=title, height=max(220, 150 * rows + 90), font=_FONT, margin=dict(l=10, r=10, t=70, b=10),
                      plot_bgcolor="rgba(0,0,0,0)")
    return fig


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
    fig.update_layout(title=title, height=380, font=_FONT, margin=dict(l=10, r=10, t=60, b=40))
    return fig


def ranking_figure(df: pd.DataFrame, selected, *, label: str, title: str) -> go.Figure:
    """Layers sorted by value (highest first); chosen layers in red."""
    if df.empty:
        return _empty(title, "no values for this choice")
    d = df.sort_values("value", ascending=False)
    chosen = set(selected)
    fig = go.Figure(go.Bar(
        x=d["value"], y=[short_name(n) for n in d[dims.LAYER_NAME]], orientation="h", customdata=d[dims.LAYER_NAME],
        marker_color=["#d62728" if n in chosen else KIND_COLOURS.get(k, "#7f7f7f")
                      for n, k in zip(d[dims.LAYER_NAME], d["kind"])],
        hovertemplate="%{customdata}<br>" + label + " %{x:.4g}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=9))
    fig.update_layout(title=title, height=max(320, 16 * len(d) + 100), font=_FONT, xaxis_title=label,
                      margin=dict(l=10, r=10, t=60, b=40))
    return fig


def layer_diff_bars(df: pd.DataFrame, *, label: str, title: str) -> go.Figure:
    """Per-layer difference (columns layer_name, kind, value) as bars coloured by kind."""
    if df.empty:
        return _empty(title, "no layers in common")
    fig = go.Figure(go.Bar(x=[short_name(n) for n in df[dims.LAYER_NAME]], y=df["value"],
                           customdata=df[dims.LAYER_NAME], marker_color=[KIND_COLOURS.get(k, "#7f7f7f")
                                                                         for k in df["kind"]],
                           hovertemplate="%{customdata}<br>" + label + " %{y:.4g}<extra></extra>"))
    fig.update_xaxes(tickangle=-60, tickfont=dict(size=8))
    fig.update_layout(title=title, height=420, font=_FONT, yaxis_title=label, margin=dict(l=10, r=10, t=60, b=120))
    return fig


def _empty(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title, height=240, xaxis_visible=False, yaxis_visible=False)
    return fig
