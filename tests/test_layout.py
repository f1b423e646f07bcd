"""Per-layer reductions (scalars and pooled maps) against explicit attention matrices."""

import math

import pytest
import torch
import torch.nn.functional as F

from capture import dims
from capture.layout import PART_INDEX, Accumulator, accumulate, make_layout
from capture.models.families import Geometry


def explicit(q, k, scale=None):
    scale = scale or q.shape[-1] ** -0.5
    a = torch.softmax((q.double() @ k.double().transpose(-1, -2)) * scale, -1)
    h = -(a * a.clamp_min(1e-300).log()).sum(-1)
    return a, h


def run(kind, B, H, N, geo, grid, seed=0, n_videos=1, D=6, rows=None):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, N, D, generator=g) * 1.5 for _ in range(3))
    out = F.scaled_dot_product_attention(q, k, v)
    lay = make_layout(kind, B, N, N, geo, n_videos, grid)
    acc = Accumulator(lay, H, q.device)
    accumulate(acc, q, k, v, None, D**-0.5, out, maps=True, rows=rows, chunk_bytes=512, n_videos=n_videos)
    return lay, acc.result(), (q, k, v, out)


def test_spatial_layer_scalars_and_maps():
    # 2 branches x 2 frames folded into the batch, 4x4 token grid, pooled onto 2x2 cells
    geo = Geometry(batch=2, frames=2, height=4, width=4)
    lay, res, (q, k, v, out) = run("spatial", B=4, H=3, N=16, geo=geo, grid=2)
    assert (lay.n_branch, lay.per_branch, lay.th, lay.tw, lay.cells) == (2, 2, 4, 4, 4)
    a, h = explicit(q, k)
    y, x = torch.arange(16) // 4, torch.arange(16) % 4
    cell = (y // 2) * 2 + x // 2
    i_all = PART_INDEX["all"]
    for b in range(2):
        items = slice(2 * b, 2 * b + 2)
        torch.testing.assert_close(res[dims.ENTROPY][b, i_all].double(), h[items].mean(dim=(0, 2)), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(res[dims.ENTROPY_NORM][b, i_all].double(), h[items].mean(dim=(0, 2)) / math.log(16),
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(res[dims.ENERGY][b, i_all].double(), out[items].double().pow(2).sum(dim=(0, 2, 3)),
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(res[dims.VALUE_ENERGY][b, i_all].double(), v[items].double().pow(2).sum(dim=(0, 2, 3)),
                                   rtol=1e-4, atol=1e-4)
        am = a[items].mean(1)  # head-averaged, (2 frames, 16, 16)
        pooled_k = torch.stack([am[..., cell == c].sum(-1) for c in range(4)], -1)  # (2, 16, 4)
        ref = torch.stack([pooled_k[:, cell == c].mean(dim=(0, 1)) for c in range(4)])  # (4, 4)
        torch.testing.assert_close(res[dims.MAP_SPATIAL][b].double(), ref, rtol=1e-4, atol=1e-6)
        hm = h[items].mean(1)  # (2 frames, 16)
        for f in range(2):
            ref_e = torch.stack([hm[f, cell == c].mean() for c in range(4)])
            torch.testing.assert_close(res[dims.ENTROPY_MAP][b, f].double(), ref_e, rtol=1e-4, atol=1e-5)
    assert torch.allclose(res[dims.MAP_SPATIAL].sum(-1), torch.ones(2, 4))
    assert torch.isnan(res[dims.ENTROPY][:, PART_INDEX["spatial"]]).all()


def test_temporal_layer_maps():
    # 2 branches x (2x2 positions) in the batch, 3 frames as tokens
    geo = Geometry(batch=2, frames=3, height=2, width=2)
    lay, res, (q, k, v, out) = run("temporal", B=8, H=2, N=3, geo=geo, grid=8, seed=1)
    assert (lay.th, lay.tw, lay.cells, lay.frames) == (2, 2, 4, 3)
    a, h = explicit(q, k)
    for b in range(2):
        items = slice(4 * b, 4 * b + 4)
        torch.testing.assert_close(res[dims.MAP_TEMPORAL][b].double(), a[items].mean(dim=(0, 1)), rtol=1e-4, atol=1e-6)
        hm = h[items].mean(1)  # (4 positions, 3 frames)
        torch.testing.assert_close(res[dims.ENTROPY_MAP][b].double(), hm.T, rtol=1e-4, atol=1e-5)
    assert torch.isnan(res[dims.MAP_SPATIAL]).all()


def test_joint_layer_parts_and_maps():
    # 2 branches, 2 text tokens + 2 latent frames x (4x4 latent / patch 2 = 2x2 tokens)
    geo = Geometry(batch=2, frames=2, height=4, width=4, patch=2)
    T, N = 2, 2 + 8
    lay, res, (q, k, v, out) = run("joint", B=2, H=2, N=N, geo=geo, grid=8, seed=2)
    assert (lay.text, lay.frames, lay.th, lay.tw) == (T, 2, 2, 2)
    a, h = explicit(q, k)
    for b in range(2):
        torch.testing.assert_close(res[dims.ENTROPY][b, PART_INDEX["all"]].double(), h[b, :, T:].mean(-1), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(res[dims.ENTROPY][b, PART_INDEX["text"]].double(), h[b, :, :T].mean(-1), rtol=1e-4, atol=1e-5)
        av = a[b].mean(0)[T:, T:]  # head-averaged video->video block (8, 8)
        av = av / av.sum(-1, keepdim=True)
        frame, pos = torch.arange(8) // 4, torch.arange(8) % 4
        ks = torch.stack([av[:, pos == c].sum(-1) for c in range(4)], -1)  # (8, 4): summed over key frames
        ref_s = torch.stack([ks[pos == c].mean(0) for c in range(4)])
        torch.testing.assert_close(res[dims.MAP_SPATIAL][b].double(), ref_s, rtol=1e-4, atol=1e-6)
        kt = torch.stack([av[:, frame == f].sum(-1) for f in range(2)], -1)  # (8, 2)
        ref_t = torch.stack([kt[frame == f].mean(0) for f in range(2)])
        torch.testing.assert_close(res[dims.MAP_TEMPORAL][b].double(), ref_t, rtol=1e-4, atol=1e-6)
        # spatial part: renormalized over own-frame video keys
        sc = (q[b].double() @ k[b].double().transpose(-1, -2)) * 6**-0.5
        hs = []
        for r in range(T, N):
            f = (r - T) // 4
            blk = torch.softmax(sc[:, r, T + 4 * f: T + 4 * f + 4], -1)
            hs.append(-(blk * blk.log()).sum(-1))
        torch.testing.assert_close(res[dims.ENTROPY][b, PART_INDEX["spatial"]].double(), torch.stack(hs, -1).mean(-1),
                                   rtol=1e-4, atol=1e-5)
        # temporal part: renormalized over the keys at the query's position in every frame;
        # mass: the share of the full row inside the part; energy: sum of the part outputs' norms
        full = torch.softmax(sc, -1)
        vb = v[b].double()
        for part, keys_of in (("spatial", lambda f, p: [T + 4 * f + j for j in range(4)]),
                              ("temporal", lambda f, p: [T + 4 * g + p for g in range(2)])):
            hs, ms, es = [], [], []
            for r in range(T, N):
                f, p = (r - T) // 4, (r - T) % 4
                keys = keys_of(f, p)
                blk = torch.softmax(sc[:, r, keys], -1)
                hs.append(-(blk * blk.log()).sum(-1))
                ms.append(full[:, r, keys].sum(-1))
                es.append((blk.unsqueeze(-2) @ vb[:, keys]).squeeze(-2).pow(2).sum(-1))
            i = PART_INDEX[part]
            torch.testing.assert_close(res[dims.ENTROPY][b, i].double(), torch.stack(hs, -1).mean(-1), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(res[dims.MASS][b, i].double(), torch.stack(ms, -1).mean(-1), rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(res[dims.ENERGY][b, i].double(), torch.stack(es, -1).sum(-1), rtol=1e-4, atol=1e-4)


def test_joint_parts_fast_path_equals_generic_path():
    geo = Geometry(batch=2, frames=3, height=4, width=4, patch=2)
    N = 4 + 12
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(2, 2, N, 6, generator=g) for _ in range(3))
    out = F.scaled_dot_product_attention(q, k, v)
    results = []
    for mask in (None, torch.ones(1, 1, N, N, dtype=torch.bool)):  # a mask forces the generic path
        lay = make_layout("joint", 2, N, N, geo, 1, 8)
        acc = Accumulator(lay, 2, q.device)
        accumulate(acc, q, k, v, mask, 6**-0.5, out, maps=True, chunk_bytes=300)
        results.append(acc.result())
    for key in (dims.ENTROPY, dims.ENTROPY_NORM, dims.ENERGY, dims.MASS, dims.MAP_SPATIAL, dims.MAP_TEMPORAL):
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-4, atol=1e-5, equal_nan=True)


def test_energy_is_per_video():
    geo = Geometry(batch=4, frames=1, height=2, width=2)  # 2 branches x 2 videos
    _, res2, (q, k, v, out) = run("spatial", B=4, H=1, N=4, geo=geo, grid=2, n_videos=2, seed=3)
    per_video = out[:2].double().pow(2).sum(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(res2[dims.ENERGY][0, 0, 0].double(), per_video, rtol=1e-4, atol=1e-5)


def test_sampled_rows_restrict_maps_and_entropy():
    geo = Geometry(batch=1, frames=1, height=4, width=4)
    rows = torch.tensor([0, 5, 10, 15])
    _, res, (q, k, v, out) = run("spatial", B=1, H=2, N=16, geo=geo, grid=4, rows=rows, seed=4)
    _, h = explicit(q, k)
    torch.testing.assert_close(res[dims.ENTROPY][0, 0].double(), h[0][:, rows].mean(-1), rtol=1e-4, atol=1e-5)
    # energy stays exact (all rows)
    torch.testing.assert_close(res[dims.ENERGY][0, 0].double(), out[0].double().pow(2).sum(dim=(1, 2)), rtol=1e-4, atol=1e-4)


def test_bad_geometry_is_an_error():
    with pytest.raises(ValueError, match="tokens"):
        make_layout("spatial", 2, 15, 15, Geometry(batch=2, frames=1, height=4, width=4), 1, 8)


def test_results_of_many_layers_at_once_equal_each_layers_own():
    """layout.results pads layers of different heads and branches into one block and slices them back."""
    from capture.layout import results

    spatial = Geometry(batch=2, frames=2, height=4, width=4)
    accs = []
    for kind, B, H, N, geo, seed in (("spatial", 4, 3, 16, spatial, 1), ("temporal", 32, 5, 2, spatial, 2),
                                     ("spatial", 2, 2, 16, Geometry(batch=1, frames=2, height=4, width=4), 3)):
        g = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(B, H, N, 4, generator=g) for _ in range(3))
        lay = make_layout(kind, B, N, N, geo, 1, 2)
        acc = Accumulator(lay, H, q.device)
        accumulate(acc, q, k, v, None, 0.5, F.scaled_dot_product_attention(q, k, v, scale=0.5), maps=True)
        accs.append(acc)
    got = results([accs[0], None, accs[1], accs[2]])
    assert got[1] is None
    assert [got[i][dims.ENTROPY].shape for i in (0, 2, 3)] == [(2, len(dims.PARTS), 3), (2, len(dims.PARTS), 5),
                                                               (1, len(dims.PARTS), 2)]
    for acc, res in zip(accs, (got[0], got[2], got[3])):
        alone = acc.result()
        assert set(res) == set(alone)
        for name, want in alone.items():
            torch.testing.assert_close(torch.from_numpy(res[name]), want, rtol=0, atol=0, equal_nan=True, msg=name)
        assert not torch.isnan(alone[dims.ENTROPY][:, PART_INDEX["all"]]).any()  # the layer recorded something


@pytest.mark.parametrize("memory", ["contiguous", "heads_inner", "strided", "half"])
@pytest.mark.parametrize("shape", [(8, 3, 5, 4), (6, 2, 16, 8)])
def test_squared_sums_per_group_and_head_in_every_memory_layout(memory, shape):
    # Σ over a group's items, rows and dims of x², against float64, whatever the strides the model
    # hands over: (B,H,N,D) contiguous, the (B,N,H,D) memory of diffusers' processors, a slice
    from capture.layout import sq_sums

    B, H, N, D = shape
    g = torch.Generator().manual_seed(3)
    if memory == "heads_inner":
        x = torch.randn(B, N, H, D, generator=g).transpose(1, 2)
    elif memory == "strided":
        x = torch.randn(B, H, N + 3, D + 2, generator=g)[:, :, 2 : N + 2, 1 : D + 1]
    else:
        x = torch.randn(B, H, N, D, generator=g)
    if memory == "half":
        x = x.half()
    for groups in (1, 2):
        want = x.double().pow(2).reshape(groups, B // groups, H, N * D).sum(dim=(1, 3))
        got = sq_sums(x, groups)
        assert got.dtype == torch.float32 and got.shape == (groups, H)
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("via", ["device", "host"])
def test_widened_accumulator_equals_one_laid_out_for_both_branches(via):
    """A run that learns at a step's second call that the first was the cond branch of two
    (capture.tracer's two-pass inference): the widened accumulator, after the uncond call, holds
    exactly what an accumulator made for two branches from the start holds after both calls."""
    from dataclasses import replace

    from capture import deferred

    geo = Geometry(batch=1, frames=2, height=4, width=4)  # one video per call: one call per branch
    g = torch.Generator().manual_seed(7)
    calls = []
    for _ in range(2):
        q, k, v = (torch.randn(2, 3, 16, 4, generator=g) * 1.5 for _ in range(3))
        calls.append((q, k, v, F.scaled_dot_product_attention(q, k, v, scale=0.5)))

    def add(acc, lay, call):
        q, k, v, out = call
        if via == "host":  # the deferred path: sums arrive as host arrays at the step's end
            d = deferred.DeferredStats()
            d.add(acc, lay, q, k, v, out, 0.5, 1, True)
            d.flush()
        else:
            accumulate(acc, q, k, v, None, 0.5, out, maps=True, lay=lay)

    one = make_layout("spatial", 2, 16, 16, geo, 1, 2)
    assert one.n_branch == 1
    acc = Accumulator(one, 3, torch.device("cpu"))
    add(acc, one, calls[0])  # taken for the only branch
    acc.widen(replace(one, n_branch=2, branch_base=1), at=1)
    add(acc, make_layout("spatial", 2, 16, 16, geo, 1, 2, total_branches=2, branch_base=0), calls[1])

    both = Accumulator(make_layout("spatial", 2, 16, 16, geo, 1, 2, total_branches=2, branch_base=1), 3,
                       torch.device("cpu"))
    for base, call in ((1, calls[0]), (0, calls[1])):
        add(both, make_layout("spatial", 2, 16, 16, geo, 1, 2, total_branches=2, branch_base=base), call)
    got, want = acc.result(), both.result()
    assert set(got) == set(want) and acc.videos == both.videos == [1.0, 1.0]
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, equal_nan=True, msg=name)
    a, h = explicit(calls[0][0], calls[0][1], 0.5)  # the first call's own numbers sit in branch 1 (cond)
    torch.testing.assert_close(got[dims.ENTROPY][1, PART_INDEX["all"]].double(), h.mean(dim=(0, 2)), rtol=1e-5,
                               atol=1e-6)
