"""The merged output + statistics kernel (capture.merged) and the maps from a known lse
(stats.pooled_rows): against an explicit softmax on random inputs, bit-identity with the model's
own SDPA call (and the fallback where it is not), and whole captures with it against without it."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from capture import dims, merged
from capture.hooks import SDPACall
from capture.stats import pooled_rows, row_stats


def explicit(q, k, v, scale):
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    a = torch.softmax(s, -1)
    ent = -(a * torch.where(a > 0, a.log(), 0.0)).sum(-1)
    return a, ent, torch.logsumexp(s, -1), a @ v.double()


def rand(seed, B, H, N, D, Dv=None, nk=None):
    g = torch.Generator().manual_seed(seed)
    # (B, N, H, D) transposed, as attention processors hand them to SDPA
    q = torch.randn(B, N, H, D, generator=g).transpose(1, 2) * 2
    k = torch.randn(B, nk or N, H, D, generator=g).transpose(1, 2)
    v = torch.randn(B, nk or N, H, Dv or D, generator=g).transpose(1, 2)
    return q, k, v


@pytest.mark.parametrize("D,Dv,nk", [(4, 4, 200), (16, 16, 130), (8, 12, 150), (40, 40, 140)])
def test_merged_attention_matches_explicit_softmax(D, Dv, nk):
    q, k, v = rand(D + nk, 2, 3, 70, D, Dv, nk)
    a, ent, lse, out = explicit(q, k, v, 0.37)
    got, rs = merged.merged_attention(q, k, v, 0.37)
    torch.testing.assert_close(got.double(), out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rs.entropy.double(), ent, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rs.lse.double(), lse, rtol=1e-5, atol=1e-5)
    assert rs.n_keys_all == nk and rs.n_keys.shape == (2, 1, 70) and (rs.n_keys == nk).all()


@pytest.mark.parametrize("heads_mean", [True, False])
@pytest.mark.parametrize("text", [0, 5])
def test_pooled_rows_from_lse_match_explicit_pooling(heads_mean, text):
    f, h, w, gy, gx = 2, 8, 12, 2, 3
    nk = text + f * h * w
    q, k, v = rand(11 + text, 2, 3, 40, 8, nk=nk)
    a, _, lse, _ = explicit(q, k, v, 0.3)
    y = torch.arange(h).repeat_interleave(w).repeat(f)
    x = torch.arange(w).repeat(h * f)
    cells = torch.arange(f).repeat_interleave(h * w) * gy * gx + (y // (h // gy)) * gx + x // (w // gx)
    ref = a[..., text:] @ F.one_hot(cells, f * gy * gx).double()  # (B,H,Nq,G)
    if heads_mean:
        ref = ref.mean(1, keepdim=True)
    cells = torch.cat([torch.full((text,), -1), cells])
    for grid in [(f, h, w, gy, gx, text), None]:
        got = pooled_rows(q, k, scale=0.3, lse=lse.float(), key_cells=cells, n_key_cells=f * gy * gx, key_grid=grid,
                          map_heads_mean=heads_mean, chunk_rows=7)
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)
    # the same rows as the chunked kernel computes them with its own normalizer
    rs = row_stats(q, k, scale=0.3, key_cells=cells, n_key_cells=f * gy * gx, map_heads_mean=heads_mean,
                   method="chunked")
    torch.testing.assert_close(got, rs.key_pooled, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("chunk_rows,chunk_bytes", [(None, None), (3, None), (None, 4 * 3 * 60), (None, 4 * 3 * 60 * 50),
                                                   (5, 4 * 3 * 60 * 10)])
def test_pooled_rows_are_the_same_in_any_chunking(chunk_rows, chunk_bytes):
    """Chunks over batch items and rows (one row of one item, several items of a few rows, all
    at once) give the rows of an explicit float64 softmax."""
    q, k, v = rand(31, 5, 3, 40, 8, nk=60)
    a, _, lse, _ = explicit(q, k, v, 0.3)
    cells = torch.arange(60) % 4
    ref = (a @ F.one_hot(cells, 4).double()).mean(1, keepdim=True)
    got = pooled_rows(q, k, scale=0.3, lse=lse.float(), key_cells=cells, n_key_cells=4, chunk_rows=chunk_rows,
                      chunk_bytes=chunk_bytes)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)


def _call(q, k, v, **kw):
    return SDPACall(F.scaled_dot_product_attention, (q, k, v), kw)


def test_first_call_is_checked_then_merged_bit_identical():
    calls = merged.MergedCalls()
    q, k, v = rand(1, 2, 4, 256, 4)
    ref = F.scaled_dot_product_attention(q, k, v)
    out, rs = calls.run(_call(q, k, v))  # checked: the model's own output comes back
    assert torch.equal(out, ref) and calls.checked == 1
    identical = calls.verdicts[merged._signature(_call(q, k, v))] is not None
    assert identical == (rs is not None)
    q2, k2, v2 = (t * 0.5 for t in rand(2, 2, 4, 256, 4))  # same signature, other values
    q2, k2, v2 = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q2, k2, v2))
    out2, rs2 = calls.run(_call(q2, k2, v2))
    ref2 = F.scaled_dot_product_attention(q2, k2, v2)
    assert calls.checked == 1  # one check per signature
    assert torch.equal(out2, ref2) and out2.stride() == ref2.stride()
    if not identical:  # a CPU whose padded kernel differs for this shape: the model's call, always
        assert calls.merged == 0 and rs2 is None
        return
    assert calls.merged == 1
    _, ent, _, _ = explicit(q2, k2, v2, 4 ** -0.5)
    torch.testing.assert_close(rs2.entropy.double(), ent, rtol=1e-5, atol=1e-5)


def test_a_signature_whose_merged_output_differs_keeps_the_models_call(monkeypatch):
    real = merged.merged_attention

    def off_by_one_ulp(q, k, v, scale):
        out, rs = real(q, k, v, scale)
        return torch.nextafter(out, torch.full_like(out, float("inf"))), rs

    monkeypatch.setattr(merged, "merged_attention", off_by_one_ulp)
    calls = merged.MergedCalls()
    q, k, v = rand(3, 1, 2, 300, 16)
    ref = F.scaled_dot_product_attention(q, k, v)
    for _ in range(3):
        out, rs = calls.run(_call(q, k, v))
        assert torch.equal(out, ref) and rs is None
    assert calls.checked == 1 and calls.merged == 0


@pytest.mark.parametrize("kw,why", [
    (dict(attn_mask=torch.ones(300, 300, dtype=torch.bool)), "mask"),
    (dict(is_causal=True), "causal"),
    (dict(dropout_p=0.1), "dropout"),
])
def test_calls_the_merged_kernel_does_not_take(kw, why):
    q, k, v = rand(4, 1, 2, 300, 16)
    assert merged.eligible(_call(q, k, v)), why
    assert not merged.eligible(_call(q, k, v, **kw)), why
    assert not merged.eligible(_call(q.double(), k.double(), v.double())), "float64"
    small = rand(4, 1, 2, merged.MIN_KEYS - 1, 16)
    assert not merged.eligible(_call(*small)), "few keys"


@pytest.mark.parametrize("maps", [False, True])
@pytest.mark.parametrize("which", ["anim", "cog"])
def test_capture_with_the_merged_kernel_equals_capture_without(which, maps, anim_pipe, cog_pipe, tmp_path, monkeypatch):
    """Every call merged (MIN_KEYS = 0): the video is bit-identical to no capture, and every stored
    statistic and map equals the two-call capture's."""
    from capture.tracer import trace

    from .conftest import ANIM_CALL, COG_CALL

    pipe, call = (anim_pipe, ANIM_CALL) if which == "anim" else (cog_pipe, COG_CALL)

    def gen():
        return pipe("a red circle", generator=torch.Generator().manual_seed(0), **call).frames

    ref = gen()
    monkeypatch.setattr(merged, "MIN_KEYS", 10**9)
    with trace(pipe, root=tmp_path / "two", maps=maps) as tr:
        two_calls = gen()
    ds_two = tr.dataset()
    monkeypatch.setattr(merged, "MIN_KEYS", 0)
    monkeypatch.setattr(merged, "MAX_HEAD_DIM", 10**9)
    monkeypatch.setattr(merged, "MAX_HEAD_DIM_MAPS", 10**9)
    monkeypatch.setattr(merged, "SHARED", merged.MergedCalls())
    with trace(pipe, root=tmp_path / "one", maps=maps) as tr:
        one_call = gen()
    ds_one = tr.dataset()
    assert np.array_equal(ref, two_calls) and np.array_equal(ref, one_call)
    assert merged.SHARED.checked > 0
    assert merged.SHARED.merged > 0 or all(v is None for v in merged.SHARED.verdicts.values())
    for name in [dims.ENTROPY, dims.ENTROPY_NORM, dims.ENERGY] + (
            [dims.MAP_SPATIAL, dims.MAP_TEMPORAL, dims.ENTROPY_MAP] if maps else []):
        if name not in ds_two:
            continue
        np.testing.assert_allclose(ds_one[name].values, ds_two[name].values, rtol=2e-5, atol=1e-6, err_msg=name)


