"""capture.zarr_direct writes the files zarr-python writes, and zarr-python and xarray read them back."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from capture import zarr_direct

zarr = pytest.importorskip("zarr")

SEP = {"name": "default", "separator": "."}


def _zarr_python(path, data, chunks, fill, dims, attrs):
    g = zarr.open_group(str(path), mode="a", zarr_format=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # string dtypes are not in the v3 core spec
        kw = {} if fill is None else {"fill_value": fill}
        g.create_array("a", data=data, chunks=chunks, chunk_key_encoding=SEP, dimension_names=dims,
                       attributes=attrs, **kw)
    return path / "a"


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _cases():
    rng = np.random.default_rng(7)
    f32 = rng.standard_normal((5, 3, 2, 4, 6)).astype("float32")
    f32[1, 2] = np.nan  # NaN inside a written chunk
    maps = np.full((5, 4, 2, 3, 3), np.nan, "float32")
    maps[:, :2] = rng.random((5, 2, 2, 3, 3), dtype=np.float32)  # the chunk of layers 2-3 is all NaN
    strings = np.array(["down_blocks.0.attn1", "mid", "up_blocks.1.temporal_transformer", "é"],
                       dtype=np.dtypes.StringDType())
    return {
        "float32 stats, one padded step chunk": (f32, (64, 3, 2, 4, 6), np.nan, ["step", "layer", "branch", "part", "head"],
                                                 {"coordinates": "timestep layer_name"}),
        "float32 maps, chunks over steps and layers, an all-NaN chunk": (maps, (2, 2, 2, 3, 3), np.nan,
                                                                         ["step", "layer", "branch", "query", "key"], {}),
        "float64 timesteps": (rng.random(5) * 1000, (64,), np.nan, ["step"], {}),
        "int32 steps, fill -1": (np.arange(5, dtype="int32") * 3, (64,), -1, ["step"], {}),
        "int32 layer coordinate": (rng.integers(0, 4096, 21).astype("int32"), (21,), None, ["layer"], {}),
        "int8 all zero (no chunk written)": (np.zeros((5, 3, 2), "int8"), (64, 3, 2), 0, ["step", "layer", "branch"], {}),
        "int8 with ones": ((rng.random((5, 3, 2)) > 0.5).astype("int8"), (64, 3, 2), 0, ["step", "layer", "branch"], {}),
        "strings": (strings, (4,), None, ["layer"], {}),
        "uint8 video frames": (rng.integers(0, 256, (2, 4, 4, 3)).astype("uint8"), (2, 4, 4, 3), None,
                               ["frame", "y", "x", "c"], {}),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_same_files_as_zarr_python_and_reads_back(tmp_path, case):
    data, chunks, fill, dims, attrs = _cases()[case]
    ref = _zarr_python(tmp_path / "ref.zarr", data, chunks, fill, dims, attrs)
    ref_meta = json.loads((ref / "zarr.json").read_bytes())
    zfill = {"NaN": np.nan}.get(ref_meta["fill_value"], ref_meta["fill_value"])  # zarr's default when None
    got_dir = tmp_path / "got.zarr"
    zarr.open_group(str(got_dir), mode="a", zarr_format=3)
    meta = zarr_direct.write_array(got_dir / "a", data, chunks, zfill, dims, attrs)
    got = got_dir / "a"
    assert json.loads((got / "zarr.json").read_bytes()) == ref_meta == meta
    ref_files, got_files = _files(ref), _files(got)
    assert sorted(got_files) == sorted(ref_files)  # same chunk keys, the fill-only chunks skipped alike
    for name in ref_files:
        if name != "zarr.json":
            assert got_files[name] == ref_files[name], name  # byte for byte
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = zarr.open_array(str(got), mode="r")[...]
    if data.dtype.kind == "f":
        np.testing.assert_array_equal(back, data)  # NaN where NaN
    else:
        assert back.tolist() == data.tolist()


def test_refuses_an_existing_array_and_unknown_dtypes(tmp_path):
    zarr_direct.write_array(tmp_path / "a", np.arange(3, dtype="int32"), (3,), 0, ["x"])
    with pytest.raises(FileExistsError):
        zarr_direct.write_array(tmp_path / "a", np.arange(3, dtype="int32"), (3,), 0, ["x"])
    with pytest.raises(TypeError):
        zarr_direct.write_array(tmp_path / "b", np.zeros(3, "complex64"), (3,), 0, ["x"])
    with pytest.raises(ValueError):
        zarr_direct.write_array(tmp_path / "c", np.zeros((3, 2), "float32"), (3,), 0, ["x", "y"])
    assert not list(tmp_path.glob("**/*.partial"))


def test_xarray_reads_a_group_of_direct_arrays(tmp_path):
    xr = pytest.importorskip("xarray")
    g = tmp_path / "g.zarr"
    zarr.open_group(str(g), mode="w-", zarr_format=3, attributes={"run_id": "r"})
    rng = np.random.default_rng(1)
    ent = rng.random((3, 2), dtype=np.float32)
    zarr_direct.write_array(g / "entropy", ent, (64, 2), np.nan, ["step", "layer"], {"coordinates": "layer_name"})
    zarr_direct.write_array(g / "layer_name", np.array(["a", "b"], dtype=np.dtypes.StringDType()), (2,), "", ["layer"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xr.open_zarr(str(g), consolidated=False, zarr_format=3, chunks=None)
        np.testing.assert_array_equal(ds["entropy"].values, ent)
        assert ds["entropy"].dims == ("step", "layer")
        assert list(ds["layer_name"].values) == ["a", "b"]


def test_group_files_are_zarr_pythons(tmp_path):
    """write_group writes the zarr.json zarr-python writes for a new group and for an attribute
    update, refuses an existing node when creating, and zarr-python opens and grows it."""
    attrs = {"run_id": "r", "prompt": "é \"quoted\"", "capture": {"maps": True, "grid": [8, 8]}, "seed": None,
             "guidance": float("nan"), "limits": [float("inf"), -float("inf")]}
    zarr.open_group(str(tmp_path / "ref.zarr"), mode="w-", zarr_format=3, attributes=attrs)
    zarr_direct.write_group(tmp_path / "got.zarr", attrs, create=True)
    assert (tmp_path / "got.zarr/zarr.json").read_bytes() == (tmp_path / "ref.zarr/zarr.json").read_bytes()
    with pytest.raises(FileExistsError):
        zarr_direct.write_group(tmp_path / "got.zarr", attrs, create=True)
    zarr.open_group(str(tmp_path / "ref.zarr"), mode="r+").attrs.update({"status": "failed", "seed": 3})
    zarr_direct.write_group(tmp_path / "got.zarr", {**attrs, "status": "failed", "seed": 3})
    assert (tmp_path / "got.zarr/zarr.json").read_bytes() == (tmp_path / "ref.zarr/zarr.json").read_bytes()
    g = zarr.open_group(str(tmp_path / "got.zarr"), mode="r+", use_consolidated=False)
    g.create_array("x", data=np.arange(4, dtype="int32"), chunks=(2,))
    assert g.attrs["status"] == "failed" and list(g["x"][:]) == [0, 1, 2, 3]
    assert not list(tmp_path.glob("**/*.partial"))
