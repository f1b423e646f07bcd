"""Pieces every view uses: the run picker, figure + download drawing, the unavailable message."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import time

import pandas as pd
import streamlit as st

from capture import dims

from .. import cache, state
from ..data import RunUnavailable, TraceRoot

log = logging.getLogger(__name__)

PLOT_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


RENDER_LOG_ENV = "ATTNLENS_RENDER_LOG"


@contextlib.contextmanager
def render_timer(view: str):
    """Time one script run of a view on the server (from the top of the script to the last
    element sent); logged at debug level, and appended as a JSON line to $ATTNLENS_RENDER_LOG when
    set (benchmarks/bench_dashboard.py reads it). Streamlit stops a run that a newer interaction
    replaces by raising inside it; such a run is recorded as not finished."""
    t0 = time.perf_counter()
    finished = False
    try:
        yield
        finished = True
    finally:
        secs = time.perf_counter() - t0
        log.debug("view %s rendered in %.3f s%s", view, secs, "" if finished else " (stopped)")
        path = os.environ.get(RENDER_LOG_ENV)
        if path:
            with open(path, "a") as f:
                f.write(json.dumps({"view": view, "seconds": round(secs, 4), "finished": finished,
                                    "time": time.time()}) + "\n")


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
    """run id -> its label in pickers (id · model · seed · prompt · perturbation). Built from
    whole columns at once: a root of thousands of runs labels each picker in milliseconds."""
    cols = {c: runs[c].tolist() for c in ("run", "model", "seed", "prompt", "perturbation")}
    info = {}
    for run, model, seed, prompt, pert in zip(*cols.values()):
        prompt = prompt[:48] if isinstance(prompt, str) else ""
        pert = f" · {pert}" if isinstance(pert, str) and pert else ""
        info[run] = f"{run} · {model} · seed {seed} · {prompt}{pert}"

    def fmt(run_id):
        return info.get(run_id, run_id)

    return fmt


def pick_run(runs: pd.DataFrame, key: str, label: str = "run", default_index: int = 0):
    """A run selectbox whose choice lives in the URL under ``key``; None when there are no runs."""
    ids = list(runs["run"])
    if not ids:
        st.info("No complete runs in this trace root yet. Capture some with `attnlens capture` or `attnlens demo`.")
        return None
    state.init(key, ids[min(default_index, len(ids) - 1)], options=ids)
    return st.selectbox(label, ids, key=key, format_func=run_label(runs))


def pick_runs(runs: pd.DataFrame, key: str, label: str, empty: str):
    """A multiselect of complete runs whose choice lives in the URL; None (after a message) when
    there is nothing to show."""
    ids = list(runs["run"])
    if not ids:
        st.info("No complete runs in this trace root yet.")
        return None
    chosen = st.multiselect(label, ids, format_func=run_label(runs),
                            key=state.init(key, ids[:1], options=ids, multi=True))
    if not chosen:
        st.info(empty)
        return None
    return chosen


def note_form(root_dir, prefix: str, target: str | None = None, targets=None, format_func=str) -> None:
    """A form adding a note to ``target``, or to one chosen among ``targets``; widget keys start
    with ``prefix`` (``{prefix}_author``, ``_tags``, ``_text``, ``_submit``, ``_target``). The note
    is written by the button's callback: the text is cleared only once it is saved, so a note the
    root cannot take (a shared root this dashboard's user may only read) is still there to copy."""
    from .. import notes

    def save(target):
        ss = st.session_state
        if target is None:
            target = ss.get(f"{prefix}_target")
        try:
            notes.add_note(root_dir, target, ss.get(f"{prefix}_text", ""), author=ss.get(f"{prefix}_author", ""),
                           tags=notes.parse_tags(ss.get(f"{prefix}_tags", "")))
        except (ValueError, notes.NotSaved) as e:
            ss[f"{prefix}_said"] = ("error", str(e))
            return
        ss[f"{prefix}_text"] = ss[f"{prefix}_tags"] = ""  # the author stays for the next note
        ss[f"{prefix}_said"] = ("success", "note added")

    with st.form(f"{prefix}_form"):
        if target is None:
            st.selectbox("on", targets, key=f"{prefix}_target", format_func=format_func)
        a, b = st.columns([1, 2])
        a.text_input("your name", key=f"{prefix}_author")
        b.text_input("tags (comma separated)", key=f"{prefix}_tags")
        st.text_area("note", key=f"{prefix}_text", height=80)
        st.form_submit_button("Add note", key=f"{prefix}_submit", on_click=save, args=(target,))
        said = st.session_state.pop(f"{prefix}_said", None)
        if said is not None:
            getattr(st, said[0])(said[1])


def steps_paired(path: str, run_a: str, run_b: str) -> bool:
    """Say how a (layer, step) difference of run_a − run_b pairs the runs' steps (see
    TraceRoot.step_match) where that is not simply step by step; False when no step pairs up."""
    m = cache.step_match(path, run_a, run_b)
    counts = f"run {run_a}: {m['steps_a']} captured steps, run {run_b}: {m['steps_b']}"
    if m["common"] == 0:
        unavailable(f"the two runs share no denoising {'timestep' if m['by'] == dims.TIMESTEP else 'step'} "
                    f"({counts}): a step-by-step difference would compare different noise levels")
        return False
    if m["common"] < max(m["steps_a"], m["steps_b"]):
        how = "timestep" if m["by"] == dims.TIMESTEP else "captured step index (a run has no timesteps recorded)"
        n = m["common"]
        st.caption(f"Steps paired by {how}: the {n} step{'s' if n != 1 else ''} both runs have ({counts}); "
                   f"the others are left out.")
    return True


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


def video(tr: TraceRoot, run_id: str, caption: str, width: int = 256) -> None:
    """A run's stored video (GIF as an image, MP4 as a player), or a one-line note when it has none
    or it cannot be shown. The file's bytes are read here (a regular file of the run, no symlink)."""
    try:
        v = tr.video_file(run_id)
    except (RunUnavailable, OSError) as e:
        st.caption(f"{caption}: video unavailable ({one_line(e)})")
        return
    if v is None:
        st.caption(f"{caption}: no stored video")
        return
    try:
        data = v.read_bytes()
        if v.suffix == ".gif":
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                im.verify()  # a damaged file is a message here, not an error in the browser
            st.image(data, caption=caption, width=width)
        else:
            st.video(data, format="video/mp4")
            st.caption(caption)
    except Exception as e:  # noqa: BLE001 - any undecodable file is one line for the viewer
        log.warning("video of run %s cannot be shown: %s", run_id, e)
        st.caption(f"{caption}: the stored video cannot be shown ({type(e).__name__})")


def one_line(e: BaseException) -> str:
    """An error as one line without server paths."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return re.sub(r"(/[^\s/'\"]+)+/", "…/", text)[:300]


def guard(fn):
    """Run a view body; whatever fails becomes a one-line message in place (no traceback, no server
    path reaches the browser); the full error goes to the server log."""
    try:
        fn()
    except RunUnavailable as e:
        unavailable(e)
    except Exception as e:  # noqa: BLE001
        if type(e).__name__ in ("RerunException", "StopException"):  # Streamlit's own control flow
            raise
        log.exception("view failed")
        st.error(f"This view could not be drawn: {one_line(e)}")
