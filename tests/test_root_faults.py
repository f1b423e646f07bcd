"""A damaged run stays one damaged run (issue 14): every reader lists it as unreadable with a reason
naming it and goes on with the rest; rebuild never replaces a readable table by a worse one;
symlinks do not lead out of the root; `attnlens sql` is read-only and can reach nothing else."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from capture import dims
from capture.catalog import METRICS_FILE, STATS_FILE, Catalog, write_run_metrics
from capture.cli import main
from capture.store import STORE_NAME

from .test_store import write_run


def _snapshot(root: Path) -> dict:
    """Every file under the root with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.fixture
def damaged(tmp_path):
    """Six complete runs: a (stats.parquet truncated), b (metrics.parquet emptied), c (a variable
    deleted from its store), f (its energy chunks truncated), d and e (intact); plus a run
    directory symlinked from outside."""
    root = tmp_path / "traces"
    runs = {}
    for name, seed in zip("abcdef", range(6)):
        w, _ = write_run(root, seed, prompt=f"prompt {name}")
        write_run_metrics(w.dir, pd.DataFrame({"metric": ["flicker"], "value": [0.1 * seed], "frame": [None]}))
        runs[name] = w.dir
    stats = runs["a"] / STATS_FILE
    stats.write_bytes(stats.read_bytes()[: stats.stat().st_size // 2])
    (runs["b"] / METRICS_FILE).write_bytes(b"")
    shutil.rmtree(runs["c"] / STORE_NAME / dims.ENTROPY)
    chunks = [c for c in (runs["f"] / STORE_NAME / dims.ENERGY).rglob("*") if c.is_file() and c.name != "zarr.json"]
    assert chunks  # truncated Zarr chunks (whatever the chunk key encoding names them)
    for chunk in chunks:
        chunk.write_bytes(chunk.read_bytes()[:3])
    outside = tmp_path / "outside"
    w, _ = write_run(tmp_path / "elsewhere", 9)
    shutil.copytree(w.dir, outside)
    os.symlink(outside, root / "runs" / "linked-run")
    return root, runs, outside


def test_catalog_lists_damaged_runs_and_queries_the_rest(damaged):
    root, runs, _ = damaged
    cat = Catalog(root)
    df = cat.runs().set_index("run")
    assert "linked-run" not in df.index and len(df) == 6
    a, b = runs["a"].name, runs["b"].name
    assert df.loc[a, "state"] == "unreadable" and "stats.parquet" in df.loc[a, "error"]
    assert df.loc[b, "state"] == "unreadable" and "metrics.parquet" in df.loc[b, "error"]
    assert set(cat.unreadable) == {a, b}
    per_run = cat.query("SELECT run, count(*) AS n FROM stats GROUP BY run").set_index("run")["n"]
    assert set(per_run.index) == {runs[k].name for k in "cdef"}
    assert set(cat.query("SELECT run FROM metrics")["run"]) == {runs[k].name for k in "cdef"}


def test_rebuild_rebuilds_what_it_can_and_keeps_better_tables(damaged):
    root, runs, outside = damaged
    c_table = (runs["c"] / STATS_FILE).read_bytes()
    f_table = (runs["f"] / STATS_FILE).read_bytes()
    before_outside = _snapshot(outside)
    cat = Catalog(root)
    n = cat.rebuild()
    assert n == 4  # a (its store is fine: the truncated table is rewritten), b, d, e
    assert set(cat.problems) == {runs["c"].name, runs["f"].name}
    assert "finite statistics" in cat.problems[runs["c"].name] and "cannot be read" in cat.problems[runs["f"].name]
    assert (runs["c"] / STATS_FILE).read_bytes() == c_table  # the good tables were not replaced
    assert (runs["f"] / STATS_FILE).read_bytes() == f_table
    assert cat.runs().set_index("run").loc[runs["a"].name, "state"] == "complete"
    assert _snapshot(outside) == before_outside  # nothing written through the symlink


@pytest.mark.parametrize("argv", [["runs"], ["catalog"], ["sql", "SELECT count(*) AS n FROM stats"],
                                  ["catalog", "--rebuild"]])
def test_cli_readers_report_the_damaged_runs_and_go_on(damaged, capsys, argv):
    root, runs, _ = damaged
    rc = main([*argv, "--root", str(root)])
    out, err = capsys.readouterr()
    if argv[-1] == "--rebuild":
        assert rc == 1 and f"not rebuilt: {runs['c'].name}" in err and f"not rebuilt: {runs['f'].name}" in err
    else:
        assert rc == 0
        assert f"unreadable run {runs['a'].name}: " in err and f"unreadable run {runs['b'].name}: " in err
    assert "Traceback" not in err


def test_rebuild_on_a_root_this_user_may_only_read(damaged, capsys, monkeypatch):
    """A team's shared root opened by someone who may not write it: --rebuild is refused in one
    line before anything is touched (os.access answers as that user would; root bypasses modes)."""
    root, runs, _ = damaged
    before = _snapshot(root)
    import capture.cli as cli

    monkeypatch.setattr(cli.os, "access", lambda p, mode: Path(p) != root)
    rc = main(["catalog", "--rebuild", "--root", str(root)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == (f"attnlens: error: {root} is read-only for this user: --rebuild rewrites every run's "
                               "table and the catalog's index there (list and query it without --rebuild, or "
                               "rebuild a copy)")
    assert _snapshot(root) == before


def test_a_run_whose_table_cannot_be_written_keeps_it(damaged, monkeypatch):
    """One run directory this user may not write (or a full disk): that run is named, keeps its
    table, leaves no temporary file, and the others are rebuilt."""
    import duckdb

    import capture.catalog_index as ci

    root, runs, _ = damaged
    real = ci.write_parquet
    d_table = (runs["d"] / STATS_FILE).read_bytes()

    def refuse_d(df, path):
        if Path(path).parent == runs["d"]:
            Path(path).write_bytes(b"PAR1")  # a partial file, as a write cut short leaves
            raise duckdb.IOException(f'IO Error: Cannot open file "{path}": Permission denied')
        return real(df, path)

    monkeypatch.setattr(ci, "write_parquet", refuse_d)
    cat = Catalog(root)
    assert cat.rebuild() == 3  # a, b, e
    assert cat.problems[runs["d"].name].startswith("stats.parquet cannot be written (IO Error: Cannot open file")
    assert (runs["d"] / STATS_FILE).read_bytes() == d_table
    assert not list(runs["d"].glob(".*.tmp"))


@pytest.mark.parametrize("command", [["capture", "--model", "demo", "--prompt", "p"],
                                     ["sweep", "--name", "s", "--model", "demo", "--prompt", "p"],
                                     ["apply", "enhance", "--model", "demo", "--prompt", "p", "--selection", "{sel}"],
                                     ["compare", "--model", "demo", "--clips", "1"]])
def test_writing_into_a_root_this_user_may_only_read_is_refused_before_the_model_loads(damaged, capsys, monkeypatch,
                                                                                        command, tmp_path):
    root, runs, _ = damaged
    before = _snapshot(root)
    import capture.cli as cli
    import capture.models.presets as presets
    from capture.selection import Selection

    sel = tmp_path / "sel.json"
    Selection(model="demo", layers=["mid_block.attentions.0.transformer_blocks.0.attn1"], rule="names",
              statistic="entropy_norm").save(sel)
    command = [a.replace("{sel}", str(sel)) for a in command]

    monkeypatch.setattr(cli.os, "access", lambda p, mode: Path(p) != root / "runs")

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(presets, "load_pipeline", no_load)
    rc = main([*command, "--quiet", "--root", str(root)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == (f"attnlens: error: {root / 'runs'} is read-only for this user: runs cannot be written "
                               "there (choose another --root)")
    assert _snapshot(root) == before
    (tmp := root.parent / "file-root").write_text("")
    assert main([*command, "--quiet", "--root", str(tmp / "sub")]) == 2
    assert capsys.readouterr().err.strip() == (f"attnlens: error: {tmp} is a file, not a folder: runs cannot be "
                                               "written under it (choose another --root)")


def test_permission_denied_is_one_line(tmp_path, capsys, monkeypatch):
    import capture.cli as cli

    def refused(_):  # what creating a run in a root this user may only read raises
        raise PermissionError(13, "Permission denied", str(tmp_path / "runs" / "20261205-000000-abcdef"))

    monkeypatch.setattr(cli, "_existing_root", refused)
    rc = main(["runs", "--root", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"attnlens: error: permission denied: {tmp_path / 'runs' / '20261205-000000-abcdef'}"


def test_metrics_that_cannot_be_written_name_the_file(damaged, capsys, monkeypatch):
    import duckdb

    import capture.catalog_index as ci

    root, runs, _ = damaged
    d_metrics = (runs["d"] / METRICS_FILE).read_bytes()

    def refuse(df, path):  # a run folder this user may only read
        raise duckdb.IOException(f'IO Error: Cannot open file "{path}": Permission denied')

    monkeypatch.setattr(ci, "write_parquet", refuse)
    rc = main(["metrics", runs["d"].name, "--root", str(root)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith(f"attnlens: run {runs['d'].name} not measured: run {runs['d'].name}: "
                                      "metrics.parquet cannot be written (IO Error: Cannot open file")
    assert err.endswith("Permission denied)") and "\n" not in err
    assert (runs["d"] / METRICS_FILE).read_bytes() == d_metrics


def test_metrics_command_measures_every_readable_run(damaged, capsys):
    root, runs, _ = damaged
    names = [runs[k].name for k in "bde"]
    rc = main(["metrics", *names, "--root", str(root)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert f"run {runs['b'].name} not measured" in err and "metrics.parquet" in err
    assert runs["d"].name in out and runs["e"].name in out


def test_missing_root_is_an_error(tmp_path, capsys):
    for cmd in (["runs"], ["sql", "SELECT 1"], ["catalog"]):
        assert main([*cmd, "--root", str(tmp_path / "nonexistent")]) == 2
        assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("query", [
    "COPY (SELECT * FROM runs) TO '{tmp}/leak.csv'",
    "ATTACH '{tmp}/new.duckdb' AS x",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "CREATE TABLE t AS SELECT 1",
    "SELECT 1; COPY (SELECT 1) TO '{tmp}/x.csv'",
])
def test_sql_is_read_only_and_reaches_nothing_else(damaged, tmp_path, capsys, query):
    root, _, _ = damaged
    assert main(["runs", "--root", str(root)]) == 0  # the first open writes the root's catalog index
    capsys.readouterr()
    before = _snapshot(root)
    q = query.format(tmp=tmp_path)
    assert main(["sql", q, "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnlens: error: SQL error:") and len(err.strip().splitlines()) <= 3
    assert _snapshot(root) == before
    assert not list(tmp_path.glob("leak.csv")) + list(tmp_path.glob("new.duckdb")) + list(tmp_path.glob("x.csv"))


def test_sql_still_answers_select_over_the_tables(damaged, capsys):
    root, runs, _ = damaged
    assert main(["sql", "SELECT count(DISTINCT run) AS n FROM stats", "--root", str(root), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"n":4' in out.replace(" ", "")  # c, d, e, f (a's table is damaged)
    assert np.isfinite(Catalog(root).sandboxed_query("SELECT avg(entropy) AS h FROM stats")["h"][0])
