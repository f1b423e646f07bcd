"""The catalog's incremental index (<root>/catalog/): whatever it caches, the catalog's tables are
those a catalog read straight from the run directories gives — after runs are added, removed,
rebuilt or damaged, and on a root where the index cannot be written."""

from __future__ import annotations

import contextlib
import os
import shutil

import duckdb

import numpy as np
import pandas as pd
import pytest

from capture import catalog_index, dims
from capture.catalog import STATS_FILE, Catalog
from capture.synthetic import animatediff_like_layers, write_run

LAYERS = animatediff_like_layers(n_down=1, cross=False, heads=2, frames=4)


def _runs(root, n, start=0):
    return [write_run(root, np.random.default_rng(start + i), layers=LAYERS, steps=3, frames=4, maps=False,
                      run_id=f"r-{start + i:03d}", attrs={"seed": start + i}) for i in range(n)]


def _tables(cat: Catalog):
    stats = cat.query("SELECT * FROM stats ORDER BY run, step, layer, branch, part, head").reset_index(drop=True)
    runs = cat.query("SELECT * FROM runs ORDER BY run").reset_index(drop=True)
    return runs, stats


def _direct(root, monkeypatch):
    """The catalog with the index switched off (every run read from its own files)."""
    with monkeypatch.context() as m:
        m.setattr(catalog_index.RootIndex, "__init__", _no_index_init)
        return _tables(Catalog(root))


def _no_index_init(self, root, run_columns, types=None, con=None):
    self.dir, self.columns, self.rows, self.writable = root / "nowhere", run_columns, {}, False
    self.types = types or {}
    self.meta = {"segments": []}


def _same(a, b):
    pd.testing.assert_frame_equal(a[0], b[0])
    pd.testing.assert_frame_equal(a[1], b[1])


def test_index_gives_the_tables_of_the_run_directories(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog_index, "SEGMENT_MIN", 3)
    root = tmp_path / "root"
    _runs(root, 4)
    first = _tables(Catalog(root))  # builds the index: one segment of 4 runs
    meta = (root / "catalog" / "index.json").read_text()
    assert '"r-000"' in meta and len(list((root / "catalog").glob("stats-*.parquet"))) == 1
    _same(first, _direct(root, monkeypatch))
    _same(_tables(Catalog(root)), first)  # warm open: the same

    _runs(root, 2, start=4)  # new runs: read from their own files until there are SEGMENT_MIN
    _same(_tables(Catalog(root)), _direct(root, monkeypatch))
    assert len(list((root / "catalog").glob("stats-*.parquet"))) == 1

    # a run's table rewritten (as a rebuild does): left out of its segment, read from its file
    d = root / "runs" / "r-001"
    df = pd.read_parquet(d / STATS_FILE)
    df[dims.ENTROPY] = df[dims.ENTROPY] + 1.0
    df.to_parquet(d / STATS_FILE)
    os.utime(d / STATS_FILE, ns=(1, 1))  # a different signature even within one clock tick
    got = _tables(Catalog(root))
    _same(got, _direct(root, monkeypatch))
    np.testing.assert_allclose(got[1].loc[got[1]["run"] == "r-001", dims.ENTROPY].to_numpy(),
                               df.sort_values(["step", "layer", "branch", "part", "head"])[dims.ENTROPY].to_numpy(),
                               rtol=1e-6)

    shutil.rmtree(root / "runs" / "r-002")  # a run removed: gone from every table
    got = _tables(Catalog(root))
    assert "r-002" not in set(got[0]["run"]) and "r-002" not in set(got[1]["run"])
    _same(got, _direct(root, monkeypatch))

    (root / "runs" / "r-003" / STATS_FILE).write_bytes(b"PAR1 garbage")  # damaged: unreadable, others fine
    cat = Catalog(root)
    assert cat.runs().set_index("run").loc["r-003", "state"] == "unreadable"
    _same(_tables(cat), _direct(root, monkeypatch))

    cat.rebuild()  # from the stores: the index is built again from scratch
    _same(_tables(cat), _direct(root, monkeypatch))


def test_dead_and_orphan_segments_are_unlisted_then_deleted(tmp_path, monkeypatch):
    """A segment none of whose runs is still as it was (all rebuilt or removed), and a segment file
    index.json does not list (a process that lost a race), are unlisted at once and deleted once
    they have been so for RETIRE_SECONDS; so are temporary files of killed processes. The tables
    stay those of the run directories throughout."""
    monkeypatch.setattr(catalog_index, "SEGMENT_MIN", 3)
    root = tmp_path / "root"
    _runs(root, 3)
    _tables(Catalog(root))
    cat_dir = root / "catalog"
    (first,) = [p.name for p in cat_dir.glob("stats-*.parquet")]
    orphan = cat_dir / "stats-0badf00d.parquet"
    shutil.copy(cat_dir / first, orphan)
    tmp = cat_dir / ".runs.parquet.999.abc.tmp"
    tmp.write_bytes(b"half written")
    for run in ("r-000", "r-001", "r-002"):  # every run of the segment rebuilt
        os.utime(root / "runs" / run / STATS_FILE, ns=(7, 7))
    _same(_tables(Catalog(root)), _direct(root, monkeypatch))
    meta = catalog_index.json.loads((cat_dir / "index.json").read_text())
    assert first not in {seg["file"] for seg in meta["segments"]}
    assert set(meta["retired"]) == {first, orphan.name}
    assert (cat_dir / first).exists() and orphan.exists() and tmp.exists()  # not yet: within the grace period

    old = os.stat(tmp).st_mtime - 2 * catalog_index.RETIRE_SECONDS
    os.utime(tmp, (old, old))
    monkeypatch.setattr(catalog_index.time, "time", lambda: meta["retired"][first] + catalog_index.RETIRE_SECONDS + 1)
    _same(_tables(Catalog(root)), _direct(root, monkeypatch))
    assert not (cat_dir / first).exists() and not orphan.exists() and not tmp.exists()
    meta = catalog_index.json.loads((cat_dir / "index.json").read_text())
    assert meta["retired"] == {} and len(meta["segments"]) == 1  # the rebuilt runs' new segment
    assert (cat_dir / meta["segments"][0]["file"]).exists()


