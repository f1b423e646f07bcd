"""The incremental index of a trace root's catalog: cached run rows and consolidated statistics.

``<root>/catalog/`` holds files derived from the run directories and nothing else, so deleting it
loses nothing (the next open rebuilds it; ``attnlens catalog --rebuild`` does so on purpose):

- ``runs.parquet``: the catalog's row of every run, with the signature (mtime, size) of each file
  it was read from; a run's row is read again only when one of them changes (a running run's row
  is always read again: its state depends on whether its process is alive);
- ``stats-*.parquet``: the statistics tables of many complete runs in one file, so a query opens a
  few files instead of one per run; ``index.json`` lists each segment's runs with the signature
  of the run's own ``stats.parquet`` at the time. A run whose table changed since (a rebuild), or
  that is no longer complete, is filtered out of its segment and read from its own file. A
  segment left with no such run, or a segment file it does not list, is unlisted and deleted a
  day later (``retired`` in ``index.json``: since when), as are temporary files of killed processes.

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
import time
from pathlib import Path

import math
import numbers
from typing import TYPE_CHECKING

import duckdb

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

INDEX_DIR = "catalog"
INDEX_FILE = "index.json"
RUNS_FILE = "runs.parquet"
VERSION = 1
# loose run tables are consolidated into a segment once there are this many
SEGMENT_MIN = 32
# a segment no longer listed (every run in it changed or gone, or written by a process whose
# index.json lost a race), and a temporary file left by a killed process, is deleted this long
# after it was first seen so: a process that opened the root earlier may still read it meanwhile
# (the dashboard reopens its root every two minutes)
RETIRE_SECONDS = 24 * 3600


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

    def __init__(self, root: Path, run_columns: list[str], types: dict[str, str] | None = None, con=None):
        self.dir = Path(root) / INDEX_DIR
        self.columns = run_columns
        self.types = types or {}  # SQL types of run_columns (others are VARCHAR)
        self._db = con  # a DuckDB connection to use (the catalog's own: opening one costs ~20 ms)
        self.meta = {"version": VERSION, "columns": run_columns, "segments": []}
        self.rows: dict[str, dict] = {}
        self.writable = True
        try:
            meta = json.loads((self.dir / INDEX_FILE).read_text())
            if meta.get("version") == VERSION and meta.get("columns") == run_columns:
                self.meta = meta
                with self._cursor() as con:
                    got = con.execute(f"SELECT * FROM read_parquet('{_sql_str(self.dir / RUNS_FILE)}')")
                    names = [d[0] for d in got.description]
                    self.rows = {r["run"]: r for r in (dict(zip(names, t)) for t in got.fetchall())}
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
        columns = list(dict.fromkeys([*self.columns, *(k for r in rows for k in r)]))
        values = typed_columns(rows, columns, self.types)

        def write(tmp):
            with self._cursor() as con:
                con.execute("CREATE TEMP TABLE _rows AS " + typed_select(columns, self.types),
                            [values[c] for c in columns])
                try:
                    con.execute(f"COPY _rows TO '{_sql_str(tmp)}' (FORMAT parquet)")
                finally:
                    con.execute("DROP TABLE _rows")

        self._atomic(self.dir / RUNS_FILE, write)
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
        used = {Path(p).name for p, _ in segments}
        self._retire([seg["file"] for seg in self.meta.get("segments", []) if seg["file"] not in used])
        if len(loose) >= SEGMENT_MIN and self.writable:
            seg = self._write_segment({r: tables[r] for r in loose})
            if seg is not None:
                segments.append((str(self.dir / seg), None))
                loose = []
        return segments, [tables[r][0] for r in loose]

    def _retire(self, dead: list[str]) -> None:
        """Unlist the dead segments; delete unlisted segments and temporary files once they have
        been so for RETIRE_SECONDS (see there). index.json remembers since when."""
        if not self.writable or not self.dir.is_dir():
            return
        now = time.time()
        retired = self.meta.setdefault("retired", {})
        changed = bool(dead)
        if dead:
            gone = set(dead)
            self.meta["segments"] = [seg for seg in self.meta["segments"] if seg["file"] not in gone]
        listed = {seg["file"] for seg in self.meta["segments"]}
        try:
            names = os.listdir(self.dir)
        except OSError:
            return
        for name in names:
            if name.startswith("stats-") and name.endswith(".parquet") and name not in listed and name not in retired:
                retired[name] = now
                changed = True
            elif name.startswith(".") and name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    if now - os.stat(self.dir / name).st_mtime > RETIRE_SECONDS:
                        os.unlink(self.dir / name)
        for name, since in list(retired.items()):
            if name in listed or name not in names:
                del retired[name]
                changed = True
            elif now - since > RETIRE_SECONDS:
                with contextlib.suppress(OSError):
                    os.unlink(self.dir / name)
                    log.info("catalog index: removed segment %s (unlisted since %s)", name, time.ctime(since))
                del retired[name]
                changed = True
        if changed:
            self._save_meta()

    def _write_segment(self, tables: dict[str, tuple[str, str]]) -> str | None:
        name = f"stats-{secrets.token_hex(4)}.parquet"
        lst = ", ".join(f"'{_sql_str(p)}'" for p, _ in tables.values())
        sql = (f"SELECT regexp_extract(filename, '([^/\\\\]+)[/\\\\][^/\\\\]+$', 1) AS run, * EXCLUDE (run, filename) "
               f"FROM read_parquet([{lst}], union_by_name=true, filename=true)")

        def write(tmp):
            with self._cursor() as con:
                con.execute(f"COPY ({sql}) TO '{_sql_str(tmp)}' (FORMAT parquet)")

        try:
            self._atomic(self.dir / name, write)
        except (OSError, duckdb.Error) as e:
            log.warning("catalog index: could not consolidate %d run tables (%s)", len(tables), e)
            return None
        self.meta.setdefault("segments", []).append({"file": name, "runs": {r: s for r, (_, s) in tables.items()}})
        self._save_meta()
        return name

    @contextlib.contextmanager
    def _cursor(self):
        if self._db is None:
            with _cursor() as cur:
                yield cur
            return
        cur = self._db.cursor()
        try:
            yield cur
        finally:
            cur.close()

    def _save_meta(self) -> None:
        text = json.dumps(self.meta)
        self._atomic(self.dir / INDEX_FILE, lambda tmp: Path(tmp).write_text(text))

    def _atomic(self, path: Path, write) -> None:
        if not self.writable:
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
        try:
            self.dir.mkdir(exist_ok=True)
            write(tmp)
            os.replace(tmp, path)
        except (OSError, duckdb.IOException) as e:
            # a root this user may only read (a team's shared root), or a full disk: DuckDB's COPY
            # reports either as its IOException, not as an OSError. Read without an index.
            self.writable = False
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            log.info("catalog index not written (%s); reading the runs directly", str(e).splitlines()[0])


def _as_float(v) -> float | None:
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return None
    if not isinstance(v, numbers.Real):
        return None
    v = float(v)
    return None if math.isnan(v) else v


def _as_int(v) -> int | None:
    if isinstance(v, numbers.Integral):
        v = int(v)
    else:
        v = _as_float(v)
        if v is None or not v.is_integer():
            return None
        v = int(v)
    return v if -2**63 <= v < 2**63 else None


def _as_text(v) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v if isinstance(v, str) else str(v)


_CONVERT = {"BIGINT": _as_int, "DOUBLE": _as_float, "VARCHAR": _as_text}


def typed_columns(rows: list[dict], columns: list[str], types: dict[str, str]) -> dict[str, list]:
    """The rows' values, column by column, each of one Python type (int for BIGINT, float for
    DOUBLE, else str; None where a value is missing or not of that type, so a seed stored as "3"
    is 3 and one stored as "x" is NULL): the parameters of ``typed_select``."""
    return {c: [_CONVERT[types.get(c, "VARCHAR")](r.get(c)) for r in rows] for c in columns}


def typed_select(columns: list[str], types: dict[str, str]) -> str:
    """A SELECT of one row per value of its parameters, one list per column in ``columns`` order
    (typed_columns), each cast to its type. Lists, not a registered array: no numpy import."""
    return "SELECT " + ", ".join(f'unnest(${i + 1}::{types.get(c, "VARCHAR")}[]) AS "{c}"'
                                 for i, c in enumerate(columns))


def write_parquet(df, path) -> None:
    """Write a pandas DataFrame or a pyarrow Table as one Parquet file with DuckDB (not atomic:
    callers write a temporary name and rename it)."""
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
            try:
                f.unlink(missing_ok=True)
            except OSError as e:  # a root this user may only read: its index stays as it is
                log.warning("catalog index: %s not removed (%s)", f, e.strerror or e)
                return
