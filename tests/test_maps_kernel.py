"""The compiled maps kernel (capture.maps_kernel) behind stats.pooled_rows: its rows against an
explicit float64 softmax on random inputs (regular grids, text tokens, arbitrary cells, padded last
chunks), and the eager passes taking over when compiling fails, disagrees or is turned off."""

import logging

import pytest
import torch
import torch.nn.functional as F

from capture import maps_kernel
from capture.stats import pooled_rows


@pytest.fixture
def kernel_state(monkeypatch):
    """A fresh kernel state, compiling from the first call (compiled functions are kept: compiling
    is slow)."""
    monkeypatch.setattr(maps_kernel, "_state", maps_kernel._fresh_state(maps_kernel._state["fns"]))
    monkeypatch.setenv(maps_kernel.ENV, "1")
    return maps_kernel._state


def problem(seed, B, H, nq, D, f, h, w, gy, gx, text=0):
    g = torch.Generator().manual_seed(seed)
    nk = text + f * h * w
    q = torch.randn(B, nq, H, D, generator=g).transpose(1, 2) * 1.5  # strided, as processors give them
    k = torch.randn(B, nk, H, D, generator=g).transpose(1, 2)
    s = (q.double() @ k.double().transpose(-1, -2)) * D**-0.5
    a, lse = torch.softmax(s, -1), torch.logsumexp(s, -1)
    y = torch.arange(h).repeat_interleave(w).repeat(f)
    x = torch.arange(w).repeat(h * f)
    cells = torch.arange(f).repeat_interleave(h * w) * gy * gx + (y // (h // gy)) * gx + x // (w // gx)
    ref = (a[..., text:] @ F.one_hot(cells, f * gy * gx).double()).mean(1, keepdim=True)
    cells = torch.cat([torch.full((text,), -1), cells])
    return q, k, lse.float(), cells, ref


CASES = {  # B, H, nq, D, f, h, w, gy, gx, text
    "spatial": (2, 3, 600, 4, 1, 24, 32, 4, 8, 0),
    "text": (2, 2, 520, 8, 1, 16, 32, 4, 4, 7),
    "frames": (1, 2, 300, 16, 2, 16, 16, 2, 4, 0),
    "one key per cell": (1, 2, 300, 8, 1, 16, 32, 16, 32, 3),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("with_grid", [True, False])
def test_compiled_rows_match_explicit_pooling(case, with_grid, kernel_state, monkeypatch):
    B, H, nq, D, f, h, w, gy, gx, text = CASES[case]
    q, k, lse, cells, ref = problem(len(case), B, H, nq, D, f, h, w, gy, gx, text)
    nk = k.shape[-2]
    # chunks of 256 rows: the last one of every item is padded
    monkeypatch.setattr(maps_kernel, "ROWS_BYTES", 256 * 4 * nk)
    assert maps_kernel.applies(q, nk, True) and nq % maps_kernel.rows_for(nq, nk)
    grid = (f, h, w, gy, gx, text) if with_grid else None
    got = pooled_rows(q, k, scale=D**-0.5, lse=lse, key_cells=cells, n_key_cells=f * gy * gx, key_grid=grid)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=3e-7)
    assert kernel_state["checked"] and kernel_state["mode"] == "on"  # the compiled kernel computed them
    # the eager passes give the same rows
    kernel_state["mode"] = "off"
    eager = pooled_rows(q, k, scale=D**-0.5, lse=lse, key_cells=cells, n_key_cells=f * gy * gx, key_grid=grid)
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-7)


def test_small_or_wide_layers_and_per_head_maps_stay_eager():
    q = torch.zeros(2, 4, 10, 8)
    assert not maps_kernel.applies(q, maps_kernel.MIN_KEYS - 1, True)  # few keys: call overhead
    assert not maps_kernel.applies(q, maps_kernel.MIN_KEYS, False)  # maps per head
    assert not maps_kernel.applies(torch.zeros(2, 4, 10, maps_kernel.MAX_DIM + 1), maps_kernel.MIN_KEYS, True)
    assert not maps_kernel.applies(q, maps_kernel.MAX_K_BYTES // (4 * 9) + 1, True)  # k out of cache


def _eager_rows(seed):
    q, k, lse, cells, ref = problem(seed, 1, 2, 520, 4, 1, 16, 32, 4, 4)
    return dict(q=q, k=k, scale=4**-0.5, lse=lse, key_cells=cells, n_key_cells=16, key_grid=(1, 16, 32, 4, 4, 0)), ref


def _broken_compile(fn, **opts):
    raise RuntimeError("no C++ compiler here\nmore lines")


def _off_by_a_bit(fn, **opts):
    compiled = _REAL_COMPILE(fn, **opts)
    return lambda *a: compiled(*a) * 1.001


_REAL_COMPILE = torch.compile


@pytest.mark.parametrize("compile_, why", [(_broken_compile, "no C++ compiler here"), (_off_by_a_bit, "disagreed")])
def test_a_failing_or_disagreeing_kernel_is_turned_off_and_the_eager_passes_serve(compile_, why, kernel_state,
                                                                                  monkeypatch, caplog):
    kw, ref = _eager_rows(3)
    monkeypatch.setattr(maps_kernel, "_state", maps_kernel._fresh_state())
    monkeypatch.setattr(torch, "compile", compile_)
    with caplog.at_level(logging.WARNING, logger="capture.maps_kernel"):
        got = pooled_rows(**kw)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=3e-7)
    assert maps_kernel._state["mode"] == "off" and why in caplog.text
    assert "more lines" not in caplog.text  # one line in the log
    assert not maps_kernel.applies(kw["q"], 4096, True)