def test_running_run_state_is_read_every_time(tmp_path):
    root = tmp_path / "root"
    _runs(root, 1)
    rid = write_run(root, np.random.default_rng(9), layers=LAYERS, steps=2, frames=4, maps=False, status="running")
    assert Catalog(root).runs().set_index("run").loc[rid, "status"] == dims.RUNNING
    before = os.stat(root / "catalog" / catalog_index.RUNS_FILE).st_mtime_ns
    Catalog(root)
    assert os.stat(root / "catalog" / catalog_index.RUNS_FILE).st_mtime_ns == before  # nothing changed
    from capture.store import RunWriter  # noqa: F401  (the writer marks runs complete through attrs)
    import json

    meta = root / "runs" / rid / "trace.zarr" / "zarr.json"
    g = json.loads(meta.read_text())
    g["attributes"]["status"] = dims.FAILED
    meta.write_text(json.dumps(g))
    assert Catalog(root).runs().set_index("run").loc[rid, "status"] == dims.FAILED


@pytest.mark.parametrize("blocker", ["file", "unparsable"])
def test_root_whose_index_cannot_be_used(tmp_path, monkeypatch, blocker):
    root = tmp_path / "root"
    _runs(root, 3)
    if blocker == "file":  # the index folder cannot be created: the root is read directly
        (root / "catalog").write_text("not a folder")
    else:  # a damaged index is ignored and written again
        (root / "catalog").mkdir()
        (root / "catalog" / "index.json").write_text("{not json")
    _same(_tables(Catalog(root)), _direct(root, monkeypatch))
    if blocker == "file":
        assert (root / "catalog").read_text() == "not a folder"


def test_a_root_this_user_may_only_read(tmp_path, monkeypatch):
    """A team's shared root: its owner's index is there, and this user's DuckDB cannot write the
    updated one (COPY fails with DuckDB's IOException, not an OSError). The catalog reads the
    runs directly and leaves the root as it was."""
    monkeypatch.setattr(catalog_index, "SEGMENT_MIN", 2)
    root = tmp_path / "root"
    _runs(root, 3)
    Catalog(root)  # the owner's open: index and segment written
    _runs(root, 3, start=3)  # runs the index does not hold yet: opening it now would write
    before = {p.name: p.read_bytes() for p in (root / "catalog").iterdir()}
    real = catalog_index.RootIndex._cursor

    class ReadOnly:
        def __init__(self, cur):
            self.cur = cur

        def execute(self, sql, *a):
            if sql.lstrip().upper().startswith("COPY"):
                raise duckdb.IOException('IO Error: Cannot open file "x.tmp": Permission denied')
            return self.cur.execute(sql, *a)

    @contextlib.contextmanager
    def read_only(self):
        with real(self) as cur:
            yield ReadOnly(cur)

    monkeypatch.setattr(catalog_index.RootIndex, "_cursor", read_only)
    got = _tables(Catalog(root))
    assert sorted(got[0]["run"]) == [f"r-{i:03d}" for i in range(6)]
    _same(got, _direct(root, monkeypatch))
    assert {p.name: p.read_bytes() for p in (root / "catalog").iterdir()} == before  # nothing written, no .tmp


@pytest.mark.parametrize("segment_min", [2, 100])
def test_a_root_opened_from_elsewhere_reads_its_runs_where_they_are(tmp_path, monkeypatch, segment_min):
    """A root first opened by a relative path (``attnlens demo`` writes data/traces) and later by
    another spelling from another directory (``attnlens dashboard --root /abs/...``): the cached
    rows must not send DuckDB to the first spelling, relative to the wrong directory."""
    monkeypatch.setattr(catalog_index, "SEGMENT_MIN", segment_min)
    (tmp_path / "proj").mkdir()
    monkeypatch.chdir(tmp_path / "proj")
    _runs("data/traces", 3)
    first = _tables(Catalog("data/traces"))
    assert first[0]["path"].str.startswith("data/traces").all()
    monkeypatch.chdir(tmp_path)
    cat = Catalog(tmp_path / "proj" / "data" / "traces")
    runs, stats = _tables(cat)
    assert cat.unreadable == {}
    assert [os.path.realpath(p) for p in runs["path"]] == [str((tmp_path / "proj/data/traces/runs" / r).resolve())
                                                          for r in runs["run"]]
    pd.testing.assert_frame_equal(stats, first[1])
