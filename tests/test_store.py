"""Run store round trip through xarray, and catalog SQL against hand-computed tables."""

import numpy as np
import pytest

from capture import dims
from capture.catalog import STATS_FILE, Catalog
from capture.store import RunWriter, StoreError, open_run

LAYERS = [
    {"name": "down.attn1", "kind": "spatial", "block": "down.0", "n_query": 64, "n_key": 64, "heads": 2, "gy": 2, "gx": 2},
    {"name": "motion.attn1", "kind": "temporal", "block": "down.0", "n_query": 4, "n_key": 4, "heads": 1, "gy": 2, "gx": 2},
]


def fake_result(rng, heads, nb=2):
    r = {}
    for name in dims.SCALAR_STATS:
        v = np.full((nb, len(dims.PARTS), heads), np.nan, dtype="float32")
        v[:, 0] = rng.random((nb, heads))
        r[name] = v
    r[dims.MAP_SPATIAL] = rng.random((nb, 4, 4)).astype("float32")
    r[dims.MAP_TEMPORAL] = rng.random((nb, 4, 4)).astype("float32")
    r[dims.ENTROPY_MAP] = rng.random((nb, 4, 4)).astype("float32")
    return r


def write_run(root, seed, steps=3, complete=True, prompt="p", model="fake"):
    rng = np.random.default_rng(seed)
    w = RunWriter(root, {"model": model, "prompt": prompt, "seed": seed, "capture": {"maps": True, "mode": "exact"}})
    written = []
    for s in range(steps):
        res = [fake_result(rng, l["heads"]) for l in LAYERS]
        ptb = np.zeros((2, 2), bool)
        ptb[1, 1] = s == 1
        w.write_step(s, 1000 - 100 * s, LAYERS, ["uncond", "cond"], res, ptb, grid=2, frames=4)
        written.append(res)
    w.write_video(rng.integers(0, 255, (4, 8, 8, 3), dtype=np.uint8))
    if complete:
        w.complete()
    return w, written


def test_round_trip_through_xarray(tmp_path):
    w, written = write_run(tmp_path, 1)
    ds = open_run(w.dir)
    assert ds.attrs["status"] == dims.COMPLETE and ds.attrs["prompt"] == "p"
    assert list(ds[dims.LAYER_NAME].values) == ["down.attn1", "motion.attn1"]
    assert list(ds[dims.TIMESTEP].values) == [1000, 900, 800]
    for s in range(3):
        for li, l in enumerate(LAYERS):
            got = ds[dims.ENTROPY].values[s, li, :, :, : l["heads"]]
            np.testing.assert_array_equal(got, written[s][li][dims.ENTROPY])
            np.testing.assert_array_equal(ds[dims.MAP_SPATIAL].values[s, li], written[s][li][dims.MAP_SPATIAL])
    # head 1 of the 1-head layer is padding
    assert np.isnan(ds[dims.ENTROPY].values[:, 1, :, :, 1]).all()
    assert ds[dims.VIDEO].dtype == np.uint8 and ds[dims.VIDEO].shape == (4, 8, 8, 3)
    assert ds[dims.ENTROPY_MAP].dims == (dims.STEP, dims.LAYER, dims.BRANCH, dims.FRAME, dims.GRID_Y, dims.GRID_X)
    # chunk files sit directly in each array's folder (c.<step>.<i>...), no folder per chunk index;
    # these small maps keep all steps in one chunk, written by two batches (step 0 at once, the
    # others at completion: the second batch merged its steps into the chunk the first one wrote)
    store = w.dir / "trace.zarr"
    assert sorted(p.name for p in (store / dims.MAP_SPATIAL).iterdir()) == ["c.0.0.0.0.0", "zarr.json"]
    assert not [p for p in store.rglob("*") if p.is_dir() and p.parent != store]