def test_by_default_it_compiles_once_the_eager_passes_took_long_enough(monkeypatch, caplog):
    """A short capture never pays for compiling; once the eager passes the kernel would replace
    have taken COMPILE_AFTER_S in the process, the next call compiles."""
    monkeypatch.setattr(maps_kernel, "_state", maps_kernel._fresh_state(maps_kernel._state["fns"]))
    monkeypatch.delenv(maps_kernel.ENV, raising=False)
    kw, ref = _eager_rows(6)
    first = pooled_rows(**kw)
    spent = maps_kernel._state["eager_s"]
    assert spent > 0 and not maps_kernel._state["checked"] and not maps_kernel.ready()
    monkeypatch.setattr(maps_kernel, "COMPILE_AFTER_S", spent * 1.5)
    pooled_rows(**kw)  # still eager: counted
    assert maps_kernel._state["eager_s"] > spent and not maps_kernel._state["checked"]
    monkeypatch.setattr(maps_kernel, "COMPILE_AFTER_S", maps_kernel._state["eager_s"])
    with caplog.at_level(logging.INFO, logger="capture.maps_kernel"):
        got = pooled_rows(**kw)
    assert maps_kernel._state["checked"] and "compiling the maps kernel" in caplog.text
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=3e-7)
    torch.testing.assert_close(got, first, rtol=1e-5, atol=1e-7)
    # a problem the kernel does not apply to is not counted
    before = maps_kernel._state["eager_s"]
    pooled_rows(**dict(kw, k=kw["k"][:, :, :64], key_cells=kw["key_cells"][:64], key_grid=None))
    assert maps_kernel._state["eager_s"] == before


def test_the_environment_variable_turns_it_off(monkeypatch):
    monkeypatch.setattr(maps_kernel, "_state", maps_kernel._fresh_state())
    monkeypatch.setenv(maps_kernel.ENV, "0")
    assert not maps_kernel.enabled()
    kw, ref = _eager_rows(5)
    torch.testing.assert_close(pooled_rows(**kw).double(), ref, rtol=1e-4, atol=3e-7)
    assert not maps_kernel._state["fns"] and not maps_kernel._state["checked"]


@pytest.mark.parametrize("value, mode, warned", [("auto", "auto", False), ("", "auto", False), ("On", "on", False),
                                                ("2", "auto", True), ("fast", "auto", True)])
def test_unrecognised_values_mean_auto_with_a_warning(monkeypatch, caplog, value, mode, warned):
    monkeypatch.setattr(maps_kernel, "_state", maps_kernel._fresh_state())
    monkeypatch.setenv(maps_kernel.ENV, value)
    with caplog.at_level(logging.WARNING, logger=maps_kernel.__name__):
        assert maps_kernel._mode() == mode
    assert (f"{maps_kernel.ENV}={value} is not one of" in caplog.text) == warned


def test_a_traced_run_stores_the_same_maps_with_the_compiled_kernel(anim_pipe, tmp_path, monkeypatch):
    """tiny-animatediff at 256x256 (1024-token spatial layers): a capture with the kernel compiled
    from the first call stores what a capture without it stores, and the video stays the model's."""
    import numpy as np

    from capture import dims
    from capture.tracer import trace

    call = dict(num_frames=2, height=256, width=256, num_inference_steps=2, output_type="np", guidance_scale=7.5)

    def gen():
        return anim_pipe("a red circle", generator=torch.Generator().manual_seed(0), **call).frames

    ref = gen()
    runs = {}
    for mode in ("1", "0"):
        monkeypatch.setattr(maps_kernel, "_state", maps_kernel._fresh_state(maps_kernel._state["fns"]))
        monkeypatch.setenv(maps_kernel.ENV, mode)
        with trace(anim_pipe, root=tmp_path / mode) as tr:
            video = gen()
        assert np.array_equal(ref, video)
        assert bool(maps_kernel._state["checked"]) == (mode == "1")  # the kernel ran (or not)
        runs[mode] = tr.dataset()
    a, b = runs["1"], runs["0"]
    assert a[dims.MAP_SPATIAL].sizes == b[dims.MAP_SPATIAL].sizes
    for name in (*dims.SCALAR_STATS, dims.MAP_SPATIAL, dims.MAP_TEMPORAL, dims.ENTROPY_MAP):
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-5, atol=1e-7, err_msg=name)
    rows = a[dims.MAP_SPATIAL].values.sum(-1)  # each stored map row still sums to 1 (or is empty)
    assert np.nanmax(np.abs(rows[rows > 0] - 1)) < 1e-5


def test_forced_sets_the_mode_for_a_block_only(monkeypatch):
    monkeypatch.setattr(maps_kernel, "_state", maps_kernel._fresh_state())
    monkeypatch.setenv(maps_kernel.ENV, "0")
    with maps_kernel.forced("on"):
        assert maps_kernel.enabled() and maps_kernel.ready()
    assert not maps_kernel.enabled()
    monkeypatch.setattr(maps_kernel, "_state", maps_kernel._fresh_state())
    monkeypatch.delenv(maps_kernel.ENV)
    with maps_kernel.forced("off"):
        assert not maps_kernel.enabled()
    assert maps_kernel.enabled() and not maps_kernel.ready()  # auto again, nothing spent yet
    with pytest.raises(ValueError):
        with maps_kernel.forced("sometimes"):
            pass
