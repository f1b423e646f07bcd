"""The dashboard's server process: load what every page needs, then run Streamlit's own CLI.

    python -m dashboard.serve run streamlit_app.py --server.port 8501 -- --root DIR

(what ``attnlens dashboard`` starts). Streamlit imports an app's modules in the first session's
script thread, so without this the first page to open waits for pandas, DuckDB, Plotly (and
Plotly's lazily loaded validators), pyarrow, zarr and every view: seconds on a small machine, and
longer when several people open the dashboard at once. Imported here, they are loaded before the
server accepts a connection; so is the trace root (its catalog, and a first query of each kind),
which the first sessions would otherwise all wait on together. Must not import the app script itself (it calls Streamlit
commands).
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


def preload() -> float:
    """Import the dashboard's modules and draw one figure of each kind the views use (Plotly loads
    a trace type's validators the first time one is built); returns the seconds it took."""
    t0 = time.perf_counter()
    import pyarrow  # noqa: F401 - what st.dataframe converts tables with
    from PIL import Image  # noqa: F401 - checks the stored GIFs
    import zarr  # noqa: F401 - the maps view's reader (0.3 s to import)

    import plotly.graph_objects as go
    import plotly.io as pio

    from dashboard.views import (  # noqa: F401
        common, compare, layer_step, maps, notes_view, perturbation, proportions, runs, selection,
    )

    fig = go.Figure([go.Heatmap(z=[[0.0, 1.0]]), go.Bar(x=["a"], y=[1.0]), go.Scatter(x=[0.0], y=[1.0]),
                     go.Histogram(x=[0.0, 1.0])])
    fig.update_layout(title="warm-up")
    pio.to_json(fig)
    return time.perf_counter() - t0


def open_root() -> float:
    """Open the trace root the server will serve (its catalog, DuckDB views and runs table) into
    the dashboard's cache, so the first sessions find it open; returns the seconds it took. A root
    that cannot be opened is left for the app to report."""
    t0 = time.perf_counter()
    from dashboard import cache

    try:
        tr = cache.root()
        runs = tr.runs(status=["complete"])
        if len(runs):
            _first_queries(tr, str(runs["run"].iloc[-1]))
    except Exception as e:  # noqa: BLE001 - the first page shows the error in its own words
        log.warning("could not open the trace root ahead of the first session: %s", e)
    return time.perf_counter() - t0


def _first_queries(tr, run_id: str) -> None:
    """One layer × step and one per-layer query on a run, and their figures: the first of each
    in a process sets up DuckDB's Parquet reader and pandas' pivots (0.1-0.3 s), which every
    session's first view would otherwise wait on together. The results are not kept."""
    from capture import dims
    from dashboard import figures

    branch = tr.branches(run_id)[0]
    grid = tr.layer_step(run_id, dims.ENTROPY_NORM, branch=branch)
    figures.layer_step_heatmap(grid, label="warm-up", title="warm-up")
    bars = tr.per_layer([run_id], dims.ENTROPY_NORM, branch=branch)
    figures.layer_diff_bars(bars, label="warm-up", title="warm-up")


def _quiet_streamlit():
    """Streamlit warns that no runtime exists yet when the views define their caches and when the
    root is opened before the server starts; that is expected here (the caches it falls back to
    are the memory caches the runtime uses too), so those warnings are not shown."""
    import streamlit  # noqa: F401 - creates its loggers (setting their levels) before they are changed here

    loggers = [logging.getLogger(n) for n in ("streamlit.runtime.caching.cache_data_api",
                                              "streamlit.runtime.scriptrunner_utils.script_run_context",
                                              "streamlit.runtime.caching.cache_resource_api")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    return lambda: [lg.setLevel(lv) for lg, lv in zip(loggers, levels)]


def main() -> int:
    restore = _quiet_streamlit()
    try:
        secs = preload()
        log.info("dashboard modules loaded in %.2f s", secs)
        secs = open_root()
        log.info("trace root opened in %.2f s", secs)
    finally:
        restore()
    from streamlit.web import cli

    return cli.main()  # reads its arguments (run APP ...) from sys.argv


if __name__ == "__main__":
    sys.exit(main())
