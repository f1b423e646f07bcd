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

import json
import logging
import os
import socket
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from . import dims
from .store import STORE_NAME, StoreError, list_run_dirs, open_run, read_attrs, trace_root

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


def stats_frame(ds, run_id: str) -> pd.DataFrame:
    """Long-form scalar statistics of one run's Dataset (rows with no value dropped)."""
    if dims.ENTROPY not in ds:
        return pd.DataFrame(columns=STATS_COLUMNS)
    sub = ds[list(dims.SCALAR_STATS)].load()
    df = sub.to_dataframe().reset_index()
    df = df.dropna(subset=[dims.ENTROPY, dims.ENERGY], how="all")
    df = df.rename(columns={dims.LAYER_KIND: "kind", dims.LAYER_BLOCK: "block"})
    pert = ds[dims.PERTURBED].load().to_dataframe().reset_index()[[dims.STEP, dims.LAYER, dims.BRANCH, dims.PERTURBED]]
    df = df.merge(pert, on=[dims.STEP, dims.LAYER, dims.BRANCH], how="left")
    df.insert(0, "run", run_id)
    for col in STATS_COLUMNS:
        if col not in df:
            df[col] = np.nan
    df = df[STATS_COLUMNS]
    df[dims.PERTURBED] = df[dims.PERTURBED].fillna(0).astype("int8")
    for c in (dims.LAYER_NAME, "kind", "block", dims.BRANCH, dims.PART):
        df[c] = df[c].astype(str)
    return df


def _write_parquet_atomic(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    con = duckdb.connect()
    try:
        con.register("df", df)
        con.execute(f"COPY (SELECT * FROM df) TO '{_sql_str(tmp)}' (FORMAT parquet)")
    finally:
        con.close()
    os.replace(tmp, path)


def _sql_str(p) -> str:
    return str(p).replace("'", "''")


def write_run_table(run_dir: Path) -> Path:
    """(Re)write <run>/stats.parquet from the run's store."""
    run_dir = Path(run_dir)
    ds = open_run(run_dir)
    df = stats_frame(ds, ds.attrs.get("run_id", run_dir.name))
    out = run_dir / STATS_FILE
    _write_parquet_atomic(df, out)
    return out


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
    if status == dims.RUNNING and a.get("host") == socket.gethostname() and not _pid_alive(a.get("pid")):
        state = "interrupted"  # the writing process is gone: it will never complete
    ptb = a.get("perturbation") or []
    row.update(
        run=a.get("run_id", run_dir.name), status=status, state=state, model=a.get("model"), family=a.get("family"),
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


class Catalog:
    """DuckDB over one trace root. ``query(sql)`` returns a DataFrame; see the module docstring."""

    def __init__(self, root=None):
        self.root = trace_root(root)
        self.con = duckdb.connect()
        self.refresh()

    def refresh(self) -> None:
        dirs = list_run_dirs(self.root)
        runs = pd.DataFrame([run_row(d) for d in dirs], columns=RUN_COLUMNS)
        for c in ("seed", "steps", "frames", "height", "width", "layers_captured", "steps_captured"):
            runs[c] = pd.to_numeric(runs[c], errors="coerce").astype("Int64")
        runs["guidance"] = pd.to_numeric(runs["guidance"], errors="coerce")
        runs["seconds"] = pd.to_numeric(runs["seconds"], errors="coerce")
        for stmt in ("DROP VIEW IF EXISTS stats", "DROP TABLE IF EXISTS stats", "DROP TABLE IF EXISTS runs"):
            try:
                self.con.execute(stmt)
            except duckdb.CatalogException:  # the name exists as the other object type
                pass
        self.con.register("_runs_df", runs)
        self.con.execute("CREATE TABLE runs AS SELECT * FROM _runs_df")
        self.con.unregister("_runs_df")
        complete = set(runs.loc[runs["status"] == dims.COMPLETE, "run"])
        files = [str(d / STATS_FILE) for d in dirs if d.name in complete and (d / STATS_FILE).is_file()]
        self._view("stats", files, stats_frame_empty())
        mfiles = [str(d / METRICS_FILE) for d in dirs if d.name in complete and (d / METRICS_FILE).is_file()]
        self._view("metrics", mfiles, metrics_frame_empty())

    def _view(self, name: str, files: list[str], empty: pd.DataFrame) -> None:
        for stmt in (f"DROP VIEW IF EXISTS {name}", f"DROP TABLE IF EXISTS {name}"):
            try:
                self.con.execute(stmt)
            except duckdb.CatalogException:
                pass
        if files:
            lst = ", ".join(f"'{_sql_str(f)}'" for f in files)
            self.con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{lst}], union_by_name=true)")
        else:
            self.con.register(f"_{name}_empty", empty)
            self.con.execute(f"CREATE TABLE {name} AS SELECT * FROM _{name}_empty")
            self.con.unregister(f"_{name}_empty")

    def query(self, sql: str, params=None) -> pd.DataFrame:
        return self.con.cursor().execute(sql, params or []).df()

    def runs(self) -> pd.DataFrame:
        return self.query("SELECT * FROM runs ORDER BY created, run")

    def rebuild(self) -> int:
        """Rewrite stats.parquet of every complete run from its store. Returns how many."""
        n = 0
        for d in list_run_dirs(self.root):
            try:
                if read_attrs(d / STORE_NAME).get("status") == dims.COMPLETE:
                    write_run_table(d)
                    n += 1
            except StoreError as e:
                log.warning("skipping %s: %s", d.name, e)
        self.refresh()
        return n


def stats_frame_empty() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype="float64") for c in STATS_COLUMNS})
    for c in ("run", dims.LAYER_NAME, "kind", "block", dims.BRANCH, dims.PART):
        df[c] = df[c].astype(str)
    for c in (dims.STEP, dims.LAYER, dims.HEAD):
        df[c] = df[c].astype("int64")
    return df


def metrics_frame_empty() -> pd.DataFrame:
    return pd.DataFrame({"run": pd.Series(dtype=str), "metric": pd.Series(dtype=str),
                         "value": pd.Series(dtype="float64"), "frame": pd.Series(dtype="Int64"),
                         "baseline": pd.Series(dtype=str)})


def write_run_metrics(run_dir: Path, rows: pd.DataFrame) -> Path:
    """Add metric rows (columns metric, value, frame[, baseline]) to <run>/metrics.parquet, replacing
    earlier values of the same (metric, baseline); written atomically."""
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
    _write_parquet_atomic(rows, path)
    return path


def read_run_metrics(run_dir) -> pd.DataFrame:
    """The metric rows stored with one run (empty, with the columns, if it has none)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return metrics_frame_empty()
    return duckdb.connect().execute(f"SELECT * FROM read_parquet('{_sql_str(path)}') ORDER BY metric, frame").df()


def to_json(df: pd.DataFrame) -> str:
    return json.dumps(json.loads(df.to_json(orient="records", date_format="iso")), indent=1)
