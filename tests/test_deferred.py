"""Small calls' statistics computed together at the end of a step (capture.deferred), against
explicit float64 softmax matrices and against the per-call path they replace."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from capture import deferred, dims
from capture.layout import PART_INDEX, Accumulator, accumulate, make_layout
from capture.merged import merged_attention
from capture.models.families import Geometry
from capture.stats import batch_row_stats_, row_stats

ALL = PART_INDEX["all"]


def explicit_entropy(q, k, scale):
    a = torch.softmax((q.double() @ k.double().transpose(-1, -2)) * scale, -1)
    return a, -(a * a.clamp_min(1e-300).log()).sum(-1)  # (B,H,Nq,Nk), (B,H,Nq)


def calls(seed, n, B, H, N, D):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        q, k, v = (torch.randn(B, H, N, D, generator=g) * 1.7 for _ in range(3))
        out.append((q, k, v, F.scaled_dot_product_attention(q, k, v)))
    return out


CASES = {  # kind, geometry, B, H, N (queries = keys), D
    "spatial": ("spatial", Geometry(batch=2, frames=2, height=4, width=4), 4, 3, 16, 6),
    "temporal": ("temporal", Geometry(batch=2, frames=5, height=2, width=2), 8, 2, 5, 8),
}


@pytest.mark.parametrize("maps", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_deferred_sums_match_explicit_softmax_and_the_per_call_path(case, maps):
    kind, geo, B, H, N, D = CASES[case]
    scale = D**-0.5
    data = calls(1, 3, B, H, N, D)
    lay = make_layout(kind, B, N, N, geo, 1, 2)
    ds = deferred.DeferredStats(chunk_bytes=None)
    now, later = [], []
    for q, k, v, out in data:
        a, b = Accumulator(lay, H, q.device), Accumulator(lay, H, q.device)
        accumulate(a, q, k, v, None, scale, out, maps=maps)
        assert deferred.deferrable(lay, q, k, None, None)
        ds.add(b, lay, q, k, v, out, scale, 1, maps)
        now.append(a)
        later.append(b)
    assert ds.deferred == 3 and ds.flushes == 0
    ds.flush()
    assert ds.flushes == 1
    for (q, k, v, out), a, b in zip(data, now, later):
        ra, rb = a.result(), b.result()
        assert set(ra) == set(rb)
        for name in ra:
            torch.testing.assert_close(rb[name], ra[name], rtol=2e-6, atol=2e-6, equal_nan=True, msg=name)
        _, h = explicit_entropy(q, k, scale)  # (B,H,N)
        for br in range(2):
            items = slice(br * B // 2, (br + 1) * B // 2)
            torch.testing.assert_close(rb[dims.ENTROPY][br, ALL].double(), h[items].mean(dim=(0, 2)),
                                       rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(rb[dims.ENTROPY_NORM][br, ALL].double(), h[items].mean(dim=(0, 2)) / np.log(N),
                                       rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(rb[dims.ENERGY][br, ALL].double(), out[items].double().pow(2).sum(dim=(0, 2, 3)),
                                       rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(rb[dims.VALUE_ENERGY][br, ALL].double(),
                                       v[items].double().pow(2).sum(dim=(0, 2, 3)), rtol=1e-5, atol=1e-5)


def test_merged_calls_are_deferred_with_their_own_entropy():
    """Calls the merged kernel served bring their entropy and lse; the maps come from that lse."""
    kind, geo, B, H, N, D = CASES["spatial"]
    scale = D**-0.5
    lay = make_layout(kind, B, N, N, geo, 1, 2)
    ds = deferred.DeferredStats()
    pairs = []
    for q, k, v, _ in calls(2, 2, B, H, N, D):
        out, rs = merged_attention(q, k, v, scale)
        ref = Accumulator(lay, H, q.device)
        accumulate(ref, q, k, v, None, scale, out, maps=True)
        acc = Accumulator(lay, H, q.device)
        ds.add(acc, lay, q, k, v, out, scale, 1, True, rs)
        pairs.append((ref, acc))
    ds.flush()
    for ref, acc in pairs:
        ra, rb = ref.result(), acc.result()
        for name in ra:
            torch.testing.assert_close(rb[name], ra[name], rtol=2e-6, atol=2e-6, equal_nan=True, msg=name)


def test_what_is_recorded_does_not_change_when_the_model_reuses_its_tensors():
    """The group holds copies: a model writing into q, k, v or the output after the call (a reused
    buffer, an in-place op on the output) cannot alter the statistics computed at the step's end."""
    kind, geo, B, H, N, D = CASES["temporal"]
    scale = D**-0.5
    (q, k, v, out), = calls(3, 1, B, H, N, D)
    lay = make_layout(kind, B, N, N, geo, 1, 8)
    ref = Accumulator(lay, H, q.device)
    accumulate(ref, q, k, v, None, scale, out, maps=True)
    acc = Accumulator(lay, H, q.device)
    ds = deferred.DeferredStats()
    ds.add(acc, lay, q, k, v, out, scale, 1, True)
    for t in (q, k, v, out):
        t.mul_(-3.0).add_(1.0)
    ds.flush()
    for name, want in ref.result().items():
        torch.testing.assert_close(acc.result()[name], want, rtol=2e-6, atol=2e-6, equal_nan=True, msg=name)


