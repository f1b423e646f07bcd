"""Notes: every note and tag in the trace root, for the team; add one to a run or a selection."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from .. import notes, state
from .common import guard, note_form, root, run_label


def render() -> None:
    guard(_body)


def _body() -> None:
    tr = root()
    st.header("Notes")
    runs = tr.runs()
    saved = notes.list_selections(tr.root)
    targets = list(runs["run"]) + [f"selection:{k}" for k in saved]
    all_notes = notes.list_notes(tr.root)
    tags = sorted({t for n in all_notes for t in n.tags})
    tag = st.selectbox("tag", ["(any)"] + tags, key=state.init("nt_tag", "(any)", options=["(any)"] + tags))
    state.sync("nt_tag")
    shown = [n for n in all_notes if tag == "(any)" or tag in n.tags]
    if shown:
        st.dataframe(pd.DataFrame([{"created": n.created[:19].replace("T", " "), "target": n.target,
                                    "author": n.author, "tags": ", ".join(n.tags), "note": n.text} for n in shown]),
                     hide_index=True, width="stretch", key="nt_table")
    else:
        st.info("No notes yet." if not all_notes else "No note has this tag.")
    if not targets:
        return
    st.subheader("Add a note")
    fmt = run_label(runs)
    note_form(tr.root, "nt", targets=targets,
              format_func=lambda t: t if t.startswith("selection:") else fmt(t))
