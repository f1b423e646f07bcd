"""Writing a new Zarr v3 array (its metadata and all its data) in one call, without zarr-python.

zarr-python spends about 2.5 ms of CPU creating one array (dtype registry, codec pipeline, a
thread hop per file), twenty times the cost of the two files it writes. A run's store has about
20 small arrays, so creating them cost ~50 ms a run, more than the statistics of every small
layer call of the demo (benchmarks/bench_store.py). This module writes the very files zarr-python
writes for the kinds of array the store makes (and a group's own zarr.json, with or without a
flat group's consolidated metadata):
fixed-size numbers or strings, a regular chunk grid, "default" chunk keys, the bytes (or
vlen-utf8) codec then zstd at level 0, through
numcodecs' own codecs. Chunks that hold only the fill value are not written (as zarr-python does
by default); every file goes to a temporary name first and is renamed into place, and the
array's zarr.json comes last, so an interrupted write leaves no array rather than a torn one.

Readers (zarr-python, xarray) see ordinary arrays; tests compare every kind against zarr-python's
own writer, file by file. Growing an array later (resize, partial chunks) is left to zarr-python.
Must not import torch or zarr.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import numpy as np

ZSTD = {"name": "zstd", "configuration": {"level": 0, "checksum": False}}
_NUMERIC = {np.dtype(t): t for t in ("int8", "int16", "int32", "int64", "uint8", "float32", "float64")}
_codecs: dict = {}


def _codec(name: str):
    got = _codecs.get(name)
    if got is None:
        import numcodecs

        got = _codecs[name] = numcodecs.Zstd(level=0, checksum=False) if name == "zstd" else numcodecs.VLenUTF8()
    return got


def _is_string(dtype: np.dtype) -> bool:
    return dtype.kind in "TUO"


def _fill_json(value, dtype: np.dtype):
    if _is_string(dtype):
        return str(value)
    if dtype.kind == "f":
        v = float(value)
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return v
    return int(value)


def array_metadata(shape, chunks, dtype, fill_value, dimension_names=None, attributes=None,
                   separator: str = ".") -> dict:
    """The zarr.json document zarr-python writes for such an array."""
    dtype = np.dtype(dtype)
    if _is_string(dtype):
        data_type, first = "string", {"name": "vlen-utf8", "configuration": {}}
    elif dtype in _NUMERIC:
        data_type = _NUMERIC[dtype]
        first = {"name": "bytes"} if dtype.itemsize == 1 else {"name": "bytes", "configuration": {"endian": "little"}}
    else:
        raise TypeError(f"zarr_direct does not write {dtype} arrays")
    doc = {
        "shape": [int(s) for s in shape],
        "data_type": data_type,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [int(c) for c in chunks]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": separator}},
        "fill_value": _fill_json(fill_value, dtype),
        "codecs": [first, dict(ZSTD, configuration=dict(ZSTD["configuration"]))],
        "attributes": dict(attributes or {}),
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }
    if dimension_names is not None:
        doc["dimension_names"] = list(dimension_names)
        # zarr-python's key order: dimension_names after attributes
        doc = {k: doc[k] for k in ("shape", "data_type", "chunk_grid", "chunk_key_encoding", "fill_value", "codecs",
                                   "attributes", "dimension_names", "zarr_format", "node_type",
                                   "storage_transformers")}
    return doc


def write_group(path, attributes: dict, create: bool = False) -> dict:
    """Write the zarr.json of a group at ``path`` holding ``attributes`` (no consolidated
    metadata): what ``zarr.open_group(path, mode="w-", zarr_format=3, attributes=...)`` writes,
    and what an attribute update there rewrites, as one file replaced atomically. ``create``: the
    group must not exist yet (FileExistsError). Returns the document."""
    path = Path(path)
    if create:
        path.mkdir(parents=True, exist_ok=True)
        if (path / "zarr.json").exists():
            raise FileExistsError(f"{path} already holds a Zarr node")
    doc = {"attributes": attributes, "zarr_format": 3, "node_type": "group"}
    _put(path / "zarr.json", json.dumps(doc, indent=2).encode())
    return doc


def write_group_metadata(path, attributes: dict) -> dict:
    """Rewrite the zarr.json of the group at ``path`` with ``attributes`` and the consolidated
    metadata of every array directly in it: what setting the attributes and then
    ``zarr.consolidate_metadata`` write for a flat group, as one file replaced atomically (so
    the attributes and the consolidated view can never disagree). Returns the document."""
    path = Path(path)
    members = {}
    for child in sorted(path.iterdir(), key=lambda c: c.name):
        f = child / "zarr.json"
        if not (child.is_dir() and f.is_file()):
            continue
        meta = json.loads(f.read_bytes())
        if meta.get("node_type") != "array":
            raise ValueError(f"{child} is not an array: only flat groups are consolidated here")
        members[child.name] = meta
    doc = {"attributes": attributes, "zarr_format": 3,
           "consolidated_metadata": {"kind": "inline", "must_understand": False, "metadata": members},
           "node_type": "group"}
    _put(path / "zarr.json", json.dumps(doc, indent=2).encode())
    return doc


def _put(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _only_fill(block: np.ndarray, fill) -> bool:
    if block.dtype.kind == "f" and isinstance(fill, float) and math.isnan(fill):
        return bool(np.isnan(block).all())
    return bool((block == fill).all())


def _encode(block: np.ndarray) -> bytes:
    if _is_string(block.dtype):
        raw = _codec("vlen-utf8").encode(np.asarray(block, dtype=object).reshape(-1))
    else:
        raw = np.ascontiguousarray(block, dtype=block.dtype.newbyteorder("<")).tobytes()
    return bytes(_codec("zstd").encode(raw))


def write_array(path, data: np.ndarray, chunks, fill_value, dimension_names=None, attributes=None,
                separator: str = ".") -> dict:
    """Create the array at ``path`` (a folder that must not hold an array yet) with ``data`` as
    its whole content; returns its metadata. ``chunks`` may be larger than ``data`` along any
    axis: edge chunks are padded with the fill value, as the format prescribes."""
    path = Path(path)
    data = np.asarray(data)
    shape, chunks = data.shape, tuple(int(c) for c in chunks)
    if len(chunks) != data.ndim or any(c < 1 for c in chunks):
        raise ValueError(f"chunks {chunks} do not fit an array of shape {shape}")
    meta = array_metadata(shape, chunks, data.dtype, fill_value, dimension_names, attributes, separator)
    path.mkdir(parents=True, exist_ok=True)
    if (path / "zarr.json").exists():
        raise FileExistsError(f"{path} already holds an array")
    fill = "" if _is_string(data.dtype) else fill_value
    grid = [math.ceil(s / c) for s, c in zip(shape, chunks)]
    for idx in itertools.product(*(range(g) for g in grid)):
        sel = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, shape))
        block = data[sel]
        if _only_fill(block, fill):
            continue
        if block.shape != chunks:
            full = np.full(chunks, fill, dtype=data.dtype)
            full[tuple(slice(0, n) for n in block.shape)] = block
            block = full
        key = "c" + "".join(f"{separator}{i}" for i in idx) if idx else "c"
        _put(path / key, _encode(block))
    _put(path / "zarr.json", json.dumps(meta, indent=2).encode())
    return meta