def test_a_full_group_is_computed_before_the_step_ends(monkeypatch):
    kind, geo, B, H, N, D = CASES["spatial"]
    scale = D**-0.5
    data = calls(4, 5, B, H, N, D)
    one = sum(t.numel() * t.element_size() for t in data[0])
    monkeypatch.setattr(deferred, "MAX_GROUP_BYTES", 2 * one)  # two calls per computation
    lay = make_layout(kind, B, N, N, geo, 1, 2)
    ds = deferred.DeferredStats()
    accs = [Accumulator(lay, H, torch.device("cpu")) for _ in data]
    for acc, (q, k, v, out) in zip(accs, data):
        ds.add(acc, lay, q, k, v, out, scale, 1, False)
    assert ds.flushes == 2  # calls 1-2 and 3-4; call 5 waits for the flush
    ds.flush()
    assert ds.flushes == 3
    for acc, (q, k, v, out) in zip(accs, data):
        _, h = explicit_entropy(q, k, scale)
        torch.testing.assert_close(acc.result()[dims.ENTROPY][0, ALL].double(), h[: B // 2].mean(dim=(0, 2)),
                                   rtol=1e-5, atol=1e-6)


def test_discarded_calls_add_nothing():
    kind, geo, B, H, N, D = CASES["spatial"]
    lay = make_layout(kind, B, N, N, geo, 1, 2)
    ds = deferred.DeferredStats()
    acc = Accumulator(lay, H, torch.device("cpu"))
    (q, k, v, out), = calls(5, 1, B, H, N, D)
    ds.add(acc, lay, q, k, v, out, D**-0.5, 1, False)
    ds.discard()
    ds.flush()
    assert torch.isnan(acc.result()[dims.ENTROPY]).all()


def test_only_unmasked_whole_calls_of_small_size_are_deferred():
    kind, geo, B, H, N, D = CASES["spatial"]
    lay = make_layout(kind, B, N, N, geo, 1, 2)
    q = k = torch.zeros(B, H, N, D)
    assert deferred.deferrable(lay, q, k, None, None)
    assert not deferred.deferrable(lay, q, k, torch.ones(N, N, dtype=torch.bool), None), "masked"
    assert not deferred.deferrable(lay, q, k, None, torch.arange(4)), "sampled rows"
    assert not deferred.deferrable(lay, q[:1], k[:1], None, None), "not whole branches"
    big = torch.zeros(B, H, 1024, D)
    assert not deferred.deferrable(lay, big, big, None, None), "large: the arithmetic dominates there"
    joint = make_layout("joint", 2, 4 + 16, 4 + 16, Geometry(batch=2, frames=1, height=4, width=4), 1, 2)
    qj = torch.zeros(2, H, 20, D)
    assert not deferred.deferrable(joint, qj, qj, None, None), "joint layers have parts"


@pytest.mark.parametrize("chunk_bytes", [None, 700])
def test_batch_row_stats_match_explicit_softmax_and_pooling(chunk_bytes):
    """The batched kernel, in one chunk and chunked over batch items, against float64 softmax."""
    g = torch.Generator().manual_seed(6)
    B, H, N, D = 6, 2, 9, 5
    q, k = (torch.randn(B, H, N, D, generator=g) * 2 for _ in range(2))
    cells = torch.randint(0, 3, (N,), generator=g)
    a, h = explicit_entropy(q, k, 0.4)
    ent, lse, pooled = batch_row_stats_(q.clone(), k, scale=0.4, key_cells=cells, n_key_cells=3,
                                        chunk_bytes=chunk_bytes)
    torch.testing.assert_close(ent.double(), h, rtol=1e-5, atol=1e-6)
    ref_lse = torch.logsumexp((q.double() @ k.double().transpose(-1, -2)) * 0.4, -1)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=1e-6, atol=1e-6)
    ref_pool = torch.zeros(B, H, N, 3, dtype=torch.float64).index_add_(-1, cells, a).mean(1, keepdim=True)
    torch.testing.assert_close(pooled.double(), ref_pool, rtol=1e-5, atol=1e-7)
    plain = row_stats(q, k, scale=0.4, method="chunked")
    torch.testing.assert_close(ent, plain.entropy, rtol=1e-6, atol=1e-6)


