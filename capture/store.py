"""One Zarr v3 store per run: writing it step by step, and opening it as an xarray.Dataset.

The root's layout (where runs live, their attributes) is ``capture.root``; this module adds the
arrays (xarray-readable, named dims from dims.py).

A run's status goes running -> complete | failed in the group attributes. Each run directory is
written by exactly one process, so concurrent captures into one root never share a file.
Must not import torch (the dashboard reads stores through this module).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import dims
from .root import (  # noqa: F401  (re-exported: the layout's names live in capture.root)
    DEFAULT_ROOT, ROOT_ENV, RUNS_DIR, STORE_NAME, StoreError, inside_root, list_run_dirs, new_run_id, read_attrs,
    run_dir, trace_root)

log = logging.getLogger(__name__)

SCALAR_DIMS = (dims.STEP, dims.LAYER, dims.BRANCH, dims.PART, dims.HEAD)
LAYER_COORDS = (
    dims.LAYER_NAME, dims.LAYER_KIND, dims.LAYER_BLOCK, dims.N_QUERY, dims.N_KEY, dims.N_HEADS, "map_gy", "map_gx",
)
COORDS_ATTR = " ".join((dims.TIMESTEP,) + LAYER_COORDS)
# steps are written in batches at most this many seconds apart (see RunWriter.write_step)
FLUSH_SECONDS = 2.0
STEP_CHUNK = 64  # steps per chunk of the scalar arrays
MAP_CHUNK_BYTES = 4 * 2**20  # at most this much map data per chunk (one step, several layers)
# steps of small maps share a chunk up to this size (a chunk of a batch's last steps is rewritten,
# whole, by the next batch: zarr merges the new steps into it)
MAP_STEPS_BYTES = 2**20
# chunk files named c.<step>.<i>... directly in the array's folder (zarr v3's "default" encoding
# with "." instead of "/"): writing a chunk is then one file, not one file in a folder per index
# (the nested folders' mkdir cost as much as the data of the small map chunks). Stores written
# with "/" still read: the encoding is in each array's metadata.
CHUNK_KEYS = {"name": "default", "separator": "."}


def _now() -> str:
    # milliseconds: runs (and the sweeps they finish) that start or end within one second still
    # sort in the order they happened (ISO strings of both precisions sort together correctly)
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _json_safe(obj):
    return json.loads(json.dumps(obj, default=str))


def _str_array(values) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=np.dtypes.StringDType())


class RunWriter:
    """Writes one run: attributes at start, one step at a time, the video and status at the end."""

    def __init__(self, root, attrs: dict, run_id: str | None = None):
        self.run_id = run_id or new_run_id()
        self.dir = run_dir(root, self.run_id)
        self.dir.mkdir(parents=True, exist_ok=False)
        self.path = self.dir / STORE_NAME
        base = {
            "run_id": self.run_id,
            "status": dims.RUNNING,
            "created": _now(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        self.attrs = {**base, **_json_safe(attrs)}
        from .zarr_direct import write_group

        # the group's metadata is written once with every attribute: an interrupt can leave no
        # store (unreadable, retried) but never a "running" run without the pid that shows it is gone.
        # Written directly, as zarr-python would: a short run never imports zarr-python (75 ms)
        write_group(self.path, self.attrs, create=True)
        self._group = None  # zarr-python's view of it, opened when a later batch grows the arrays
        self._array_names: list[str] = []  # the per-step arrays, once created
        self.arrays: dict = {}  # name -> zarr.Array, opened for the second batch of steps
        self.n_steps = 0
        # Steps are written by one background thread, in order, so generation does not wait on
        # the store; flush() (called by complete/fail) waits and re-raises any write error.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"attnlens-{self.run_id}")
        self._pending: list[Future] = []
        self._buffer: list[tuple] = []  # (step, timestep, arrays) queued since the last batch
        self._layout: tuple | None = None  # (layers, branches, grid, frames) of the first step
        self._kept: list[tuple] = []  # (step, timestep, scalar arrays) of every step written
        self._layers: list[dict] | None = None  # per-layer coordinates as last written
        self._last_write = time.monotonic()
        self.flush_seconds = FLUSH_SECONDS

    @property
    def group(self):
        """The store as a zarr-python group (opened on first use: growing arrays, rewriting coordinates)."""
        if self._group is None:
            import zarr

            self._group = zarr.open_group(str(self.path), mode="r+", zarr_format=3, use_consolidated=False)
        return self._group

    @property
    def has_maps(self) -> bool:
        """Whether the run's capture records maps (the store then has the map arrays)."""
        return self.attrs.get("capture", {}).get("maps", True)

    # -- structure, created with the first batch of steps once layer shapes and branches are known --
    def _create(self, layers: list[dict], branches: list[str], heads: int, grid: int, frames: int,
                first: dict[str, np.ndarray]) -> None:
        """Every array of the run, written whole with the first batch's steps (``first``: name ->
        the batch's stacked data) by capture.zarr_direct, which writes the files zarr-python
        would at a twentieth of its CPU cost; later batches grow the arrays through zarr-python."""
        from .zarr_direct import write_array

        self._layers = [dict(l) for l in layers]
        nl, nb, np_ = len(layers), len(branches), len(dims.PARTS)
        G = grid * grid
        base = self.path

        sep = CHUNK_KEYS["separator"]

        def coord(name, data, dim=dims.LAYER):
            write_array(base / name, data, data.shape, "" if data.dtype.kind == "T" else 0, [dim], separator=sep)

        coord(dims.LAYER_NAME, _str_array(l["name"] for l in layers))
        coord(dims.LAYER_KIND, _str_array(l["kind"] for l in layers))
        coord(dims.LAYER_BLOCK, _str_array(l["block"] for l in layers))
        coord(dims.BRANCH, _str_array(branches), dims.BRANCH)
        coord(dims.PART, _str_array(dims.PARTS), dims.PART)
        for key, name in ((dims.N_QUERY, "n_query"), (dims.N_KEY, "n_key"), (dims.N_HEADS, "heads"),
                          ("map_gy", "gy"), ("map_gx", "gx")):
            coord(key, np.array([l[name] for l in layers], dtype="int32"))
        coord(dims.LAYER, np.arange(nl, dtype="int32"))
        coord(dims.HEAD, np.arange(heads, dtype="int32"), dims.HEAD)

        def arr(name, chunks, dim_names, fill=np.nan, steps=1, coordinates=True):
            write_array(base / name, first[name], (steps,) + chunks, fill, [dims.STEP, *dim_names],
                        {"coordinates": COORDS_ATTR} if coordinates else {}, separator=sep)
            self._array_names.append(name)

        # scalars: STEP_CHUNK steps per chunk (a few KB each), so a batch of steps is one file per
        # array, not one per step; they are read whole (the run's table, a rebuild)
        n = STEP_CHUNK
        arr(dims.STEP, (), [], fill=-1, steps=n, coordinates=False)
        arr(dims.TIMESTEP, (), [], steps=n, coordinates=False)
        for name in dims.SCALAR_STATS:
            arr(name, (nl, nb, np_, heads), SCALAR_DIMS[1:], steps=n)
        arr(dims.PERTURBED, (nl, nb), [dims.LAYER, dims.BRANCH], fill=0, steps=n)
        if self.has_maps:
            # maps: as many layers of a step as fit in MAP_CHUNK_BYTES per chunk (usually all of
            # them), and where a step's maps are small (temporal and entropy maps), as many steps
            # as fit in MAP_STEPS_BYTES. A zarr chunk costs about as much CPU to write as 100 KB
            # of data, so per-layer or per-step chunks of small maps cost several times the data;
            # reading one (step, layer) map decompresses at most MAP_CHUNK_BYTES.
            def maps(name, inner, dim_names):
                per_layer = 4 * nb * int(np.prod(inner))
                n_lay = max(1, min(nl, MAP_CHUNK_BYTES // per_layer))
                steps = max(1, min(STEP_CHUNK, MAP_STEPS_BYTES // (n_lay * per_layer)))
                arr(name, (n_lay, nb) + inner, [dims.LAYER, dims.BRANCH, *dim_names], steps=steps)

            maps(dims.MAP_SPATIAL, (G, G), [dims.QUERY, dims.KEY])
            maps(dims.MAP_TEMPORAL, (frames, frames), [dims.QUERY_FRAME, dims.KEY_FRAME])
            maps(dims.ENTROPY_MAP, (frames, grid, grid), [dims.FRAME, dims.GRID_Y, dims.GRID_X])
        self.shape_info = {"grid": grid, "frames": frames, "heads": heads, "branches": branches}

    def write_step(self, step: int, timestep: float, layers: list[dict], branches: list[str], results: list[dict],
                   perturbed: np.ndarray, grid: int, frames: int) -> None:
        """Queue one step for writing. results[i] holds numpy arrays for layer i (Accumulator.result).

        Steps go to disk in batches, at most ``flush_seconds`` apart (and at complete/fail): each
        zarr write costs a few milliseconds of CPU whatever its size, so one write per array per
        step would cost more than the statistics on small models. A process killed mid-run loses
        at most the steps of the last ``flush_seconds``; the run is not complete either way."""
        for f in self._pending:
            if f.done():
                f.result()  # re-raises a write error of an earlier batch
        self._pending = [f for f in self._pending if not f.done()]
        if self._layout is None:
            self._layout = (layers, branches, grid, frames)
        scalars = self._scalar_blocks(layers, branches, results, perturbed)
        maps = None
        if self.has_maps:
            # the maps stay as the accumulators gave them (small, unpadded) until the batch is
            # written: padded and stacked there in one array per name, not padded per step and
            # stacked again (a copy of every step's padded maps, 25 ms of the demo's 60 ms)
            maps = (layers, [None if r is None or dims.MAP_TEMPORAL not in r else
                             (r.get(dims.MAP_SPATIAL), r[dims.MAP_TEMPORAL], r[dims.ENTROPY_MAP]) for r in results])
        self._buffer.append((step, timestep, scalars, maps))
        # the scalars stay in memory too (a few KB per step): the run's table is built from them
        self._kept.append((step, timestep, scalars))
        # the first batch waits like every other: written at once, the store's arrays would be
        # created (tens of ms of zarr work in two more threads) while the model runs, and on a
        # busy CPU that contention cost more than the work (demo, 25 steps: 1.33x against 1.27x
        # plain when everything of a short run is written at its end)
        if time.monotonic() - self._last_write >= self.flush_seconds:
            self._submit()

    def _submit(self) -> None:
        if self._buffer:
            batch, self._buffer = self._buffer, []
            self._last_write = time.monotonic()
            self._pending.append(self._pool.submit(self._write_steps, batch))

    def flush(self) -> None:
        """Write every queued step and wait until it is on disk; raise the first write error, if any."""
        self._submit()
        pending, self._pending = self._pending, []
        for f in pending:
            f.result()

    def _scalar_blocks(self, layers, branches, results, perturbed) -> dict[str, np.ndarray]:
        """One step's scalar arrays, padded to the store's shapes (NaN where a layer has no value)."""
        nl, nb = len(layers), len(branches)
        heads = max(l["heads"] for l in layers)
        out = {}
        for name in dims.SCALAR_STATS:
            block = np.full((nl, nb, len(dims.PARTS), heads), np.nan, dtype="float32")
            for li, r in enumerate(results):
                if r is not None:
                    v = r[name]
                    block[li, :, :, : v.shape[-1]] = v
            out[name] = block
        out[dims.PERTURBED] = perturbed.astype("int8")
        return out

    def _map_batch(self, batch: list) -> dict[str, np.ndarray]:
        """The batch's maps, padded to the store's shapes (NaN where a layer or step has none)."""
        _, branches, grid, frames = self._layout
        nl, nb, G, k = len(self._layout[0]), len(branches), grid * grid, len(batch)
        ms = np.full((k, nl, nb, G, G), np.nan, dtype="float32")
        mt = np.full((k, nl, nb, frames, frames), np.nan, dtype="float32")
        em = np.full((k, nl, nb, frames, grid, grid), np.nan, dtype="float32")
        for i, entry in enumerate(batch):
            if entry[3] is None:
                continue
            layers, per_layer = entry[3]
            for li, (got, lay) in enumerate(zip(per_layer, layers)):
                if got is None:  # a step without maps (maps_every): NaN
                    continue
                spatial, temporal, emap = got
                gy, gx = lay["gy"], lay["gx"]
                g2 = gy * gx
                if spatial is not None:
                    ms[i, li, :, :g2, :g2] = spatial
                f = temporal.shape[-1]
                mt[i, li, :, :f, :f] = temporal
                fe = emap.shape[1]
                em[i, li, :, :fe, :gy, :gx] = emap.reshape(nb, fe, gy, gx)
        return {dims.MAP_SPATIAL: ms, dims.MAP_TEMPORAL: mt, dims.ENTROPY_MAP: em}

    def _write_steps(self, batch: list) -> None:
        """Append a batch of steps: the first creates every array with its data; later ones make
        one resize and one slice write per array."""
        data = {dims.STEP: np.array([b[0] for b in batch], dtype="int32"),
                dims.TIMESTEP: np.array([float(b[1]) for b in batch], dtype="float64")}
        for name in batch[0][2]:
            data[name] = np.stack([b[2][name] for b in batch])
        if self.has_maps:
            data.update(self._map_batch(batch))
        i, k = self.n_steps, len(batch)
        if not self._array_names:
            layers, branches, grid, frames = self._layout
            self._create(layers, branches, max(l["heads"] for l in layers), grid, frames, data)
        else:
            if not self.arrays:  # opened once, by the second batch
                self.arrays = {n: self.group[n] for n in self._array_names}
            for name, a in self.arrays.items():
                a.resize((i + k,) + a.shape[1:])
                a[i:i + k] = data[name]
        self.n_steps += k

    def write_video(self, frames: np.ndarray, fps: int = 8) -> None:
        """frames: (F, H, W, 3) uint8."""
        from .video import save_video

        from .zarr_direct import write_array

        write_array(self.path / dims.VIDEO, frames, frames.shape, 0,
                    [dims.VIDEO_FRAME, dims.PIXEL_Y, dims.PIXEL_X, dims.CHANNEL], separator=CHUNK_KEYS["separator"])
        save_video(frames, self.dir, fps=fps)

    def set_attrs(self, **attrs) -> None:
        from .zarr_direct import write_group

        new = {**self.attrs, **_json_safe(attrs)}
        write_group(self.path, new)
        self.attrs = new

    def set_layers(self, layers: list[dict]) -> None:
        """Rewrite the per-layer coordinates with what is known at the end of the run: a layer
        first seen after the first stored step (Wan 2.2's low-noise expert, kinds inferred later)
        gets its kind and token counts."""
        if self._layout is None or layers == (self._layers or self._layout[0]):
            return  # nothing to rewrite (the usual case: every layer was seen at the first step)
        self.flush()  # the arrays exist once the first batch is written
        self._layers = layers
        g = self.group
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g[dims.LAYER_KIND][:] = _str_array(l["kind"] for l in layers)
        for key, name in ((dims.N_QUERY, "n_query"), (dims.N_KEY, "n_key"), (dims.N_HEADS, "heads"),
                          ("map_gy", "gy"), ("map_gx", "gx")):
            g[key][:] = np.array([l[name] for l in layers], dtype="int32")

    def complete(self, **attrs) -> None:
        """Flush, write the run's statistics table, then mark it complete: a process killed at any
        point leaves either a complete run with its table or a run that is not complete."""
        from .catalog import write_run_table

        self._submit()  # the last steps go to disk in the writer thread while the table is made here
        table = write_run_table(self.dir, self.stats_table())
        try:
            self.flush()
        except BaseException:
            table.unlink(missing_ok=True)  # a run whose steps are not all stored has no table
            raise
        self._pool.shutdown()
        from .zarr_direct import write_group_metadata

        # the status and the consolidated metadata (a zarr-python extension to v3) in one atomic
        # write of the group's zarr.json: 1 ms, where zarr-python's two writes took 14. The
        # writer's attributes say complete only once the file does (fail() trusts them).
        done = {**self.attrs, **_json_safe(dict(status=dims.COMPLETE, finished=_now(), steps_captured=self.n_steps,
                                                **attrs))}
        write_group_metadata(self.path, done)
        self.attrs = done

    def stats_table(self):
        """The run's long-form statistics table (a pyarrow Table), from the arrays this writer
        wrote: the same table catalog.stats_frame reads back from the store."""
        from .catalog import stats_table

        layers, branches, _, _ = self._layout or ([], [], 0, 0)
        layers = self._layers or layers
        kept = self._kept
        stack = {n: (np.stack([k[2][n] for k in kept]) if kept else np.zeros((0, 0, 0, 0, 0), "float32"))
                 for n in (*dims.SCALAR_STATS, dims.PERTURBED)}
        return stats_table(self.run_id, [k[0] for k in kept], [float(k[1]) for k in kept], [l["name"] for l in layers],
                           [l["kind"] for l in layers], [l["block"] for l in layers], branches, dims.PARTS,
                           {n: stack[n] for n in dims.SCALAR_STATS}, stack[dims.PERTURBED])

    def fail(self, error: BaseException | str) -> None:
        msg = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        if self.attrs.get("status") == dims.COMPLETE:
            # everything was written before the run was marked complete (one atomic write); an
            # interrupt that lands after it does not make the data incomplete
            log.warning("run %s was already complete when %s arrived; it stays complete", self.run_id, msg)
            return
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - the write error is secondary to the run's own error
            log.exception("a step of run %s could not be written", self.run_id)
        self._pool.shutdown()
        try:
            self.set_attrs(status=dims.FAILED, finished=_now(), error=msg, steps_captured=self.n_steps)
        except Exception:  # the store itself may be what broke; never mask the original error
            log.exception("could not mark run %s as failed", self.run_id)


def open_run(path: str | os.PathLike, *, require_complete: bool = False):
    """The run's store as an xarray.Dataset (lazy). Raises StoreError with a one-line reason."""
    import xarray as xr

    p = Path(path)
    if p.name != STORE_NAME:
        p = p / STORE_NAME
    attrs = read_attrs(p)
    status = attrs.get("status")
    if require_complete and status != dims.COMPLETE:
        raise StoreError(f"run {attrs.get('run_id', p.parent.name)} is {status}, not complete")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # chunks=None: lazily indexed numpy, no dask graph. Reads stay in the calling thread, so
            # they cannot wait on a Dask cluster's scheduler from inside one of its workers.
            ds = xr.open_zarr(str(p), consolidated=None, zarr_format=3, chunks=None)
    except ValueError as e:
        if status == dims.COMPLETE or "conflicting sizes" not in str(e):
            raise StoreError(f"unreadable run store {p}: {type(e).__name__}: {e}") from None
        ds = _open_trimmed(p)  # killed in the middle of writing a step
    except Exception as e:  # noqa: BLE001 - any backend failure is a broken store to the user
        raise StoreError(f"unreadable run store {p}: {type(e).__name__}: {e}") from None
    return ds


def _open_trimmed(p: Path):
    """An interrupted run whose last step was only partly written: every variable cut to the steps
    all of them have (read eagerly; such runs are never shown as complete)."""
    import xarray as xr
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = zarr.open_group(str(p), mode="r")
        arrays = dict(g.arrays())
        names = {n: tuple(a.metadata.dimension_names or ()) for n, a in arrays.items()}
        n_steps = min(a.shape[0] for n, a in arrays.items() if names[n][:1] == (dims.STEP,))
        variables = {}
        for n, a in arrays.items():
            data = a[:n_steps] if names[n][:1] == (dims.STEP,) else a[:]
            attrs = {k: v for k, v in a.attrs.items() if k != "coordinates"}
            variables[n] = xr.Variable(names[n], data, attrs)
    coord_names = set(COORDS_ATTR.split()) | {n for n, d in names.items() if d == (n,)}
    coords = {n: v for n, v in variables.items() if n in coord_names}
    data_vars = {n: v for n, v in variables.items() if n not in coord_names}
    log.warning("run store %s has a partly written step; reading its first %d steps", p, n_steps)
    return xr.Dataset(data_vars, coords=coords, attrs=dict(g.attrs))


