"""Runs: filter the root's runs, see one run's attributes, video and notes."""

from __future__ import annotations

import json

import streamlit as st

from .. import notes, state, words
from ..data import RunUnavailable
from .common import guard, note_form, root, run_label, unavailable, video

STATES = ["complete", "running", "interrupted", "failed", "unreadable"]
COLUMNS = ["run", "state", "model", "prompt", "seed", "perturbation", "ieadapt", "steps", "frames", "height", "width",
           "guidance", "capture_mode", "layers_captured", "steps_captured", "sweep", "created", "seconds"]
BRIEF = ["run", "state", "model", "prompt", "seed", "perturbation", "steps"]
# pixel widths of the brief table: together they fit the page at 1400 px (the rest scrolls with "all columns")
WIDTHS = {"run": 190, "state": 85, "model": 110, "prompt": 250, "seed": 55, "perturbation": 120, "steps": 55}


def render() -> None:
    guard(_body)


def _body() -> None:
    tr = root()
    st.header("Runs")
    everything = tr.runs()
    models = sorted(m for m in everything["model"].dropna().unique())
    seeds = sorted(int(s) for s in everything["seed"].dropna().unique())
    c1, c2, c3, c4, c5 = st.columns([2, 3, 2, 2, 2])
    c1.multiselect("model", models, key=state.init("runs_model", [], options=models, multi=True))
    c2.text_input("prompt contains", key=state.init("runs_prompt", ""))
    c3.multiselect("seed", seeds, key=state.init("runs_seed", [], cast=int, options=seeds, multi=True))
    c4.text_input("perturbation / IE-Adapt (none / any / text)", key=state.init("runs_pert", ""))
    c5.multiselect("status", STATES, key=state.init("runs_status", [], options=STATES, multi=True))
    state.sync("runs_model", "runs_prompt", "runs_seed", "runs_pert", "runs_status")
    ss = st.session_state
    runs = tr.runs(model=ss.runs_model, prompt=ss.runs_prompt.strip() or None, seed=ss.runs_seed,
                   perturbation=ss.runs_pert.strip() or None, status=ss.runs_status)
    t1, t2 = st.columns([4, 1])
    t1.caption(f"{len(runs)} of {len(everything)} runs in `{tr.root}`")
    wide = t2.toggle("all columns", key=state.init("runs_all", False, cast=lambda v: str(v) == "True",
                                                        options=[True, False]))
    state.sync("runs_all")
    cols = COLUMNS if wide else BRIEF
    st.dataframe(runs[cols], hide_index=True, width="stretch", key="runs_table",
                 column_config={c: st.column_config.Column(width=w) for c, w in WIDTHS.items()})
    if runs.empty:
        st.info("No run matches these filters.")
        return
    ids = list(runs["run"])
    run_id = st.selectbox("run", ids, key=state.init("run", ids[0], options=ids), format_func=run_label(runs))
    state.sync("run")
    row = runs.set_index("run").loc[run_id]
    if row["state"] != "complete":
        msg = {"running": "is still being captured", "interrupted": "was interrupted before it completed",
               "failed": "failed", "unreadable": "cannot be read"}.get(row["state"], row["state"])
        unavailable(f"run {run_id} {msg}" + (f": {row['error']}" if isinstance(row["error"], str) else ""))
    left, right = st.columns([1, 2])
    with left:
        try:
            video(tr, run_id, "generated video")
        except RunUnavailable as e:
            unavailable(e)
    with right:
        try:
            attrs = tr.attrs(run_id)
            st.markdown(f"**Perturbation:** {words.perturbation(attrs.get('perturbation'))}  \n"
                        f"**Capture:** {words.capture(attrs.get('capture'))}")
            st.json(json.loads(json.dumps(attrs, default=str)), expanded=1)
        except RunUnavailable as e:
            unavailable(e)
    st.subheader("Notes on this run")
    for n in notes.list_notes(tr.root, run_id):
        tags = " ".join(n.tags)
        # notes are plain text: no Markdown, so no remote image, link or fake banner reaches viewers
        st.caption(f"{n.author or 'anonymous'} · {n.created[:16].replace('T', ' ')} · {tags}")
        st.text(n.text)
    note_form(tr.root, "runs_note", target=run_id)
