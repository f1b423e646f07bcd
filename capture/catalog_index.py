"""The incremental index of a trace root's catalog: cached run rows and consolidated statistics.

``<root>/catalog/`` holds files derived from the run directories and nothing else, so deleting it
loses nothing (the next open rebuilds it; ``attnlens catalog --rebuild`` does so on purpose):

- ``runs.parquet``: the catalog's row of every run, with the signature (mtime, size) of each file
  it was read from; a run's row is read again only when one of them changes (a running run's row
  is always read again: its state depends on whether its process is alive);
- ``stats-*.parquet``: the statistics tables of many complete runs in one file, so a query opens a
  few files instead of one per run; ``index.json`` lists each segment's runs with the signature
  of the run's own ``stats.parquet`` at the time. A run whose table changed since (a rebuild), or
  that is no longer complete, is filtered out of its segment and read from its own file.

Every file is written to a temporary name and renamed, by whichever process opens the root; two
processes racing leave one index or the other, both correct. A root that cannot be written is
read without an index. Must not import torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
from pathlib import Path

import duckdb
import pandas as pd

log = logging.getLogger(__name__)

INDEX_DIR = "catalog"
INDEX_FILE = "index.json"
RUNS_FILE = "runs.parquet"
VERSION = 1
# loose run tables are consolidated into a segment once there are this many
SEGMENT_MIN = 32


def signature(path: Path) -> str:
    """'' for a missing file, 'link' for a symlink, else mtime_ns:size (changes with every rewrite)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return ""
    if os.path.islink(path):
        return "link"
    return f"{st.st_mtime_ns}:{st.st_size}"


def _sql_str(p) -> str:
    return str(p).replace("'", "''")


class RootIndex:
    """Reads and updates ``<root>/catalog/``; see the module docstring."""

    def __init__(self, root: Path, run_columns: list[str]):
        self.dir = Path(root) / INDEX_DIR
        self.columns = run_columns
        self.meta = {"version": VERSION, "columns": run_columns, "segments": []}
        self.rows: dict[str, dict] = {}
        self.writable = True
        try:
            meta = json.loads((self.dir / INDEX_FILE).read_text())
            if meta.get("version") == VERSION and meta.get("columns") == run_columns:
                self.meta = meta
                with _cursor() as con:
                    rows = con.execute(f"SELECT * FROM read_parquet('{_sql_str(self.dir / RUNS_FILE)}')").df()
                self.rows = {r["run"]: r for r in rows.to_dict("records")}
        except (OSError, ValueError, duckdb.Error, KeyError):
            self.meta = {"version": VERSION, "columns": run_columns, "segments": []}
            self.rows = {}

    # -- run rows -------------------------------------------------------------------------------
    def cached_row(self, run: str, sigs: dict) -> dict | None:
        """The cached row of a run if none of its files changed (and it is not running)."""
        row = self.rows.get(run)
        if row is None or any(row.get(f"_sig_{k}") != v for k, v in sigs.items()):
            return None
        if row.get("status") == "running":
            return None
        return row

    def save_rows(self, rows: list[dict]) -> None:
        if not self.writable:
            return
        df = pd.DataFrame(rows)
        for c in df.columns:
            if df[c].dtype == object:
                df[c] = df[c].astype(str).where(df[c].notna(), None)
        self._atomic(self.dir / RUNS_FILE, lambda tmp: write_parquet(df, tmp))
        self._save_meta()

    # -- statistics sources -----------------------------------------------------------------------
    def stats_sources(self, tables: dict[str, tuple[str, str]]) -> tuple[list[tuple[str, list[str] | None]], list[str]]:
        """tables: run -> (path of its stats.parquet, signature) for every run whose table is read.

        Returns (segments, loose): segments as (path, runs to leave out or None), loose = the run
        files no valid segment holds. Writes a new segment of the loose files when there are
        SEGMENT_MIN or more of them."""
        segments, covered = [], set()
        for seg in self.meta.get("segments", []):
            path = self.dir / seg["file"]
            if not path.is_file():
                continue
            good = {r for r, sig in seg["runs"].items() if r in tables and tables[r][1] == sig and r not in covered}
            if not good:
                continue
            stale = sorted(set(seg["runs"]) - good)
            segments.append((str(path), stale or None))
            covered |= good
        loose = [r for r in tables if r not in covered]
        if len(loose) >= SEGMENT_MIN and self.writable:
            seg = self._write_segment({r: tables[r] for r in loose})
            if seg is not None:
                segments.append((str(self.dir / seg), None))
                loose = []
        return segments, [tables[r][0] for r in loose]

    def _write_segment(self, tables: dict[str, tuple[str, str]]) -> str | None:
        name = f"stats-{secrets.token_hex(4)}.parquet"
        lst = ", ".join(f"'{_sql_str(p)}'" for p, _ in tables.values())
        sql = (f"SELECT regexp_extract(filename, '([^/\\\\]+)[/\\\\][^/\\\\]+$', 1) AS run, * EXCLUDE (run, filename) "
               f"FROM read_parquet([{lst}], union_by_name=true, filename=true)")

        def write(tmp):
            with _cursor() as con:
                con.execute(f"COPY ({sql}) TO '{_sql_str(tmp)}' (FORMAT parquet)")

        try:
            self._atomic(self.dir / name, write)
        except (OSError, duckdb.Error) as e:
            log.warning("catalog index: could not consolidate %d run tables (%s)", len(tables), e)
            return None
        self.meta.setdefault("segments", []).append({"file": name, "runs": {r: s for r, (_, s) in tables.items()}})
        self._save_meta()
        return name

    def _save_meta(self) -> None:
        text = json.dumps(self.meta)
        self._atomic(self.dir / INDEX_FILE, lambda tmp: Path(tmp).write_text(text))

    def _atomic(self, path: Path, write) -> None:
        if not self.writable:
            return
        try:
            self.dir.mkdir(exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
            write(tmp)
            os.replace(tmp, path)
        except OSError as e:  # a read-only root: read without an index
            self.writable = False
            log.info("catalog index not written (%s); reading the runs directly", e)


def write_parquet(df: pd.DataFrame, path) -> None:
    """Write a DataFrame as one Parquet file with DuckDB (not atomic: callers write a temporary
    name and rename it)."""
    with _cursor() as con:
        con.register("df", df)
        con.execute(f"COPY (SELECT * FROM df) TO '{_sql_str(path)}' (FORMAT parquet)")


_SHARED: tuple[int, duckdb.DuckDBPyConnection] | None = None  # (pid, in-memory database) of this process
_SHARED_LOCK = threading.Lock()


@contextlib.contextmanager
def _cursor():
    """A cursor on this process's in-memory DuckDB database, closed after use. Opening a database
    costs about 17 ms, more than writing a run's table, so one is kept per process (a forked
    process makes its own) and each use takes a cursor of it."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None or _SHARED[0] != os.getpid():
            _SHARED = (os.getpid(), duckdb.connect())
        cur = _SHARED[1].cursor()
    try:
        yield cur
    finally:
        cur.close()


def remove(root: Path) -> None:
    """Delete a root's index (``catalog --rebuild`` builds it again from the run directories)."""
    d = Path(root) / INDEX_DIR
    if not d.is_dir() or d.is_symlink():
        return
    for f in d.iterdir():
        if f.is_file() and not f.is_symlink():
            f.unlink(missing_ok=True)
