"""The cross-run catalog: DuckDB tables derived from the run stores of one trace root.

Each complete run carries ``stats.parquet`` (long-form scalar statistics), written atomically by
the process that owns the run; the catalog is an in-memory DuckDB database over those files and
the runs' attributes, so it never has a file that two captures could both write, and it can always
be rebuilt from the stores (``rebuild``). Tables:

- ``runs``: one row per run directory (any status); a sweep's runs also say what the sweep planned
  (``sweep_layer_set``, ``sweep_layers`` comma-joined, ``sweep_perturbation`` such as I, U or T=0.5,
  ``sweep_window``; all NULL for its baselines).
- ``stats``: one row per (run, step, layer, branch, part, head) of complete runs.
- ``metrics``: long-form video metrics (run, metric, value, frame, baseline) from each run's
  ``metrics.parquet``; ``frame`` is NULL for per-video values, ``baseline`` the paired run if any.

Must not import torch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path

from typing import TYPE_CHECKING

import duckdb

from . import dims
from .root import STORE_NAME, StoreError, list_run_dirs, read_attrs, trace_root
from .table import Rows, to_json as _rows_json

if TYPE_CHECKING:  # numpy, pandas and xarray load on first use: `attnlens runs` and `sql` need none
    import pandas as pd

log = logging.getLogger(__name__)

STATS_FILE = "stats.parquet"
METRICS_FILE = "metrics.parquet"
METRIC_COLUMNS = ["run", "metric", "value", "frame", "baseline"]

RUN_COLUMNS = [
    "run", "status", "state", "model", "family", "prompt", "negative_prompt", "seed", "steps", "frames", "height",
    "width", "guidance", "perturbation", "capture_mode", "layers_captured", "steps_captured", "created", "finished",
    "seconds", "error", "sweep", "sweep_layer_set", "sweep_layers", "sweep_perturbation", "sweep_window",
    "ieadapt", "ieadapt_pair", "path",
]
STATS_COLUMNS = [
    "run", dims.STEP, dims.TIMESTEP, dims.LAYER, dims.LAYER_NAME, "kind", "block", dims.BRANCH, dims.PART, dims.HEAD,
    *dims.SCALAR_STATS, dims.PERTURBED,
]
# SQL types of the tables (a column missing here is VARCHAR); stats and metrics as their files have them
RUN_TYPES = {**{c: "BIGINT" for c in ("seed", "steps", "frames", "height", "width", "layers_captured",
                                      "steps_captured")}, "guidance": "DOUBLE", "seconds": "DOUBLE"}
STATS_TYPES = {c: "VARCHAR" for c in STATS_COLUMNS} | {
    dims.STEP: "INTEGER", dims.TIMESTEP: "DOUBLE", dims.LAYER: "INTEGER", dims.HEAD: "INTEGER",
    **{n: "FLOAT" for n in dims.SCALAR_STATS}, dims.PERTURBED: "TINYINT"}
METRIC_TYPES = {"run": "VARCHAR", "metric": "VARCHAR", "value": "DOUBLE", "frame": "BIGINT", "baseline": "VARCHAR"}


def stats_frame(ds, run_id: str) -> pd.DataFrame:
    """Long-form scalar statistics of one run's Dataset (rows with no value dropped)."""
    import numpy as np
    import pandas as pd

    if dims.ENTROPY not in ds:
        return pd.DataFrame(columns=STATS_COLUMNS)
    coord = lambda n: np.asarray(ds[n].values)  # noqa: E731
    return stats_long(run_id, coord(dims.STEP), coord(dims.TIMESTEP), coord(dims.LAYER_NAME), coord(dims.LAYER_KIND),
                      coord(dims.LAYER_BLOCK), coord(dims.BRANCH), coord(dims.PART),
                      {n: np.asarray(ds[n].values) for n in dims.SCALAR_STATS}, np.asarray(ds[dims.PERTURBED].values))