def test_catalog_sql_matches_hand_computed_table(tmp_path):
    w1, r1 = write_run(tmp_path, 1, prompt="first")
    w2, r2 = write_run(tmp_path, 2, prompt="second")
    write_run(tmp_path, 3, complete=False)  # a running run: listed, but no stats
    cat = Catalog(tmp_path)
    runs = cat.runs()
    assert len(runs) == 3 and sorted(runs["status"]) == ["complete", "complete", "running"]
    got = cat.query(
        "SELECT run, layer_name, branch, avg(entropy) AS h, sum(energy) AS e, count(*) AS n FROM stats "
        "WHERE part = 'all' GROUP BY ALL ORDER BY run, layer_name, branch"
    )
    rows = []
    # run ids order by creation second, then a random suffix: sort like the query does
    for w, res in sorted(((w1, r1), (w2, r2)), key=lambda t: t[0].run_id):
        for li, l in sorted(enumerate(LAYERS), key=lambda t: t[1]["name"]):
            for b, br in sorted(enumerate(["uncond", "cond"]), key=lambda t: t[1]):
                h = np.mean([res[s][li][dims.ENTROPY][b, 0].astype("float64") for s in range(3)])
                e = np.sum([res[s][li][dims.ENERGY][b, 0].astype("float64") for s in range(3)])
                rows.append((w.run_id, l["name"], br, h, e, 3 * l["heads"]))
    assert len(got) == len(rows)
    for (_, g), exp in zip(got.iterrows(), rows):
        assert (g["run"], g["layer_name"], g["branch"]) == exp[:3]
        assert g["h"] == pytest.approx(exp[3], rel=1e-6) and g["e"] == pytest.approx(exp[4], rel=1e-6)
        assert g["n"] == exp[5]
    flags = cat.query("SELECT step, layer_name, branch FROM stats WHERE perturbed = 1 GROUP BY ALL ORDER BY ALL")
    assert flags.values.tolist() == [[1, "motion.attn1", "cond"]]
    joined = cat.query("SELECT r.prompt, count(*) AS n FROM stats s JOIN runs r USING (run) GROUP BY ALL ORDER BY 1")
    assert joined["prompt"].tolist() == ["first", "second"]


def test_catalog_rebuild_from_stores(tmp_path):
    w, _ = write_run(tmp_path, 5)
    before = Catalog(tmp_path).query("SELECT * FROM stats ORDER BY ALL")
    (w.dir / STATS_FILE).unlink()
    cat = Catalog(tmp_path)
    assert cat.query("SELECT count(*) AS n FROM stats")["n"][0] == 0
    assert cat.rebuild() == 1
    after = cat.query("SELECT * FROM stats ORDER BY ALL")
    assert before.equals(after)


def test_failed_run_keeps_its_steps_and_error(tmp_path):
    w, _ = write_run(tmp_path, 6, complete=False)
    w.fail(RuntimeError("out of memory"))
    ds = open_run(w.dir)
    assert ds.attrs["status"] == dims.FAILED and ds.attrs["error"] == "RuntimeError: out of memory"
    assert ds.sizes[dims.STEP] == 3
    with pytest.raises(StoreError, match="failed, not complete"):
        open_run(w.dir, require_complete=True)


def test_empty_root(tmp_path):
    cat = Catalog(tmp_path / "nothing")
    assert cat.runs().empty
    assert cat.query("SELECT count(*) AS n FROM stats")["n"][0] == 0


def test_run_killed_while_writing_a_step_stays_readable(tmp_path):
    import zarr

    w, written = write_run(tmp_path, 7, complete=False)
    w.flush()
    # a SIGKILL between two arrays' resizes leaves one array a step longer than the rest
    g = zarr.open_group(str(w.path), mode="r+")
    g[dims.MAP_TEMPORAL].resize((4,) + g[dims.MAP_TEMPORAL].shape[1:])
    ds = open_run(w.dir)
    assert ds.attrs["status"] == dims.RUNNING and ds.sizes[dims.STEP] == 3
    np.testing.assert_array_equal(ds[dims.ENTROPY].values[2, 0, :, :, :2], written[2][0][dims.ENTROPY])
    assert dims.TIMESTEP in ds.coords and dims.LAYER_NAME in ds.coords


def test_write_error_at_completion_leaves_no_table_and_no_complete_run(tmp_path, monkeypatch):
    # the last steps are written while the run's table is made; if they fail, neither stays
    w, _ = write_run(tmp_path, 8, steps=3, complete=False)
    w.flush()
    rng = np.random.default_rng(0)
    w.write_step(3, 700, LAYERS, ["uncond", "cond"], [fake_result(rng, l["heads"]) for l in LAYERS],
                 np.zeros((2, 2), bool), grid=2, frames=4)

    def broken(batch):
        raise OSError("disk full")

    monkeypatch.setattr(w, "_write_steps", broken)
    with pytest.raises(OSError, match="disk full"):
        w.complete()
    assert not (w.dir / STATS_FILE).exists()
    w.fail("OSError: disk full")
    ds = open_run(w.dir)
    assert ds.attrs["status"] == dims.FAILED and ds.sizes[dims.STEP] == 3


def test_a_failed_status_write_at_completion_leaves_a_failed_run(tmp_path, monkeypatch):
    # the status and the consolidated metadata are one write; if it fails, the run is failed, not complete
    from capture import zarr_direct

    w, _ = write_run(tmp_path, 10, steps=2, complete=False)

    def broken(path, attributes):
        raise OSError("disk full")

    monkeypatch.setattr(zarr_direct, "write_group_metadata", broken)
    with pytest.raises(OSError, match="disk full"):
        w.complete()
    assert w.attrs["status"] == dims.RUNNING
    w.fail("OSError: disk full")
    ds = open_run(w.dir)
    assert ds.attrs["status"] == dims.FAILED and ds.sizes[dims.STEP] == 2


