"""The statistics kernel against an explicit softmax on random inputs."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from capture import stats
from capture.stats import Part, normalized, row_stats


def explicit(q, k, scale, mask=None):
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    if mask is not None:
        if mask.dtype == torch.bool:
            s = s.masked_fill(~mask, float("-inf"))
        else:
            s = s + mask.double()
    a = torch.softmax(s, dim=-1)
    logs = torch.where(a > 0, torch.log(a), torch.zeros_like(a))
    return a, -(a * logs).sum(-1)


def rand_qk(seed, B, H, Nq, Nk, D):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Nq, D, generator=g) * 2
    k = torch.randn(B, H, Nk, D, generator=g)
    v = torch.randn(B, H, Nk, D + 3, generator=g)
    return q, k, v


METHODS = ["chunked", "fused"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
@pytest.mark.parametrize("nq,nk", [(12, 12), (9, 20), (20, 5)])
def test_entropy_matches_explicit_softmax(chunk, nq, nk, method):
    q, k, _ = rand_qk(chunk * 100 + nq, 2, 3, nq, nk, 8)
    scale = 8**-0.5
    _, h_ref = explicit(q, k, scale)
    rs = row_stats(q, k, scale=scale, chunk_rows=chunk, method=method)
    torch.testing.assert_close(rs.entropy.double(), h_ref, rtol=1e-4, atol=1e-5)
    assert (rs.n_keys == nk).all()
    assert (rs.entropy >= 0).all() and (rs.entropy <= math.log(nk) + 1e-5).all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("chunk", [2, 5, 100])
def test_bool_and_additive_masks(chunk, method):
    q, k, _ = rand_qk(7, 2, 2, 10, 14, 4)
    g = torch.Generator().manual_seed(3)
    bmask = torch.rand(2, 1, 10, 14, generator=g) > 0.4
    bmask[..., 0] = True  # every row keeps at least one key
    _, h_ref = explicit(q, k, 0.5, bmask)
    rs = row_stats(q, k, scale=0.5, mask=bmask, chunk_rows=chunk, method=method)
    torch.testing.assert_close(rs.entropy.double(), h_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rs.n_keys, bmask.sum(-1).float().expand(2, 1, 10))
    # additive float mask with finite penalties and -inf: only the chunked kernel has the Σ p·mask
    # term; "auto" must route there, an explicit "fused" must refuse
    amask = torch.randn(1, 2, 1, 14, generator=g)
    amask[..., 3] = float("-inf")
    _, h_ref = explicit(q, k, 0.5, amask)
    if method == "fused":
        with pytest.raises(ValueError, match="does not apply"):
            row_stats(q, k, scale=0.5, mask=amask, chunk_rows=chunk, method="fused")
    rs = row_stats(q, k, scale=0.5, mask=amask, chunk_rows=chunk)
    torch.testing.assert_close(rs.entropy.double(), h_ref, rtol=1e-4, atol=1e-5)
    assert (rs.n_keys == 13).all()


@pytest.mark.parametrize("method", METHODS)
def test_fully_masked_row_is_nan_not_zero(method):
    q, k, _ = rand_qk(1, 1, 1, 3, 4, 4)
    mask = torch.ones(1, 1, 3, 4, dtype=torch.bool)
    mask[0, 0, 1] = False
    rs = row_stats(q, k, scale=1.0, mask=mask, method=method)
    assert torch.isnan(rs.entropy[0, 0, 1])
    assert torch.isfinite(rs.entropy[0, 0, [0, 2]]).all()


@settings(max_examples=40, deadline=None)
@given(
    nq=st.integers(1, 17),
    nk=st.integers(1, 17),
    chunk=st.integers(1, 20),
    seed=st.integers(0, 10_000),
    temp=st.floats(0.05, 20.0),
    method=st.sampled_from(METHODS),
)
def test_property_entropy_bounds_and_reference(nq, nk, chunk, seed, temp, method):
    q, k, _ = rand_qk(seed, 1, 2, nq, nk, 5)
    _, h_ref = explicit(q, k, temp)
    rs = row_stats(q, k, scale=temp, chunk_rows=chunk, method=method)
    torch.testing.assert_close(rs.entropy.double(), h_ref, rtol=1e-3, atol=1e-4)
    hn = normalized(rs.entropy, rs.n_keys)
    assert (hn >= 0).all() and (hn <= 1 + 1e-5).all()


@pytest.mark.parametrize("method", METHODS)
def test_identity_and_uniform_limits(method):
    # Identity-like map: huge self-similarity -> H ~ 0; uniform: all logits equal -> H = ln N.
    n = 16
    q = torch.eye(n)[None, None] * 200.0
    rs = row_stats(q, torch.eye(n)[None, None], scale=1.0, method=method)
    assert normalized(rs.entropy, rs.n_keys).max() < 1e-5
    rs = row_stats(torch.randn(1, 1, n, 4), torch.zeros(1, 1, n, 4), scale=1.0, method=method)
    torch.testing.assert_close(normalized(rs.entropy, rs.n_keys), torch.ones(1, 1, n))


# the fused path pools head-averaged maps only (capture's only use)
@pytest.mark.parametrize("method,heads_mean", [("chunked", True), ("chunked", False), ("fused", True), ("lse", True)])
@pytest.mark.parametrize("use_grid,text", [(True, 0), (False, 0), (True, 3), (False, 3)])
def test_key_pooling_matches_explicit(heads_mean, use_grid, text, method):
    # keys laid out as 2 frames of a 4x6 token grid, pooled onto 2x3 cells per frame, after
    # `text` leading tokens that belong to no cell (a joint layer's text)
    f, h, w, gy, gx = 2, 4, 6, 2, 3
    nk = text + f * h * w
    q, k, _ = rand_qk(5, 2, 3, 10, nk, 8)
    a, _ = explicit(q, k, 0.3)
    y = torch.arange(h).repeat_interleave(w).repeat(f)
    x = torch.arange(w).repeat(h * f)
    frame = torch.arange(f).repeat_interleave(h * w)
    cells = frame * gy * gx + (y // (h // gy)) * gx + x // (w // gx)
    onehot = torch.nn.functional.one_hot(cells, f * gy * gx).double()
    ref = a[..., text:] @ onehot  # (B,H,Nq,G)
    cells = torch.cat([torch.full((text,), -1), cells])
    if heads_mean:
        ref = ref.mean(1, keepdim=True)
    grid = (f, h, w, gy, gx, text) if use_grid else None
    rs = row_stats(
        q, k, scale=0.3, chunk_rows=3, key_cells=cells, n_key_cells=f * gy * gx, key_grid=grid,
        map_heads_mean=heads_mean, method=method,
    )
    torch.testing.assert_close(rs.key_pooled.double(), ref, rtol=1e-4, atol=1e-6)
    if not text:
        torch.testing.assert_close(rs.key_pooled.sum(-1), torch.ones_like(rs.key_pooled.sum(-1)))


@pytest.mark.parametrize("heads_mean", [True, False])
@pytest.mark.parametrize("grid", [None, (2, 2, 2, 2, 2, 0), (2, 2, 2, 1, 1, 0)])
def test_single_chunk_results_are_not_the_reused_score_buffers(grid, heads_mean):
    """A call computed in one chunk hands over its own result tensors, which later calls of the
    same shape (reusing the kernel's score buffers) leave untouched; they match explicit softmax."""
    q, k, _ = rand_qk(21, 2, 3, 6, 8, 4)
    frame = torch.arange(2).repeat_interleave(4)
    cells = frame * 4 + torch.arange(4).repeat(2) if grid is None or grid[3] == 2 else frame
    n_cells = 8 if grid is None or grid[3] == 2 else 2
    kw = dict(scale=0.7, key_cells=cells, n_key_cells=n_cells, key_grid=grid, map_heads_mean=heads_mean,
              chunk_rows=64, method="chunked")
    first = row_stats(q, k, **kw)
    kept = {n: getattr(first, n).clone() for n in ("entropy", "lse", "key_pooled")}
    q2, k2, _ = rand_qk(22, 2, 3, 6, 8, 4)
    row_stats(q2, k2, **kw)
    for n, t in kept.items():
        assert torch.equal(getattr(first, n), t), n
    a, h = explicit(q, k, 0.7)
    ref = torch.zeros(2, 3, 6, n_cells, dtype=torch.float64).index_add_(-1, cells, a)
    torch.testing.assert_close(first.key_pooled.double(), ref.mean(1, keepdim=True) if heads_mean else ref,
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(first.entropy.double(), h, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS + ["lse"])
def test_excluded_keys_are_not_pooled(method):
    q, k, _ = rand_qk(9, 1, 2, 5, 8, 4)
    a, _ = explicit(q, k, 1.0)
    cells = torch.tensor([-1, -1, 0, 0, 1, 1, 2, 2])
    rs = row_stats(q, k, scale=1.0, key_cells=cells, n_key_cells=3, chunk_rows=2, method=method)
    ref = torch.stack([a[..., 2:4].sum(-1), a[..., 4:6].sum(-1), a[..., 6:8].sum(-1)], -1).mean(1, keepdim=True)
    torch.testing.assert_close(rs.key_pooled.double(), ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_sampled_rows_equal_the_same_rows_of_exact(method):
    q, k, _ = rand_qk(11, 2, 2, 30, 25, 6)
    rows = torch.tensor([0, 4, 9, 29])
    full = row_stats(q, k, scale=0.4, method="chunked")
    sub = row_stats(q, k, scale=0.4, rows=rows, chunk_rows=3, method=method)
    torch.testing.assert_close(sub.entropy, full.entropy[:, :, rows])


@pytest.mark.parametrize("chunk", [1, 4, 50])
def test_parts_are_renormalized_blocks(chunk):
    # 3 text tokens + 2 frames x 2x2 tokens; parts: own frame (spatial), same position (temporal)
    T, F, P = 3, 2, 4
    n = T + F * P
    q, k, v = rand_qk(13, 2, 2, n, n, 6)
    a_scores = (q.double() @ k.double().transpose(-1, -2)) * 0.7
    frame = torch.tensor([-1] * T + [0] * P + [1] * P)
    pos = torch.tensor([-1] * T + list(range(P)) * F)
    parts = (Part("spatial", frame, frame), Part("temporal", pos, pos))
    rs = row_stats(q, k, scale=0.7, v=v, chunk_rows=chunk, parts=parts)
    a_full = torch.softmax(a_scores, -1)
    for pt, groups in zip(parts, (frame, pos)):
        inside = (groups[None, :] == groups[:, None]) & (groups[:, None] >= 0)
        for r in range(T, n):
            sel = inside[r]
            ab = torch.softmax(a_scores[:, :, r, sel], -1)
            h = -(ab * ab.log()).sum(-1)
            got = rs.parts[pt.name]
            torch.testing.assert_close(got["entropy"][:, :, r].double(), h, rtol=1e-4, atol=1e-5)
            assert got["n_keys"][0, 0, r] == sel.sum()
            torch.testing.assert_close(got["mass"][:, :, r].double(), a_full[:, :, r, sel].sum(-1), rtol=1e-4, atol=1e-6)
            out = (ab.unsqueeze(-2) @ v[:, :, sel].double()).squeeze(-2)
            torch.testing.assert_close(got["out_sq"][:, :, r].double(), out.pow(2).sum(-1), rtol=1e-4, atol=1e-5)
        # text rows belong to no block
        assert torch.isnan(rs.parts[pt.name]["entropy"][:, :, :T]).all()




@pytest.mark.parametrize("method", METHODS)
def test_lse_is_the_row_log_normalizer(method):
    q, k, _ = rand_qk(31, 2, 2, 9, 11, 5)
    rs = row_stats(q, k, scale=0.6, method=method)
    ref = torch.logsumexp((q.double() @ k.double().transpose(-1, -2)) * 0.6, -1)
    torch.testing.assert_close(rs.lse.double(), ref, rtol=1e-5, atol=1e-5)


def test_lse_maps_path_gives_every_statistic_and_refuses_what_it_cannot_do():
    # maps from the fused call's lse: entropy, lse and pooled rows as the chunked kernel gives them
    q, k, _ = rand_qk(33, 2, 3, 12, 16, 4)
    a, h = explicit(q, k, 0.5)
    cells = torch.arange(16) // 4
    rs = row_stats(q, k, scale=0.5, key_cells=cells, n_key_cells=4, chunk_rows=5, method="lse")
    torch.testing.assert_close(rs.entropy.double(), h, rtol=1e-4, atol=1e-5)
    ref = torch.stack([a[..., 4 * c:4 * c + 4].sum(-1) for c in range(4)], -1).mean(1, keepdim=True)
    torch.testing.assert_close(rs.key_pooled.double(), ref, rtol=1e-4, atol=1e-6)
    assert rs.n_keys_all == 16.0
    rows = torch.tensor([1, 7, 11])
    sub = row_stats(q, k, scale=0.5, key_cells=cells, n_key_cells=4, rows=rows, method="lse")
    torch.testing.assert_close(sub.key_pooled.double(), ref[:, :, rows], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="lse path"):
        row_stats(q, k, scale=0.5, method="lse")  # no maps to pool
    with pytest.raises(ValueError, match="lse path"):
        row_stats(q, k, scale=0.5, key_cells=cells, n_key_cells=4, mask=torch.ones(12, 16, dtype=torch.bool),
                  method="lse")
    with pytest.raises(ValueError, match="lse path"):
        row_stats(q, k, scale=0.5, key_cells=cells, n_key_cells=4, map_heads_mean=False, method="lse")


@pytest.mark.parametrize("nk, dim, path", [(stats.LSE_MAPS_MIN_KEYS, 8, "lse"), (64, 8, "chunked"),
                                            (stats.LSE_MAPS_MIN_KEYS, 64, "chunked")])
def test_cpu_maps_path_by_size_and_both_match_explicit_pooling(nk, dim, path):
    """On CPU "auto" takes the maps from the fused call's lse on many keys and small heads, else
    from the chunked kernel: either way the pooled rows are those of an explicit softmax."""
    g = torch.Generator().manual_seed(nk + dim)
    q = torch.randn(2, 3, 40, dim, generator=g) * 1.5
    k = torch.randn(2, 3, nk, dim, generator=g)
    cells = torch.arange(nk) * 7 // nk
    auto = row_stats(q, k, scale=dim ** -0.5, key_cells=cells, n_key_cells=7)
    forced = row_stats(q, k, scale=dim ** -0.5, key_cells=cells, n_key_cells=7, method=path)
    assert torch.equal(auto.key_pooled, forced.key_pooled) and torch.equal(auto.entropy, forced.entropy)
    a, h = explicit(q, k, dim ** -0.5)
    ref = torch.zeros(2, 3, 40, 7, dtype=torch.float64).index_add_(-1, cells, a).mean(1, keepdim=True)
    torch.testing.assert_close(auto.key_pooled.double(), ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(auto.entropy.double(), h, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_maps_come_from_the_fused_lse_and_match_the_chunked_kernel():
    """On CUDA, maps take the fused call's lse and one exp(s − lse) pass ("auto" picks "lse")."""
    g = torch.Generator(device="cuda").manual_seed(5)
    q, k = (torch.randn(2, 4, 300, 40, device="cuda", generator=g) for _ in range(2))
    cells = (torch.arange(300, device="cuda") // 30)
    assert stats._lse_applies(q, None, (), cells, True)
    auto = row_stats(q, k, scale=40 ** -0.5, key_cells=cells, n_key_cells=10)
    ref = row_stats(q, k, scale=40 ** -0.5, key_cells=cells, n_key_cells=10, method="chunked")
    torch.testing.assert_close(auto.entropy, ref.entropy, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(auto.key_pooled, ref.key_pooled, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fused_statistics_match_the_chunked_kernel():
    """On CUDA, statistics without maps take one memory-efficient attention call (its log-sum-exp
    is padded to 32 rows: the cut must line up) once the device passed its self-check."""
    from capture import stats

    g = torch.Generator(device="cuda").manual_seed(3)
    q, k = (torch.randn(2, 5, 77, 48, device="cuda", generator=g) for _ in range(2))
    assert stats._cuda_fused_ok(q.device)
    fused = row_stats(q, k, scale=48 ** -0.5, method="fused")
    ref = row_stats(q, k, scale=48 ** -0.5, method="chunked")
    torch.testing.assert_close(fused.entropy, ref.entropy, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused.lse, ref.lse, rtol=1e-5, atol=1e-4)


def test_fused_kernel_self_check_falls_back_when_it_disagrees(monkeypatch, caplog):
    """The device self-check behind the CUDA fused path (run here on the CPU kernels): a kernel
    whose log-sum-exp is off is not used, with a warning, and the verdict is kept per device."""
    from capture import stats

    good = stats._lse_attention
    monkeypatch.setattr(stats, "_CUDA_CHECKED", {})
    assert stats._cuda_fused_ok("cpu")
    monkeypatch.setattr(stats, "_CUDA_CHECKED", {})
    monkeypatch.setattr(stats, "_lse_attention", lambda *a: (lambda o, l: (o, l + 0.5))(*good(*a)))
    with caplog.at_level("WARNING"):
        assert not stats._cuda_fused_ok("cpu")
    assert "disagrees" in caplog.text and stats._CUDA_CHECKED == {"cpu": False}

    def broken(*a):
        raise RuntimeError("no kernel for this head size")

    monkeypatch.setattr(stats, "_CUDA_CHECKED", {})
    monkeypatch.setattr(stats, "_lse_attention", broken)
    assert not stats._cuda_fused_ok("cpu")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["chunked", "auto"])
def test_half_precision_inputs_are_computed_in_float32(dtype, method):
    # a model in half precision hands over half q and k: the logits are float32 products of those
    # values (exact in float64 below), never half-precision products
    g = torch.Generator().manual_seed(11)
    q, k = (torch.randn(2, 3, 40, 8, generator=g).to(dtype) for _ in range(2))
    q = q.transpose(1, 2).contiguous().transpose(1, 2)  # diffusers' (B,N,H,D) memory
    scale = 8**-0.5
    a = torch.softmax((q.double() @ k.double().transpose(-1, -2)) * scale, -1)
    h = -(a * a.log()).sum(-1)
    got = row_stats(q, k, scale=scale, method=method, chunk_rows=7)
    assert got.entropy.dtype == torch.float32
    torch.testing.assert_close(got.entropy.double(), h, rtol=0, atol=2e-6)