def _stats_columns(run_id: str, steps, timesteps, names, kinds, blocks, branches, parts, values: dict,
                   perturbed) -> dict | None:
    """The columns of a run's long-form table (see stats_long) in STATS_COLUMNS order: numpy
    arrays, and for the text columns (labels, codes) pairs (each row's string is labels[code]),
    so each front end builds them its own way without a Python string per row. A run with no step
    gives empty columns of the same types."""
    import numpy as np

    shape = values[dims.ENTROPY].shape
    i_s, i_l, i_b, i_p, i_h = np.indices(shape).reshape(5, -1)
    ent, en = values[dims.ENTROPY].reshape(-1), values[dims.ENERGY].reshape(-1)
    keep = ~(np.isnan(ent) & np.isnan(en))
    i_s, i_l, i_b, i_p, i_h = (a[keep] for a in (i_s, i_l, i_b, i_p, i_h))

    def text(labels, codes):
        return np.asarray(labels, dtype=object).astype(str), codes

    cols = {
        "run": text([run_id], np.zeros_like(i_s)),
        dims.STEP: np.asarray(steps, dtype="int32")[i_s],
        dims.TIMESTEP: np.asarray(timesteps, dtype="float64")[i_s],
        dims.LAYER: i_l.astype("int32"),
        dims.LAYER_NAME: text(names, i_l),
        "kind": text(kinds, i_l),
        "block": text(blocks, i_l),
        dims.BRANCH: text(branches, i_b),
        dims.PART: text(parts, i_p),
        dims.HEAD: i_h.astype("int32"),
        **{n: np.asarray(values[n], dtype="float32").reshape(-1)[keep] for n in dims.SCALAR_STATS},
        dims.PERTURBED: np.nan_to_num(np.asarray(perturbed, dtype="float32")[i_s, i_l, i_b]).astype("int8"),
    }
    return {c: cols[c] for c in STATS_COLUMNS}


def stats_long(run_id: str, steps, timesteps, names, kinds, blocks, branches, parts, values: dict,
               perturbed) -> pd.DataFrame:
    """The long form of a run's scalar arrays: one row per (step, layer, branch, part, head), in
    that (C) order, rows where both entropy and energy are NaN dropped. values[name]: (S, L, B, P, H)
    arrays of dims.SCALAR_STATS; perturbed: (S, L, B). Used for stores read back (rebuild), so a
    rebuilt table equals the one the writer made at completion (stats_table: the same columns)."""
    import pandas as pd

    if not values[dims.ENTROPY].shape[0]:
        return pd.DataFrame(columns=STATS_COLUMNS)
    cols = _stats_columns(run_id, steps, timesteps, names, kinds, blocks, branches, parts, values, perturbed)
    return pd.DataFrame({c: (pd.array(v[0], dtype="str").take(v[1]) if isinstance(v, tuple) else v)
                         for c, v in cols.items()})


def stats_table(run_id: str, steps, timesteps, names, kinds, blocks, branches, parts, values: dict, perturbed):
    """stats_long as a pyarrow Table: what a writer hands to write_run_table at completion. Its
    columns are built from their buffers: pyarrow's converters import pandas (160 ms), which a
    capture process would otherwise pay only for this table; pyarrow alone loads in 20 ms."""
    import pyarrow as pa

    cols = _stats_columns(run_id, steps, timesteps, names, kinds, blocks, branches, parts, values, perturbed)
    return pa.Table.from_arrays([_arrow_array(v) for v in cols.values()], names=list(cols))


def _arrow_array(v):
    """A pyarrow array of a numpy array of numbers, or of (labels, codes): strings labels[codes]."""
    import numpy as np
    import pyarrow as pa

    if not isinstance(v, tuple):
        v = np.ascontiguousarray(v)
        valid = None
        if v.dtype.kind == "f":  # NaN is stored as NULL, as DuckDB stores a pandas frame's NaN (SQL skips it)
            ok = ~np.isnan(v)
            if not ok.all():
                valid = pa.py_buffer(np.packbits(ok, bitorder="little"))
        return pa.Array.from_buffers(pa.from_numpy_dtype(v.dtype), len(v), [valid, pa.py_buffer(v)])
    labels, codes = v
    enc = [str(x).encode() for x in labels]
    lens = np.array([len(b) for b in enc], dtype="int64")
    wide = len(codes) * int(lens.max(initial=0)) >= 2**31  # 32-bit offsets hold up to 2 GiB of text (a bound)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype("int64" if wide else "int32")
    words = pa.Array.from_buffers(pa.large_string() if wide else pa.string(), len(enc),
                                  [None, pa.py_buffer(offsets), pa.py_buffer(np.frombuffer(b"".join(enc), "uint8"))])
    idx = np.ascontiguousarray(codes, dtype="int64")
    return words.take(pa.Array.from_buffers(pa.int64(), len(idx), [None, pa.py_buffer(idx)]))


