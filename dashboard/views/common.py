"""Pieces every view uses: the run picker, figure + download drawing, the unavailable message."""

from __future__ import annotations

import re

import pandas as pd
import streamlit as st

from .. import cache, state
from ..data import RunUnavailable, TraceRoot

PLOT_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


def root() -> TraceRoot:
    return cache.root()


def sidebar() -> None:
    """The trace root in use and a button to pick up new runs, notes and selections."""
    with st.sidebar:
        st.caption(f"trace root: `{cache.root_path()}`")
        if st.button("Reload root", key="reload_root", help="pick up new runs, notes and selections"):
            cache.reload()


def complete_runs(tr: TraceRoot) -> pd.DataFrame:
    return tr.runs(status=["complete"])


def run_label(runs: pd.DataFrame):
    info = {r.run: r for r in runs.itertuples()}

    def fmt(run_id):
        r = info.get(run_id)
        if r is None:
            return run_id
        prompt = r.prompt[:48] if isinstance(r.prompt, str) else ""
        pert = f" · {r.perturbation}" if isinstance(r.perturbation, str) and r.perturbation else ""
        return f"{run_id} · {r.model} · seed {r.seed} · {prompt}{pert}"

    return fmt


def pick_run(runs: pd.DataFrame, key: str, label: str = "run", default_index: int = 0):
    """A run selectbox whose choice lives in the URL under ``key``; None when there are no runs."""
    ids = list(runs["run"])
    if not ids:
        st.info("No complete runs in this trace root yet. Capture some with `attnlens capture` or `attnlens demo`.")
        return None
    state.init(key, ids[min(default_index, len(ids) - 1)], options=ids)
    return st.selectbox(label, ids, key=key, format_func=run_label(runs))


def unavailable(e: Exception) -> None:
    st.warning(f"⚠ {e}", icon=None)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80]


def show(fig, data: pd.DataFrame | None, name: str, key: str) -> None:
    """Draw a figure (PNG download from its toolbar's camera button) and a CSV button for its data."""
    cfg = {**PLOT_CONFIG, "toImageButtonOptions": {**PLOT_CONFIG["toImageButtonOptions"], "filename": slug(name)}}
    st.plotly_chart(fig, config=cfg, key=f"fig_{key}")
    if data is not None:
        st.download_button("Download data (CSV)", data.to_csv(index=False).encode(), file_name=f"{slug(name)}.csv",
                           mime="text/csv", key=f"csv_{key}")


def guard(fn):
    """Run a view body; a run that cannot be read becomes a message, not a traceback."""
    try:
        fn()
    except RunUnavailable as e:
        unavailable(e)