def test_a_traced_run_with_deferral_stores_what_the_per_call_path_stores(anim_pipe, tmp_path, monkeypatch):
    """Same model, same seed: deferral on (the default) and off give the same stored statistics and
    maps, and the video stays bit-identical to an untraced generation."""
    from capture.tracer import trace

    from .conftest import ANIM_CALL

    def gen():
        return anim_pipe("a red circle", generator=torch.Generator().manual_seed(0), **ANIM_CALL).frames

    ref = gen()
    with trace(anim_pipe, root=tmp_path / "on") as on:
        video_on = gen()
    assert on._deferred.deferred > 0
    monkeypatch.setattr(deferred, "MAX_SCORES", 0)
    with trace(anim_pipe, root=tmp_path / "off") as off:
        video_off = gen()
    assert off._deferred.deferred == 0
    assert np.array_equal(ref, video_on) and np.array_equal(ref, video_off)
    a, b = on.dataset(), off.dataset()
    for name in (*dims.SCALAR_STATS, dims.MAP_SPATIAL, dims.MAP_TEMPORAL, dims.ENTROPY_MAP):
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("maps", [False, True])
def test_one_accumulator_fed_by_both_paths_sums_both(maps):
    """A layer whose step has a per-call (torch sums) and a deferred (host sums) call: result()
    adds the two sides, as if both calls had gone through the per-call path."""
    kind, geo, B, H, N, D = CASES["temporal"]
    scale = D**-0.5
    (c1, c2) = calls(8, 2, B, H, N, D)
    lay = make_layout(kind, B, N, N, geo, 1, 8)
    ref, both = Accumulator(lay, H, torch.device("cpu")), Accumulator(lay, H, torch.device("cpu"))
    for q, k, v, out in (c1, c2):
        accumulate(ref, q, k, v, None, scale, out, maps=maps)
    accumulate(both, *c1[:3], None, scale, c1[3], maps=maps)
    ds = deferred.DeferredStats()
    ds.add(both, lay, *c2, scale, 1, maps)
    ds.flush()
    ra, rb = ref.result(), both.result()
    assert set(ra) == set(rb)
    for name in ra:
        torch.testing.assert_close(rb[name], ra[name], rtol=2e-6, atol=2e-6, equal_nan=True, msg=name)
    _, h = explicit_entropy(torch.cat([c1[0], c2[0]]), torch.cat([c1[1], c2[1]]), scale)
    items = torch.cat([torch.arange(B // 2), B + torch.arange(B // 2)])  # branch 0 of both calls
    torch.testing.assert_close(rb[dims.ENTROPY][0, ALL].double(), h[items].mean(dim=(0, 2)), rtol=1e-5, atol=1e-6)