def test_layers_first_seen_late_are_rewritten_at_the_end(tmp_path):
    # kinds or token counts known only after the first stored step reach the store's coordinates
    w, _ = write_run(tmp_path, 9, steps=2, complete=False)
    late = [dict(LAYERS[0]), dict(LAYERS[1], kind="cross", n_key=7)]
    w.set_layers(late)
    w.complete()
    ds = open_run(w.dir)
    assert list(ds[dims.LAYER_KIND].values) == ["spatial", "cross"]
    assert list(ds[dims.N_KEY].values) == [64, 7]
    table = Catalog(tmp_path).query("SELECT DISTINCT layer_name, kind FROM stats ORDER BY layer_name")
    assert dict(zip(table["layer_name"], table["kind"])) == {"down.attn1": "spatial", "motion.attn1": "cross"}


def test_runs_written_with_per_layer_map_shards_still_read(tmp_path):
    """Stores written before 2026-12-02 kept each map array in one shard per step, chunked per
    layer (zarr's sharding codec) instead of one chunk per step: such a run reads the same maps
    through xarray and the dashboard as one written today."""
    import warnings

    import zarr

    from dashboard.data import TraceRoot

    w, written = write_run(tmp_path, 3)
    store = w.dir / "trace.zarr"
    g = zarr.open_group(str(store), mode="r+")
    nl = len(LAYERS)
    for name in (dims.MAP_SPATIAL, dims.MAP_TEMPORAL, dims.ENTROPY_MAP):
        a = g[name]
        data, attrs, dim_names = a[...], dict(a.attrs), a.metadata.dimension_names
        del g[name]
        old = g.create_array(name, shape=data.shape, chunks=(1, 1) + data.shape[2:], shards=(1, nl) + data.shape[2:],
                             dtype=data.dtype, fill_value=np.nan, dimension_names=dim_names, attributes=attrs)
        old[...] = data
        assert old.shards == (1, nl) + data.shape[2:]
    with warnings.catch_warnings():  # zarr: consolidated metadata is not in the v3 spec (the store writes it too)
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(store))

    ds = open_run(w.dir)
    tr = TraceRoot(tmp_path)
    for s in range(3):
        for li, l in enumerate(LAYERS):
            np.testing.assert_array_equal(ds[dims.MAP_SPATIAL].values[s, li], written[s][li][dims.MAP_SPATIAL])
            for bi, branch in enumerate(("uncond", "cond")):
                m = tr.attention_map(w.run_id, s, li, branch).values
                key = dims.MAP_TEMPORAL if l["kind"] == "temporal" else dims.MAP_SPATIAL
                ref = written[s][li][key][bi]
                np.testing.assert_array_equal(m, ref[: m.shape[0], : m.shape[1]])
                np.testing.assert_array_equal(tr.entropy_map(w.run_id, s, li, branch),
                                              written[s][li][dims.ENTROPY_MAP][bi].reshape(4, 2, 2)[:, :2, :2])


def test_completion_writes_what_zarr_python_would_consolidate(tmp_path):
    """complete() writes the status and the consolidated metadata in one zarr.json; it must equal
    what zarr-python's attribute update and consolidate_metadata write for the same store (arrays
    written directly and arrays grown by later batches through zarr-python alike)."""
    import json
    import shutil
    import warnings

    import zarr

    rng = np.random.default_rng(5)
    w = RunWriter(tmp_path / "a", {"model": "fake", "seed": 1, "nan_attr": float("nan"),
                                   "capture": {"maps": True, "mode": "exact"}})
    w.flush_seconds = 0.0  # every step its own batch: arrays grown by zarr-python after the first
    for s in range(3):
        w.write_step(s, 1000 - 100 * s, LAYERS, ["uncond", "cond"], [fake_result(rng, l["heads"]) for l in LAYERS],
                     np.zeros((2, 2), bool), grid=2, frames=4)
    w.write_video(rng.integers(0, 255, (4, 8, 8, 3), dtype=np.uint8))
    w.complete(seconds=1.5)
    got = json.loads((w.path / "zarr.json").read_bytes())
    ref_dir = tmp_path / "ref.zarr"
    shutil.copytree(w.path, ref_dir)
    root = json.loads((ref_dir / "zarr.json").read_bytes())  # back to the group as it was while running
    del root["consolidated_metadata"]
    root["attributes"] = {k: v for k, v in root["attributes"].items() if k not in ("status", "finished", "seconds",
                                                                                  "steps_captured")}
    (ref_dir / "zarr.json").write_text(json.dumps(root))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = zarr.open_group(str(ref_dir), mode="r+", use_consolidated=False)
        g.attrs.update({k: got["attributes"][k] for k in ("status", "finished", "seconds", "steps_captured")})
        zarr.consolidate_metadata(str(ref_dir))
    ref = json.loads((ref_dir / "zarr.json").read_bytes())
    assert got["attributes"]["status"] == dims.COMPLETE and got["attributes"]["seconds"] == 1.5
    assert np.isnan(got["attributes"]["nan_attr"]) and np.isnan(ref["attributes"]["nan_attr"])
    got["attributes"].pop("nan_attr"), ref["attributes"].pop("nan_attr")
    assert got == ref
    assert set(got["consolidated_metadata"]["metadata"]) >= {dims.ENTROPY, dims.MAP_SPATIAL, dims.VIDEO, dims.STEP}
    ds = open_run(w.dir)
    assert ds.attrs["status"] == dims.COMPLETE and ds[dims.ENTROPY].shape[0] == 3


