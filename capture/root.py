"""A trace root's layout: where its runs live and what each says about itself (its attributes),
without reading any array. Used by everything that lists or opens runs; the catalog and the
command line's listing commands need nothing more, so this module imports neither numpy nor
zarr (``capture.store`` re-exports its names). Must not import torch.

Layout of a trace root::

    <root>/runs/<run_id>/trace.zarr     the store (capture.store)
    <root>/runs/<run_id>/video.gif      the generated video for viewing
    <root>/runs/<run_id>/stats.parquet  long-form scalar statistics, written when complete
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)

ROOT_ENV = "ATTNLENS_ROOT"
DEFAULT_ROOT = Path("data") / "traces"
RUNS_DIR = "runs"
STORE_NAME = "trace.zarr"


class StoreError(RuntimeError):
    """A store that cannot be read or written as a run."""


def trace_root(root: str | os.PathLike | None = None) -> Path:
    """The trace root: the argument, else $ATTNLENS_ROOT, else data/traces."""
    return Path(root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


class RootNotWritable(StoreError):
    """A trace root a command would write runs into, which this user may not write."""


def read_only(folder: Path) -> bool:
    """Whether ``folder`` is a folder this user may not create files in."""
    return folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK)


def writable_root(root: str | os.PathLike | None = None) -> Path:
    """The trace root a command writes runs into (see trace_root). Its runs folder, or the nearest
    folder above it that exists, must be a folder this user may write: commands check before a
    model is loaded, so a shared root someone else owns is refused at once rather than after the
    first generation. Raises RootNotWritable saying which folder and why."""
    path = trace_root(root)
    probe = path / RUNS_DIR
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise RootNotWritable(f"{probe} is a file, not a folder: runs cannot be written under it "
                              f"(choose another --root)")
    if read_only(probe):
        raise RootNotWritable(f"{probe} is read-only for this user: runs cannot be written there "
                              f"(choose another --root)")
    return path


def new_run_id() -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{now}-{secrets.token_hex(3)}"


def run_dir(root, run_id: str) -> Path:
    return trace_root(root) / RUNS_DIR / run_id


def read_attrs(path: str | os.PathLike) -> dict:
    """Group attributes of a run store, read straight from zarr.json (fast; no zarr import cost)."""
    p = Path(path)
    if p.name != STORE_NAME:
        p = p / STORE_NAME
    try:
        meta = json.loads((p / "zarr.json").read_text())
    except (OSError, ValueError) as e:
        raise StoreError(f"unreadable run store {p}: {e}") from None
    return meta.get("attributes", {})


def list_run_dirs(root) -> list[Path]:
    """The run directories of a root. A symlink is not followed: a run is a real directory
    inside the root, so nothing a reader does (rebuild writes tables) reaches outside it."""
    d = trace_root(root) / RUNS_DIR
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        if p.is_symlink():
            log.warning("skipping %s: a symlink (runs must be directories inside the trace root)", p.name)
        elif p.is_dir():
            out.append(p)
    return sorted(out)


def inside_root(path, run_dir) -> bool:
    """Whether ``path`` is a regular file of ``run_dir`` that is no symlink out of it."""
    path, run_dir = Path(path), Path(run_dir)
    try:
        return not path.is_symlink() and path.is_file() and path.resolve().is_relative_to(run_dir.resolve())
    except OSError:
        return False
