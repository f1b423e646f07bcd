"""The dashboard over a damaged root (issue 14): every view, on every run, draws or shows a
one-line message in place; no traceback and no server path reaches the browser; bad URL values
fall back to defaults; notes render as plain text; a symlinked video is never opened."""

from __future__ import annotations

import os
import shutil
import sys

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from capture import dims
from capture.catalog import METRICS_FILE, STATS_FILE, write_run_metrics
from capture.store import STORE_NAME

from .test_store import write_run

pytestmark = pytest.mark.slow

VIEWS = ("runs", "layer_step", "proportions", "maps", "compare", "perturbation", "selection", "notes_view")


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    base = tmp_path_factory.mktemp("dashfaults")
    root = base / "traces"
    runs = {}
    for name, seed in zip("abcdefg", range(7)):
        w, _ = write_run(root, seed, prompt=f"prompt {name}")
        write_run_metrics(w.dir, pd.DataFrame({"metric": ["flicker"], "value": [0.1], "frame": [None]}))
        runs[name] = w.dir
    stats = runs["a"] / STATS_FILE
    stats.write_bytes(stats.read_bytes()[:100])  # truncated table
    (runs["b"] / METRICS_FILE).write_bytes(b"")  # empty metrics
    shutil.rmtree(runs["c"] / STORE_NAME / dims.ENTROPY)  # a variable gone
    (runs["d"] / "video.gif").write_bytes(b"GIF89a this is not an image")  # garbage video
    chunks = [c for c in (runs["e"] / STORE_NAME / dims.MAP_SPATIAL).rglob("*") if c.is_file() and c.name != "zarr.json"]
    assert chunks  # garbled map chunks (whatever the chunk key encoding names them)
    for chunk in chunks:
        chunk.write_bytes(b"\x00garbage")
    (runs["f"] / "video.gif").unlink()
    secret = base / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    os.symlink(secret, runs["f"] / "video.gif")  # a symlink out of the root
    shutil.copytree(runs["g"], runs["g"].parent / "20990101-000000-copy00")  # two runs, one id inside
    from dashboard.notes import add_note

    add_note(root, runs["g"].name, "![x](http://example.invalid/track.png) # FAKE BANNER <script>x</script>",
             author="mallory")
    return root, runs, secret


def _app(view, **query):
    at = AppTest.from_string(f"from dashboard.views import {view}\n{view}.render()", default_timeout=120)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def _texts(at) -> str:
    parts = []
    for kind in ("markdown", "caption", "error", "warning", "info", "text", "header", "subheader", "code"):
        for e in at.get(kind):
            parts.append(str(getattr(e, "value", "") or getattr(e, "body", "")))
    return "\n".join(parts)


@pytest.fixture
def app(damaged, monkeypatch):
    root, _, _ = damaged
    monkeypatch.setenv("ATTNLENS_ROOT", str(root))
    monkeypatch.setattr(sys, "argv", ["streamlit"])
    from dashboard import cache

    cache.reload()
    return _app


@pytest.mark.parametrize("run", list("abcdefg"))
@pytest.mark.parametrize("view", VIEWS)
def test_every_view_on_every_run_draws_or_says_why(app, damaged, view, run):
    root, runs, secret = damaged
    rid = runs[run].name
    at = app(view, run=rid, ls_run=rid, mp_run=rid, cmp_a=rid, pr_runs=rid, sel_runs=rid)
    assert not at.exception, [e.value for e in at.exception]
    text = _texts(at)
    assert "Traceback" not in text and str(root.parent) not in text.replace(str(root), "")
    assert "TOP-SECRET-CONTENT" not in text
    for img in at.get("imgs"):
        assert "TOP-SECRET" not in str(img.proto)


@pytest.mark.parametrize("query", [dict(mp_param_quantile="nan", mp_rule="quantile"), dict(mp_query="-5"),
                                   dict(mp_step="notanumber"), dict(mp_param_mean_std="inf", mp_rule="mean_std")])
def test_bad_url_values_fall_back_to_defaults_in_maps(app, damaged, query):
    _, runs, _ = damaged
    at = app("maps", mp_run=runs["g"].name, **query)
    assert not at.exception and not at.get("error"), [e.value for e in at.exception]


def test_bad_url_fraction_falls_back_in_selection(app, damaged):
    _, runs, _ = damaged
    at = app("selection", sel_runs=runs["g"].name, sel_frac="5")
    assert not at.exception, [e.value for e in at.exception]


def test_notes_render_as_plain_text(app, damaged):
    _, runs, _ = damaged
    at = app("runs", run=runs["g"].name)
    assert not at.exception
    md = "\n".join(str(e.value) for e in at.get("markdown"))
    assert "example.invalid" not in md and "FAKE BANNER" not in md
    assert any("example.invalid" in str(e.value) for e in at.get("text"))  # shown, as inert text


def test_symlinked_video_is_not_served(damaged):
    from dashboard.data import TraceRoot

    root, runs, _ = damaged
    assert TraceRoot(root).video_file(runs["f"].name) is None
    assert TraceRoot(root).video_file(runs["g"].name) is not None
