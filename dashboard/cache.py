"""The one module with Streamlit caching: the open trace root and cached query results.

The root path comes from ``--root`` after ``--`` on the streamlit command line (what
``attnlens dashboard`` passes), else $ATTNLENS_ROOT, else data/traces.
"""

from __future__ import annotations

import sys

import streamlit as st

from capture.store import trace_root

from .data import TraceRoot


# How long cached results live. A complete run's statistics never change, so what is computed
# from one run (or a fixed set of runs) is kept for an hour; the root itself (which runs exist)
# and what grows as runs complete (a sweep's study) are re-read every two minutes. "Reload" in
# the sidebar forgets everything at once.
ROOT_TTL = 120
RUN_TTL = 3600


def root_path() -> str:
    argv = sys.argv[1:]
    if "--root" in argv and argv.index("--root") + 1 < len(argv):
        return argv[argv.index("--root") + 1]
    return str(trace_root(None))


@st.cache_resource(show_spinner=False, ttl=ROOT_TTL)
def _open(path: str) -> TraceRoot:
    return TraceRoot(path)


def root() -> TraceRoot:
    return _open(root_path())


def reload() -> None:
    """Forget everything cached: new runs, new notes, rebuilt tables become visible."""
    _open.clear()
    figure.clear()
    st.cache_data.clear()


@st.cache_resource(show_spinner=False, ttl=RUN_TTL, max_entries=512)
def figure(key: tuple, _build):
    """The figure ``_build()`` makes, built once per ``key`` and shared by every session: building
    a Plotly figure is the largest part of a view's server time (0.1-0.2 s each), and a team
    looks at the same runs. ``key`` must name everything the figure depends on (data source,
    options, title). Callers must not change the returned figure."""
    return _build()


@st.cache_data(show_spinner=False, ttl=RUN_TTL, max_entries=256)
def layer_step(path: str, run_id: str, stat: str, **kw):
    return _open(path).layer_step(run_id, stat, **kw)


@st.cache_data(show_spinner=False, ttl=RUN_TTL, max_entries=256)
def layer_step_diff(path: str, run_a: str, run_b: str, stat: str, **kw):
    return _open(path).layer_step_diff(run_a, run_b, stat, **kw)


@st.cache_data(show_spinner=False, ttl=RUN_TTL, max_entries=256)
def step_match(path: str, run_a: str, run_b: str):
    return _open(path).step_match(run_a, run_b)


@st.cache_data(show_spinner=False, ttl=RUN_TTL, max_entries=256)
def per_layer(path: str, run_ids: tuple[str, ...], stat: str, **kw):
    return _open(path).per_layer(list(run_ids), stat, **kw)


@st.cache_data(show_spinner=False, ttl=RUN_TTL, max_entries=256)
def proportions(path: str, run_ids: tuple[str, ...], **kw):
    return _open(path).proportions(list(run_ids), **kw)


@st.cache_data(show_spinner=False, ttl=RUN_TTL, max_entries=64)
def layers(path: str, run_id: str):
    return _open(path).layers(run_id)


@st.cache_data(show_spinner=False, ttl=RUN_TTL, max_entries=64)
def steps(path: str, run_id: str):
    return _open(path).steps(run_id)


@st.cache_data(show_spinner=False, ttl=RUN_TTL, max_entries=64)
def map_steps(path: str, run_id: str):
    return _open(path).map_steps(run_id)


@st.cache_data(show_spinner=False, ttl=RUN_TTL, max_entries=64)
def branches(path: str, run_id: str):
    return _open(path).branches(run_id)


@st.cache_data(show_spinner=False, ttl=RUN_TTL, max_entries=64)
def heads(path: str, run_id: str):
    return _open(path).heads(run_id)


@st.cache_data(show_spinner=False, ttl=ROOT_TTL, max_entries=32)
def study(path: str, sweep: str, branch: str = "cond"):
    return _open(path).study(sweep, branch)