def test_size_limits_follow_the_measured_break_even():
    q, k, v = rand(5, 1, 2, merged.MIN_KEYS, merged.MAX_HEAD_DIM)
    assert merged.eligible(_call(q, k, v)) and not merged.eligible(_call(q, k, v), maps=True)
    q, k, v = rand(5, 1, 2, merged.MIN_KEYS, merged.MAX_HEAD_DIM_MAPS)
    assert merged.eligible(_call(q, k, v), maps=True)
    q, k, v = rand(5, 1, 2, merged.MIN_KEYS, merged.MAX_HEAD_DIM + 1)
    assert not merged.eligible(_call(q, k, v))


@pytest.mark.parametrize("kind", ["I", "U"])
def test_a_perturbed_layer_records_the_statistics_an_unperturbed_run_records(kind, anim_pipe, tmp_path, monkeypatch):
    """Where the merged kernel serves a layer, a perturbation of that layer must not switch its
    statistics to the two-call path: its recorded (original-map) statistics are bit-identical to
    the unperturbed run's. The merged statistics carry a marker (+0.5) here, so a layer whose
    statistics came from the other path shows up whatever the CPU's rounding does."""
    from capture.tracer import trace

    from .conftest import ANIM_CALL

    real = merged.merged_attention

    def marked(q, k, v, scale):
        out, rs = real(q, k, v, scale)
        return out, dataclasses.replace(rs, entropy=rs.entropy + 0.5)

    monkeypatch.setattr(merged, "merged_attention", marked)
    monkeypatch.setattr(merged, "MIN_KEYS", 0)
    monkeypatch.setattr(merged, "MAX_HEAD_DIM", 10**9)
    monkeypatch.setattr(merged, "MAX_HEAD_DIM_MAPS", 10**9)
    monkeypatch.setattr(merged, "SHARED", merged.MergedCalls())

    def gen():
        return anim_pipe("a red circle", generator=torch.Generator().manual_seed(0), **ANIM_CALL).frames

    with trace(anim_pipe, root=tmp_path, maps=False) as base:
        ref = gen()
    assert merged.SHARED.merged > 0, "the merged kernel served no call (no signature matched bit for bit)"
    b = base.dataset()
    names = b[dims.LAYER_NAME].values.tolist()
    served = {n for n in names if "attn1" in n}
    target = sorted(served)[0]
    with trace(anim_pipe, root=tmp_path, maps=False, perturb=[f"{kind}@{target}:steps=1-1"]) as tr:
        out = gen()
    assert not np.array_equal(ref, out)
    ds = tr.dataset()
    li = names.index(target)
    assert ds[dims.PERTURBED].values[1, li].all()
    np.testing.assert_array_equal(ds[dims.ENTROPY].isel(step=1, layer=li).values,
                                  b[dims.ENTROPY].isel(step=1, layer=li).values)


def test_a_verdict_holds_only_for_the_sdpa_backends_it_was_checked_with():
    """Under sdpa_kernel(MATH) the model's call is the math kernel's: a verdict checked with every
    backend enabled must not let the merged kernel stand in for it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    calls = merged.MergedCalls()
    q, k, v = rand(24, 1, 4, 256, 4)
    calls.run(_call(q, k, v))
    calls.run(_call(q, k, v))
    with sdpa_kernel(SDPBackend.MATH):
        ref = F.scaled_dot_product_attention(q, k, v)
        for _ in range(2):
            out, _ = calls.run(_call(q, k, v))
            assert torch.equal(out, ref)
    assert calls.checked == 2