def test_the_completion_table_is_the_rebuilt_table_and_file(tmp_path):
    """stats_table (built from buffers, no pandas) holds what stats_long holds, row for row and
    type for type, and the Parquet files written from each read back the same through DuckDB;
    random values, rows with no value dropped, NaN stored as NULL (SQL skips it), non-ASCII labels,
    an empty run."""
    import duckdb

    from capture.catalog import _write_parquet_atomic, stats_long, stats_table

    rng = np.random.default_rng(11)
    S, L, B, P, H = 4, 3, 2, len(dims.PARTS), 5
    vals = {n: rng.standard_normal((S, L, B, P, H)).astype("float32") for n in dims.SCALAR_STATS}
    for n in (dims.ENTROPY, dims.ENERGY):
        vals[n][1, 2] = np.nan  # a layer without a value at one step: its rows are dropped
        vals[n][..., 4] = np.nan  # a head only some layers have
    vals[dims.ENTROPY][2, 0, 1, 0, 3] = np.nan  # entropy alone missing: the row stays
    args = ("20261205-run-é", [0, 2, 4, 6], [999.0, 750.5, 500.0, 1.0], ["down.attn1", "mid.motion.attn1", "ü"],
            ["spatial", "temporal", "cross"], ["down.0", "mid", "up.1"], ["uncond", "cond"], dims.PARTS, vals,
            rng.integers(0, 2, (S, L, B)))
    table, frame = stats_table(*args), stats_long(*args)
    assert table.column_names == list(frame.columns) and table.num_rows == len(frame) == S * L * B * P * 4 - B * P * 4
    back = table.to_pandas()
    for c in frame.columns:
        if frame[c].dtype.kind in "if":
            assert back[c].dtype == frame[c].dtype, c
            np.testing.assert_array_equal(back[c].to_numpy(), frame[c].to_numpy(), err_msg=c)
        else:
            assert back[c].astype(str).tolist() == frame[c].astype(str).tolist(), c
    con = duckdb.connect()
    for i, t in enumerate((table, frame)):
        _write_parquet_atomic(t, tmp_path / f"{i}.parquet")
    files = [f"'{tmp_path / f'{i}.parquet'}'" for i in range(2)]
    schemas = [con.execute(f"DESCRIBE SELECT * FROM {f}").fetchall() for f in files]
    assert schemas[0] == schemas[1]
    assert dict((r[0], r[1]) for r in schemas[0])[dims.LAYER_NAME] == "VARCHAR"
    # every row and value equal (NaN to NaN), in order
    differ = con.execute(f"SELECT count(*) FROM (SELECT *, row_number() OVER () AS i FROM {files[0]}) a "
                         f"FULL JOIN (SELECT *, row_number() OVER () AS i FROM {files[1]}) b USING (i) "
                         f"WHERE a.run IS DISTINCT FROM b.run OR a.layer_name IS DISTINCT FROM b.layer_name "
                         f"OR a.part IS DISTINCT FROM b.part OR a.step IS DISTINCT FROM b.step "
                         f"OR a.head IS DISTINCT FROM b.head OR a.entropy IS DISTINCT FROM b.entropy "
                         f"OR a.energy IS DISTINCT FROM b.energy OR a.perturbed IS DISTINCT FROM b.perturbed").fetchone()
    assert differ == (0,)
    empty = stats_table("r", [], [], [], [], [], [], dims.PARTS,
                        {n: np.zeros((0, 0, 0, 0, 0), "float32") for n in dims.SCALAR_STATS}, np.zeros((0, 0, 0)))
    assert empty.num_rows == 0 and empty.column_names == list(frame.columns)