def _write_parquet_atomic(df: pd.DataFrame, path: Path) -> None:
    from .catalog_index import write_parquet

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write_parquet(df, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def _sql_str(p) -> str:
    return str(p).replace("'", "''")


def write_run_table(run_dir: Path, frame=None) -> Path:
    """(Re)write <run>/stats.parquet: the given long-form table (a pandas DataFrame or a pyarrow
    Table, see stats_table), else the one read from the run's store."""
    run_dir = Path(run_dir)
    if frame is not None:
        df = frame
    else:
        from .store import open_run

        ds = open_run(run_dir)
        df = stats_frame(ds, ds.attrs.get("run_id", run_dir.name))
    out = run_dir / STATS_FILE
    _write_parquet_atomic(df, out)
    return out


def parquet_problem(path: Path) -> str | None:
    """Why a Parquet file cannot be read (None if its frame looks whole): both magic numbers and a
    footer that fits. Cheap (a few bytes read), so a root of thousands of runs opens fast; a run
    whose file fails it is listed as unreadable instead of breaking every query over the root."""
    try:
        size = path.stat().st_size
        if size < 12:
            return f"{path.name} is truncated ({size} bytes)"
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(size - 8)
            tail = f.read(8)
    except OSError as e:
        return f"{path.name} cannot be read: {e.strerror or e}"
    footer = int.from_bytes(tail[:4], "little")
    if head != b"PAR1" or tail[4:] != b"PAR1" or footer + 12 > size:
        return f"{path.name} is damaged (not a whole Parquet file)"
    return None


class RebuildError(Exception):
    """A run's statistics table could not be rebuilt from its store (the table is kept)."""


def _finite_count(df: pd.DataFrame) -> int:
    """Finite values over every scalar statistic of a table (what a rebuild must not lose)."""
    import numpy as np
    import pandas as pd

    if not len(df):
        return 0
    return int(sum(np.isfinite(pd.to_numeric(df[c], errors="coerce")).sum() for c in dims.SCALAR_STATS if c in df))


def rebuild_run_table(run_dir: Path) -> bool:
    """Rewrite <run>/stats.parquet from the store unless that would lose statistics: a store that
    cannot be read or yields fewer finite entropies than the readable table raises RebuildError
    and leaves the table alone. Returns True when the table was written."""
    from .store import open_run

    run_dir = Path(run_dir)
    try:
        ds = open_run(run_dir)
        for v in (*dims.SCALAR_STATS, dims.PERTURBED):
            if v not in ds:
                raise RebuildError(f"the store has no {v!r} variable")
        df = stats_frame(ds, ds.attrs.get("run_id", run_dir.name))
    except RebuildError:
        raise
    except StoreError as e:
        raise RebuildError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - a damaged chunk surfaces as any backend error
        raise RebuildError(f"the store cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    out = run_dir / STATS_FILE
    if out.is_symlink():
        raise RebuildError(f"{STATS_FILE} is a symlink; not written through")
    if out.exists() and parquet_problem(out) is None:
        try:
            old = duckdb.connect().execute(f"SELECT * FROM read_parquet('{_sql_str(out)}')").df()
        except duckdb.Error:
            old = None
        if old is not None and _finite_count(df) < _finite_count(old):
            raise RebuildError(f"the store yields {_finite_count(df)} finite statistics, its table has "
                               f"{_finite_count(old)}: the table is kept")
    try:
        _write_parquet_atomic(df, out)
    except (OSError, duckdb.IOException) as e:  # a root this user may only read, a full disk
        raise RebuildError(f"{STATS_FILE} cannot be written ({str(e).splitlines()[0]})") from None
    return True


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def run_row(run_dir: Path) -> dict:
    """One `runs` row from a run directory; unreadable stores give status 'unreadable'."""
    row = dict.fromkeys(RUN_COLUMNS)
    row.update(run=run_dir.name, path=str(run_dir))
    try:
        a = read_attrs(run_dir / STORE_NAME)
    except StoreError as e:
        row.update(status="unreadable", state="unreadable", error=str(e))
        return row
    status = a.get("status", "unknown")
    state = status
    if status == dims.RUNNING and (a.get("pid") is None or (a.get("host") == socket.gethostname()
                                                           and not _pid_alive(a.get("pid")))):
        state = "interrupted"  # the writing process is gone (or never recorded itself): it will never complete
    ptb = a.get("perturbation") or []
    row.update(
        run=run_dir.name, status=status, state=state, model=a.get("model"), family=a.get("family"),
        prompt=a.get("prompt"), negative_prompt=a.get("negative_prompt"), seed=a.get("seed"),
        steps=a.get("num_inference_steps"), frames=a.get("num_frames"), height=a.get("height"), width=a.get("width"),
        guidance=a.get("guidance_scale"), perturbation=" ".join(p.get("spec", "") for p in ptb),
        capture_mode=(a.get("capture") or {}).get("mode"), layers_captured=len(a.get("layers_selected") or []),
        steps_captured=a.get("steps_captured"), created=a.get("created"), finished=a.get("finished"),
        seconds=a.get("seconds"), error=a.get("error"), sweep=a.get("sweep"),
    )
    task = a.get("sweep_task") or {}  # what a sweep planned for this run (capture.sweep.Task)
    row.update(sweep_layer_set=task.get("layer_set"), sweep_layers=",".join(task.get("layers") or ()) or None,
               sweep_perturbation=task.get("perturbation"), sweep_window=task.get("window"))
    row.update(ieadapt=ieadapt_label(a.get("ieadapt")), ieadapt_pair=(a.get("ieadapt") or {}).get("source_run")
               or (a.get("ieadapt") or {}).get("target_run"))
    return row


def ieadapt_label(rec: dict | None) -> str | None:
    """A short description of an IE-Adapt run's method (None for other runs)."""
    if not rec:
        return None
    if rec.get("method") == "edit":
        return f"edit {rec.get('role', '')} inject={rec.get('inject', 0):g}".replace("  ", " ")
    mode = rec.get("mode")
    if mode == "guidance":
        return f"guidance s={rec.get('scale', 0):g} {rec.get('perturb', '')} {rec.get('schedule', 'constant')}"
    if mode == "temperature":
        return f"temperature x{rec.get('factor', 1):g}"
    return "cfg"


def _same_row(new: dict, cached: dict | None) -> bool:
    """Whether a freshly read run row equals its cached one (NaN and None count as equal)."""
    if cached is None:
        return False
    for k, v in new.items():
        c = cached.get(k)
        if (v is None or v != v) and (c is None or c != c):  # None / NaN
            continue
        if str(v) != str(c):
            return False
    return True


class Catalog:
    """DuckDB over one trace root. ``query(sql)`` returns a DataFrame; see the module docstring."""

    def __init__(self, root=None):
        self.root = trace_root(root)
        self.con = duckdb.connect()
        self.refresh()

    def refresh(self) -> None:
        """Re-read the root: every run directory's row and tables, through the root's index
        (capture.catalog_index), so only runs whose files changed since the last open are read."""
        from . import catalog_index

        dirs = list_run_dirs(self.root)
        index = catalog_index.RootIndex(self.root, RUN_COLUMNS, RUN_TYPES, con=self.con)
        rows, dirty = [], False
        for d in dirs:
            files = {"attrs": d / STORE_NAME / "zarr.json", "stats": d / STATS_FILE, "metrics": d / METRICS_FILE}
            sigs = {k: catalog_index.signature(f) for k, f in files.items()}
            row = index.cached_row(d.name, sigs)
            if row is not None and row.get("path") != str(d):
                # the root under another spelling or from another directory (a relative root
                # cached from the project's directory): the run is where it was listed just now
                row = dict(row, path=str(d))
                dirty = True
            if row is None:
                row = run_row(d)
                row.update({f"_sig_{k}": v for k, v in sigs.items()})
                for k in ("stats", "metrics"):
                    why = None
                    if sigs[k] == "link":
                        why = "is a symlink"
                    elif sigs[k] and row["status"] == dims.COMPLETE:
                        why = parquet_problem(files[k])
                    row[f"_problem_{k}"] = why
                # a running run's row is read every time; the index is rewritten only on a change
                dirty = dirty or not _same_row(row, index.rows.get(d.name))
            rows.append(row)
        if dirty or len(rows) != len(index.rows):
            index.save_rows(rows)
        tables, mfiles, damaged = {}, [], {}
        for row in rows:
            if row["status"] != dims.COMPLETE:
                continue
            run, d = row["run"], Path(row["path"])
            for name, key in ((STATS_FILE, "stats"), (METRICS_FILE, "metrics")):
                if not row[f"_sig_{key}"]:
                    continue
                why = row.get(f"_problem_{key}")
                if isinstance(why, str) and why:
                    damaged.setdefault(run, f"{name} {why}" if why == "is a symlink" else why)
                elif key == "stats":
                    tables[run] = (str(d / name), row["_sig_stats"])
                else:
                    mfiles.append(str(d / name))
        if damaged:  # listed as unreadable, with the reason; every other run stays queryable
            tables = {r: t for r, t in tables.items() if r not in damaged}
            mfiles = [f for f in mfiles if Path(f).parent.name not in damaged]
            rows = [dict(r, state="unreadable", error=damaged[r["run"]]) if r["run"] in damaged else r for r in rows]
            for run, why in damaged.items():
                log.warning("run %s is unreadable: %s", run, why)
        self.unreadable = {r["run"]: r["error"] for r in rows
                           if r["run"] in damaged or r["status"] == "unreadable"}
        self._runs = catalog_index.typed_columns(rows, RUN_COLUMNS, RUN_TYPES)
        _make_runs(self.con, self._runs)
        segments, loose = index.stats_sources(tables)
        self._files = {"stats": loose + [p for p, _ in segments], "metrics": mfiles}
        self._sources = {"stats": (segments, loose), "metrics": ([], mfiles)}
        self._view("stats", *self._sources["stats"], STATS_TYPES)
        self._view("metrics", *self._sources["metrics"], METRIC_TYPES)

    def sandboxed_query(self, sql: str) -> pd.DataFrame:
        """A user's SQL (``attnlens sql``), read-only, as a DataFrame: see ``sandboxed``."""
        return self._sandboxed(sql, lambda result: result.df())

    def sandboxed(self, sql: str) -> Rows:
        """A user's SQL (``attnlens sql``), read-only: SELECT (or EXPLAIN) statements only, on a
        connection of its own that holds the catalog's tables and can open nothing else (no file
        outside the runs' tables, no ATTACH, COPY, INSTALL or LOAD, settings locked)."""
        return self._sandboxed(sql, Rows.of)

    def _sandboxed(self, sql: str, fetch):
        con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
        try:
            statements = con.extract_statements(sql)
            if not statements:
                raise duckdb.InvalidInputException("empty query")
            allowed = (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN)
            for st in statements:
                if st.type not in allowed:
                    raise duckdb.PermissionException(
                        f"only SELECT queries over the catalog's tables (runs, stats, metrics) are allowed, "
                        f"not {st.type.name}")
            _make_runs(con, self._runs)
            for name, types in (("stats", STATS_TYPES), ("metrics", METRIC_TYPES)):
                _make_view(con, name, *self._sources[name], types)
            files = self._files["stats"] + self._files["metrics"]
            con.execute("SET allowed_paths = [" + ", ".join(f"'{_sql_str(f)}'" for f in files) + "]")
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            return fetch(con.execute(sql))
        finally:
            con.close()

    def _view(self, name: str, segments, files: list[str], types: dict[str, str]) -> None:
        _make_view(self.con, name, segments, files, types)

    def query(self, sql: str, params=None) -> pd.DataFrame:
        """The result of ``sql`` over the catalog's tables as a pandas DataFrame."""
        return self.con.cursor().execute(sql, params or []).df()

    def rows(self, sql: str, params=None) -> Rows:
        """The result of ``sql`` as plain rows (no pandas: what the command line uses)."""
        cur = self.con.cursor()
        try:
            return Rows.of(cur.execute(sql, params or []))
        finally:
            cur.close()

    def runs(self) -> pd.DataFrame:
        return self.query("SELECT * FROM runs ORDER BY created, run")

    def rebuild(self, progress=None) -> int:
        """Rewrite stats.parquet of every complete run from its store; returns how many were
        rewritten. A run whose store cannot be read, or yields fewer statistics than the table it
        has, keeps its table and is named in ``self.problems`` (run -> one-line reason).
        ``progress(done, total)`` after each run directory."""
        n, self.problems = 0, {}
        dirs = list_run_dirs(self.root)
        for i, d in enumerate(dirs):
            if progress is not None:
                progress(i, len(dirs))
            try:
                if read_attrs(d / STORE_NAME).get("status") != dims.COMPLETE:
                    continue
                if rebuild_run_table(d):
                    n += 1
            except (StoreError, RebuildError) as e:
                self.problems[d.name] = str(e)
                log.warning("run %s not rebuilt: %s", d.name, e)
        if progress is not None:
            progress(len(dirs), len(dirs))
        from . import catalog_index

        catalog_index.remove(self.root)  # the index is rebuilt from the run directories
        self.refresh()
        return n


def _make_view(con, name: str, segments, files: list[str], types: dict[str, str]) -> None:
    """(Re)create ``name`` as a view over the Parquet files, or an empty table with the columns.

    segments: (path, runs to leave out or None) of consolidated tables (capture.catalog_index),
    whose ``run`` column is already the run's directory name; files: single runs' tables."""
    _drop(con, name)
    parts = []
    whole = [p for p, out in segments if not out]
    if whole:
        parts.append(f"SELECT * FROM read_parquet([{', '.join(repr_sql(p) for p in whole)}], union_by_name=true)")
    for p, out in segments:
        if out:
            parts.append(f"SELECT * FROM read_parquet({repr_sql(p)}) WHERE run NOT IN ({', '.join(repr_sql(r) for r in out)})")
    if files:
        lst = ", ".join(repr_sql(f) for f in files)
        # a run is its directory: the run column comes from the file's directory, so a copied run
        # (same id inside) stays a run of its own
        parts.append(f"SELECT regexp_extract(filename, '([^/\\\\]+)[/\\\\][^/\\\\]+$', 1) AS run, "
                     f"* EXCLUDE (run, filename) FROM read_parquet([{lst}], union_by_name=true, filename=true)")
    if parts:
        con.execute(f"CREATE VIEW {name} AS " + " UNION ALL BY NAME ".join(parts))
    else:
        con.execute(f"CREATE TABLE {name} (" + ", ".join(f'"{c}" {t}' for c, t in types.items()) + ")")


def _drop(con, name: str) -> None:
    """Drop the view or table ``name`` if there is one."""
    for stmt in (f"DROP VIEW IF EXISTS {name}", f"DROP TABLE IF EXISTS {name}"):
        try:
            con.execute(stmt)
        except duckdb.CatalogException:  # the name exists as the other object type
            pass


def _make_runs(con, columns: dict) -> None:
    """(Re)create the ``runs`` table from ``columns`` (catalog_index.typed_columns of the rows)."""
    from .catalog_index import typed_select

    _drop(con, "runs")
    con.execute("CREATE TABLE runs AS " + typed_select(RUN_COLUMNS, RUN_TYPES), [columns[c] for c in RUN_COLUMNS])


def repr_sql(value) -> str:
    """A SQL string literal."""
    return "'" + _sql_str(value) + "'"


def metrics_frame_empty() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({"run": pd.Series(dtype=str), "metric": pd.Series(dtype=str),
                         "value": pd.Series(dtype="float64"), "frame": pd.Series(dtype="Int64"),
                         "baseline": pd.Series(dtype=str)})


def write_run_metrics(run_dir: Path, rows: pd.DataFrame) -> Path:
    """Add metric rows (columns metric, value, frame[, baseline]) to <run>/metrics.parquet, replacing
    earlier values of the same (metric, baseline); written atomically."""
    import pandas as pd

    run_dir = Path(run_dir)
    rows = rows.copy()
    rows["run"] = run_dir.name
    for c in METRIC_COLUMNS:
        if c not in rows:
            rows[c] = None
    rows = rows[METRIC_COLUMNS]
    rows["frame"] = pd.array(rows["frame"], dtype="Int64")
    rows["value"] = rows["value"].astype("float64")
    rows["baseline"] = rows["baseline"].astype(object).where(rows["baseline"].notna(), "").astype(str)
    old = read_run_metrics(run_dir)
    if len(old):
        keep = ~old.set_index(["metric", "baseline"]).index.isin(rows.set_index(["metric", "baseline"]).index)
        rows = pd.concat([old[keep], rows], ignore_index=True)
    path = run_dir / METRICS_FILE
    try:
        _write_parquet_atomic(rows, path)
    except (OSError, duckdb.IOException) as e:  # a run folder this user may only read, a full disk
        raise StoreError(f"run {run_dir.name}: {METRICS_FILE} cannot be written ({str(e).splitlines()[0]})") from None
    return path


def read_run_metrics(run_dir) -> pd.DataFrame:
    """The metric rows stored with one run (empty, with the columns, if it has none)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file() and not path.is_symlink():
        return metrics_frame_empty()
    why = f"{METRICS_FILE} is a symlink" if path.is_symlink() else parquet_problem(path)
    if why is None:
        try:
            return duckdb.connect().execute(
                f"SELECT * FROM read_parquet('{_sql_str(path)}') ORDER BY metric, frame").df()
        except duckdb.Error as e:
            why = f"{METRICS_FILE} cannot be read ({str(e).splitlines()[0][:100]})"
    raise StoreError(f"run {Path(run_dir).name}: {why}")


def to_json(df: pd.DataFrame) -> str:
    """A DataFrame as the command line prints it with --json (capture.table.to_json)."""
    return _rows_json(Rows.from_frame(df))
