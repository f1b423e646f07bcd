"""Exact attention-map statistics from q and k, computed in query chunks.

Owns the numerical kernel: row entropy of ``A = softmax(q kᵀ · scale + mask)``, the number of
allowed keys per row, key-pooled rows of ``A`` (for downsampled maps) and renormalized block
("part") statistics. The full ``Nq × Nk`` matrix never exists: only ``chunk_rows × Nk`` at a time.
Pure torch; knows nothing about models, layers or stores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import logging
import threading
import time

import torch

from . import maps_kernel

log = logging.getLogger(__name__)

# Bytes of one float32 score chunk. Measured on a 2-core CPU (benchmarks/bench_stats.py): 2-4 MiB
# keeps the chunk in cache between the passes (matmul, max, exp, sums); larger chunks are slower.
# A GPU wants large chunks instead: few kernel launches, full occupancy.
CPU_CHUNK_BYTES = 4 * 2**20
CUDA_CHUNK_BYTES = 256 * 2**20
DEFAULT_CHUNK_BYTES = None  # = by device, see default_chunk_bytes


@dataclass(frozen=True)
class Part:
    """A block of each query row: key j belongs to row r's block iff key_group[j] == query_group[r].

    Rows whose query_group is -1 and keys whose key_group is -1 are outside every block.
    """

    name: str
    query_group: torch.Tensor  # (Nq,) long
    key_group: torch.Tensor  # (Nk,) long


@dataclass
class RowStats:
    """Per-row results; shapes use Nr = number of rows computed (all, or the sampled subset)."""

    entropy: torch.Tensor  # (B, H, Nr) nats; NaN for rows with no allowed key
    n_keys: torch.Tensor  # (B, H|1, Nr) allowed keys per row (float)
    lse: torch.Tensor | None = None  # (B, H, Nr) log-normalizer of each row (logsumexp of logits)
    n_keys_all: float | None = None  # every row allows all keys (no mask): their number; else None
    key_pooled: torch.Tensor | None = None  # (B, H|1, Nr, Gk): A summed over each key cell
    parts: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    # parts[name] = {"entropy": (B,H,Nr), "n_keys": (B,H|1,Nr), "mass": (B,H,Nr),
    #                "out_sq": (B,H,Nr) squared norm of the renormalized block output}


def default_chunk_bytes(device) -> int:
    return CUDA_CHUNK_BYTES if torch.device(device).type == "cuda" else CPU_CHUNK_BYTES


def chunk_rows_for(batch_heads: int, n_keys: int, budget: int | None = None, device="cpu") -> int:
    """Rows per chunk so that one float32 score chunk stays within ``budget`` bytes."""
    budget = budget or default_chunk_bytes(device)
    return max(1, budget // max(1, 4 * batch_heads * n_keys))


# An additive mask value at or below this is padding, not a preference: models write padding as a
# large finite bias (LTX: -10000) instead of -inf; such a key's weight is below e^-1000 of the
# row's largest, i.e. exactly 0 in every float dtype, so it does not count as an allowed key.
MASKED_BIAS = -1e3


def allowed_keys(add_mask: torch.Tensor) -> torch.Tensor:
    """Which keys an additive mask allows (bool, same shape)."""
    return torch.isfinite(add_mask) & (add_mask > MASKED_BIAS)


def _as_additive(mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.bool:
        out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        return out.masked_fill_(~mask, float("-inf"))
    return mask.float()


def _entropy_from_logits(s: torch.Tensor, has_inf: bool, p_out: torch.Tensor | None = None):
    """In place on s (B,H,c,Nk) = logits. Returns (e, Z, entropy (B,H,c), lse (B,H,c)).

    e = exp(s − rowmax) is unnormalized (p = e / Z); written into ``p_out`` when given, so the
    caller can reuse one buffer across chunks (fresh allocations per chunk cost more than the math).
    H = ln Z − Σ e·(s − rowmax) / Z. Fully masked rows give NaN entropy. s is left holding
    e·(s − rowmax): the product is taken in place, not in a fresh (B,H,c,Nk) tensor.
    """
    m = s.amax(dim=-1, keepdim=True)  # (B,H,c,1)
    if has_inf:
        finite = torch.isfinite(m)
        m = torch.where(finite, m, torch.zeros_like(m))
    s.sub_(m)
    e = torch.exp(s, out=p_out) if p_out is not None else torch.exp(s)
    if has_inf:
        s.clamp_min_(-1e30)  # masked keys: e = 0 there, and 0 · (−1e30) = 0 instead of NaN
    z = e.sum(dim=-1)
    log_z = torch.log(z)
    ent = log_z - s.mul_(e).sum(dim=-1) / z  # = vecdot(e, s), which would allocate the product
    lse = log_z + m.squeeze(-1)
    if has_inf:
        bad = ~finite.squeeze(-1)
        ent = ent.masked_fill(bad, float("nan"))
        lse = lse.masked_fill(bad, float("-inf"))
    return e, z, ent.clamp_min_(0.0), lse


def _pool_keys(p: torch.Tensor, key_cells: torch.Tensor, n_cells: int, grid) -> torch.Tensor:
    """Sum p (B,H,c,Nk) over the keys of each cell -> (B,H,c,Gk)."""
    if grid is not None:
        # Regular layout: keys are (frames, h, w) row-major after `offset` leading tokens, and
        # cell = frame * gy * gx + (y block) * gx + (x block).
        f, h, w, gy, gx, offset = grid
        B, H, c, _ = p.shape
        by, bx = h // gy, w // gx
        v = p[..., offset : offset + f * h * w]
        if by == bx == 1:  # one key per cell (temporal layers' frames, grids no larger than the map's)
            return v
        if v.is_contiguous():  # sum pooling of each (h, w) frame: half the time of the strided sums
            cells = torch.nn.functional.avg_pool2d(v.reshape(-1, 1, h, w), (by, bx), divisor_override=1)
            return cells.reshape(B, H, c, f * gy * gx)
        # text tokens around the frames: sum each cell's columns, then its rows
        return v.reshape(B, H, c, f, gy, by, gx, bx).sum(-1).sum(-2).reshape(B, H, c, f * gy * gx)
    out = p.new_zeros(p.shape[:-1] + (n_cells + 1,))
    idx = torch.where(key_cells < 0, n_cells, key_cells).to(p.device)
    out.index_add_(-1, idx, p)
    return out[..., :n_cells]


_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
# CPU, maps: "auto" takes the "lse" path up to this head size from this many keys (see row_stats)
LSE_MAPS_MAX_DIM = 32
LSE_MAPS_MIN_KEYS = 512


def _fused(q, k, scale, add_mask, nkeys, onehot):
    """Row entropy (and key-pooled rows) from one fused attention call, no score matrix at all.

    With p = softmax(s), s_j = scale q·k_j (+ 0/−inf mask): H = lse − Σ_j p_j s_j
    = lse − scale · q · (A K). The CPU flash kernel returns lse and A·V for V = [K | one-hot key
    cells], which gives A·K and the pooled rows A·onehot at once. q and k are zero-padded to the
    value width (the kernel wants equal head sizes); zeros leave every logit unchanged.
    """
    B, H, Nr, D = q.shape
    Nk = k.shape[-2]
    cols = [k]
    if onehot is not None:
        cols.append(onehot.expand(B, H, Nk, onehot.shape[-1]))
    v = torch.cat(cols, dim=-1) if len(cols) > 1 else k
    pad = v.shape[-1] - D
    qp = torch.nn.functional.pad(q, (0, pad)) if pad else q
    kp = torch.nn.functional.pad(k, (0, pad)) if pad else k
    out, lse = _lse_attention(qp, kp, v, add_mask, scale)
    ent = torch.sub(lse, torch.linalg.vecdot(q, out[..., :D]), alpha=scale).clamp_min_(0.0)
    if add_mask is not None:  # the kernel returns lse = 0 for rows without an allowed key
        none = nkeys.expand_as(ent) == 0
        ent = ent.masked_fill(none, float("nan"))
        lse = lse.masked_fill(none, float("-inf"))
    pooled = out[..., D:].mean(dim=1, keepdim=True) if onehot is not None else None
    return RowStats(entropy=ent, n_keys=nkeys, lse=lse, key_pooled=pooled,
                    n_keys_all=None if add_mask is not None else float(Nk))


def _lse_attention(q, k, v, add_mask, scale):
    """(A·V, log-sum-exp of each row) from one fused attention kernel: the CPU flash kernel, or on
    CUDA the memory-efficient kernel (which pads lse to a multiple of 32 rows: cut here)."""
    if q.device.type == "cuda":
        out, lse = _EFFICIENT(q, k, v, None, True, 0.0, False, scale=scale)[:2]
        return out, lse[..., : q.shape[-2]]
    return _FLASH_CPU(q, k, v, 0.0, False, attn_mask=add_mask, scale=scale)


_EFFICIENT = getattr(torch.ops.aten, "_scaled_dot_product_efficient_attention", None)
# CUDA: whether the fused path agreed with the chunked one on this device (checked once per
# process and device on a small random problem before it is used; see _cuda_fused_ok)
_CUDA_CHECKED: dict[str, bool] = {}


def _cuda_fused_ok(device) -> bool:
    """The fused path on CUDA is used only after it matched the chunked kernel on this device
    (entropy within 1e-3 nats on random q, k): a kernel that misbehaves on some GPU or torch build
    costs speed, never correctness."""
    key = str(device)
    if key not in _CUDA_CHECKED:
        ok = False
        try:
            g = torch.Generator(device=device).manual_seed(0)
            q, k = (torch.randn(2, 3, 80, 40, device=device, generator=g) for _ in range(2))
            nk = torch.full((2, 1, 80), 80.0, device=device)
            fused = _fused(q, k, 40 ** -0.5, None, nk, None).entropy
            ref = row_stats(q, k, scale=40 ** -0.5, method="chunked").entropy
            ok = bool((fused - ref).abs().max() < 1e-3)
            if not ok:
                log.warning("the fused statistics kernel disagrees with the chunked one on %s; using the chunked one",
                            key)
        except Exception as e:  # noqa: BLE001 - no such kernel here: the chunked path serves
            log.info("no fused statistics kernel on %s (%s); using the chunked one", key, e)
        _CUDA_CHECKED[key] = ok
    return _CUDA_CHECKED[key]


def _fused_applies(q, add_mask, parts, want_pool, map_heads_mean) -> bool:
    """Whether the fused path can compute this problem (CPU: 0/−inf masks, head-averaged maps;
    CUDA: statistics only, no mask, after the device's self-check; never parts)."""
    if parts:
        return False
    if q.device.type == "cuda":
        return _EFFICIENT is not None and add_mask is None and not want_pool and _cuda_fused_ok(q.device)
    if _FLASH_CPU is None or q.device.type != "cpu":
        return False
    if add_mask is not None and bool(((add_mask != 0) & torch.isfinite(add_mask)).any()):
        return False  # finite non-zero mask values would add a Σ p·mask term; the chunked kernel has it
    return not want_pool or map_heads_mean


def _lse_applies(q, add_mask, parts, key_cells, map_heads_mean) -> bool:
    """Whether method "lse" can compute this problem (the fused call for entropy and lse, then one
    pass of exp(s − lse) for the maps): head-averaged maps pooled by key_cells, no mask, no parts,
    and a fused kernel here (on CUDA, after the device's self-check)."""
    return (key_cells is not None and add_mask is None and not parts and map_heads_mean
            and _fused_applies(q, None, (), False, True))


def _onehot_cells(key_cells, n_cells, dtype):
    idx = torch.where(key_cells < 0, n_cells, key_cells)
    return torch.nn.functional.one_hot(idx, n_cells + 1)[:, :n_cells].to(dtype)


_SCRATCH = threading.local()


def _scratch(n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float32 score buffers of at least n elements, kept between calls (per thread and
    device). A fresh multi-MB buffer per call comes back from the allocator as new pages, and
    faulting them in cost more than the arithmetic on small layers (the demo's 64-token spatial
    layers: 8 ms per call instead of 1.5 ms). CUDA's caching allocator reuses blocks itself, and
    holding its larger chunks would take GPU memory from the model, so there it allocates."""
    def pair():
        return tuple(torch.empty(n, dtype=torch.float32, device=device) for _ in range(2))

    if torch.device(device).type != "cpu":
        return pair()
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    got = bufs.get(str(device))
    if got is None or got[0].numel() < n:
        got = bufs[str(device)] = pair()
    return got


def row_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    scale: float,
    mask: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    chunk_rows: int | None = None,
    rows: torch.Tensor | None = None,
    key_cells: torch.Tensor | None = None,
    n_key_cells: int = 0,
    key_grid: tuple | None = None,
    map_heads_mean: bool = True,
    parts: tuple[Part, ...] = (),
    method: str = "auto",
) -> RowStats:
    """Exact row statistics of ``softmax(q kᵀ·scale + mask)``.

    q: (B, H, Nq, D); k: (B, H, Nk, D); v: (B, H, Nk, Dv), needed only for part energies.
    mask: bool (True = allowed) or additive float, broadcastable to (B, H, Nq, Nk).
    rows: optional (Nr,) long subset of query rows (sampled mode).
    key_cells: (Nk,) long cell index per key (-1 = not pooled) to return key-pooled rows;
    key_grid: (frames, h, w, gy, gx, token_offset) fast path for the regular layout where
    key_cells[j] = frame * gy * gx + cell of (y, x) for the video keys after token_offset.
    method: "fused" (one fused attention call, see _fused; CPU with masks of 0/−inf only, or CUDA
    without mask or maps once the device passed a self-check; no parts), "lse" (pooled maps: the
    fused call for entropy and lse, then the maps from exp(s − lse), see pooled_rows; no mask, no
    parts, head-averaged maps),
    "chunked" (explicit scores, chunk by chunk; every case) or "auto" (fused where it applies and
    is faster, measured in benchmarks/bench_stats.py).
    """
    B, H, Nq, D = q.shape
    Nk = k.shape[-2]
    if rows is not None:
        q = q[:, :, rows]
    Nr = q.shape[-2]
    if chunk_rows is None:
        chunk_rows = chunk_rows_for(B * H, Nk, device=q.device)
    want_pool = key_cells is not None or key_grid is not None
    pool_h = 1 if map_heads_mean else H

    add_mask = None
    if mask is not None:
        add_mask = _as_additive(mask)
        while add_mask.dim() < 4:
            add_mask = add_mask.unsqueeze(0)

    nk_h = H if (add_mask is not None and add_mask.shape[1] > 1) else 1
    nkeys = q.new_full((B, nk_h, Nr), float(Nk), dtype=torch.float32)
    if add_mask is not None:
        m_rows = add_mask[:, :, rows] if (rows is not None and add_mask.shape[2] > 1) else add_mask
        nkeys[:] = allowed_keys(m_rows).sum(-1).float().expand(B, nk_h, Nr)
    # With maps, "auto" takes the statistics from the fused kernel and the maps from its lse
    # (pooled_rows) on CUDA, and on CPU for large layers of small heads (LSE_MAPS_*), where that
    # is faster than the chunked kernel ("lse+maps" against "exact+maps" in
    # benchmarks/bench_stats.py: 77 against 85 ms at 1024 keys, head size 16; even at 256 keys
    # and at head size 40). On fewer keys the flash call's own overhead makes it slower (0.66
    # against 0.36 ms on the demo's 8-key temporal calls), at head size 64 too.
    lse = method == "lse" or (method == "auto" and want_pool and (
        q.device.type == "cuda" or (q.shape[-1] <= LSE_MAPS_MAX_DIM and Nk >= LSE_MAPS_MIN_KEYS)))
    if lse and not _lse_applies(q, add_mask, parts, key_cells, map_heads_mean):
        if method == "lse":
            raise ValueError("the lse path needs pooled maps by key_cells, head-averaged, no mask and no parts")
        lse = False
    if lse:
        rs = _fused(q.float(), k.float(), scale, None, nkeys, None)
        rs.key_pooled = pooled_rows(q, k, scale=scale, lse=rs.lse, key_cells=key_cells, n_key_cells=n_key_cells,
                                    key_grid=key_grid)
        return rs
    # "auto" takes the fused path wherever it applies, except with pooled maps: there the one-hot
    # key cells widen every head to head_dim + cells columns (the demo's 4-wide heads become 68),
    # measured slower than the chunked kernel at every size tried, from 64 to 4096 tokens
    # (benchmarks/bench_stats.py, "exact+maps" against "fused+maps"). Whether it applies is
    # checked once: with a mask that check reads the whole mask.
    fused = method == "fused" or (method == "auto" and not want_pool)
    if fused and not _fused_applies(q, add_mask, parts, want_pool, map_heads_mean):
        if method == "fused":
            raise ValueError("the fused statistics path does not apply here (needs CPU, or CUDA without mask or maps; "
                             "no parts; 0/-inf masks)")
        fused = False
    if fused:
        if want_pool and key_cells is None:
            raise ValueError("the fused path pools by key_cells")
        m_rows = None
        if add_mask is not None:
            m_rows = (add_mask[:, :, rows] if (rows is not None and add_mask.shape[2] > 1) else add_mask)
            m_rows = m_rows.expand(B, H, Nr, Nk)
        onehot = _onehot_cells(key_cells, n_key_cells, torch.float32) if want_pool else None
        return _fused(q.float(), k.float(), scale, m_rows, nkeys, onehot)

    kt = k.float().transpose(-1, -2).contiguous()  # (B,H,D,Nk)
    # one chunk (most calls of small layers): its results are the outputs, not copied into them
    single = chunk_rows >= Nr
    ent = None if single else q.new_empty((B, H, Nr), dtype=torch.float32)
    lse_all = None if single else q.new_empty((B, H, Nr), dtype=torch.float32)
    pooled = q.new_zeros((B, pool_h, Nr, n_key_cells), dtype=torch.float32) if want_pool and not single else None
    part_out = {
        pt.name: {
            "entropy": q.new_empty((B, H, Nr), dtype=torch.float32),
            "n_keys": q.new_empty((B, 1, Nr), dtype=torch.float32),
            "mass": q.new_empty((B, H, Nr), dtype=torch.float32),
            "out_sq": q.new_empty((B, H, Nr), dtype=torch.float32),
        }
        for pt in parts
    }
    row_ids = rows if rows is not None else torch.arange(Nq, device=q.device)

    # fold the scale into q once (one pass over (Nr, D) instead of (Nr, Nk)), into (B,H,Nr,D) memory:
    # the chunks' matmuls read a strided q (diffusers' (B,N,H,D) memory) through a copy each
    qs = torch.mul(q.float(), scale, out=q.new_empty((B, H, Nr, D), dtype=torch.float32))
    n_buf = B * H * min(chunk_rows, Nr) * Nk
    s_buf, e_buf = _scratch(n_buf, q.device)
    has_inf = add_mask is not None
    for start in range(0, Nr, chunk_rows):
        stop = min(Nr, start + chunk_rows)
        c = stop - start
        rid = row_ids[start:stop]
        s = torch.matmul(qs[:, :, start:stop], kt, out=s_buf[: B * H * c * Nk].view(B, H, c, Nk))
        m_chunk = None
        if add_mask is not None:
            m_chunk = add_mask[:, :, rid] if add_mask.shape[2] > 1 else add_mask
            s.add_(m_chunk)
        raw = s.clone() if parts else None
        e, z, ent_c, lse = _entropy_from_logits(s, has_inf, e_buf[: B * H * c * Nk].view(B, H, c, Nk))
        if single:
            ent, lse_all = ent_c, lse
        else:
            ent[:, :, start:stop] = ent_c
            lse_all[:, :, start:stop] = lse
        if want_pool:
            if map_heads_mean:
                # normalize in place, average the heads, then pool 1/H of the data (measured
                # 3x faster than pooling every head); the mean is a new tensor, not the scratch e
                pm = e.div_(z.unsqueeze(-1)).mean(dim=1, keepdim=True)
                pooled_c = _pool_keys(pm, key_cells, n_key_cells, key_grid)
            else:
                pooled_c = _pool_keys(e, key_cells, n_key_cells, key_grid) / z.unsqueeze(-1)
            if single:
                pooled = pooled_c
            else:
                pooled[:, :, start:stop] = pooled_c
        for pt in parts:
            qg = pt.query_group.to(q.device)[rid][:, None]
            inside = (pt.key_group.to(q.device)[None, :] == qg) & (qg >= 0)  # (c, Nk)
            sb = raw.masked_fill(~inside, float("-inf"))
            eb, zb, ent_b, lse_b = _entropy_from_logits(sb, True)
            po = part_out[pt.name]
            po["entropy"][:, :, start:stop] = ent_b
            if m_chunk is not None:
                n_in = (inside & allowed_keys(m_chunk)).sum(-1).float().amax(dim=(0, 1))
            else:
                n_in = inside.sum(-1).float()
            po["n_keys"][:, :, start:stop] = n_in
            po["mass"][:, :, start:stop] = torch.exp(lse_b - lse).nan_to_num_(0.0)
            if v is not None:
                ob = (eb / zb.unsqueeze(-1)).nan_to_num_(0.0) @ v.float()  # (B,H,c,Dv)
                po["out_sq"][:, :, start:stop] = ob.pow(2).sum(-1)
            else:
                po["out_sq"][:, :, start:stop] = float("nan")
    return RowStats(entropy=ent, n_keys=nkeys, lse=lse_all, key_pooled=pooled, parts=part_out,
                    n_keys_all=None if add_mask is not None else float(Nk))


def batch_row_stats_(q: torch.Tensor, k: torch.Tensor, *, scale: float, key_cells: torch.Tensor | None = None,
                     n_key_cells: int = 0, key_grid: tuple | None = None, chunk_bytes: int | None = None):
    """Row entropy, lse and (with key cells) head-averaged key-pooled rows of many small
    unmasked problems stacked in the batch dim, chunked over batch items; ``q`` is scaled in
    place, so it must be the caller's own copy (capture.deferred's batch buffers).

    The arithmetic of :func:`row_stats`'s explicit-score kernel without its per-call
    allocations (the scaled q, a contiguous kᵀ, the entropy's product): on small problems those
    cost more than the math. q: (B,H,Nq,D); k: (B,H,Nk,D). Returns (entropy (B,H,Nq),
    lse (B,H,Nq), pooled (B,1,Nq,Gk) or None)."""
    B, H, Nq, _ = q.shape
    Nk = k.shape[-2]
    want_pool = key_cells is not None or key_grid is not None
    qs = q.float().mul_(scale)
    kt = k.float().transpose(-1, -2)  # (B,H,D,Nk) strided: the GEMM reads it as it lies
    per = max(1, (chunk_bytes or default_chunk_bytes(q.device)) // max(1, 4 * H * Nq * Nk))
    if per >= B:  # one chunk (the common case): its results are the outputs
        s_buf, e_buf = _scratch(B * H * Nq * Nk, q.device)
        s = torch.matmul(qs, kt, out=s_buf[: B * H * Nq * Nk].view(B, H, Nq, Nk))
        e, z, ent, lse = _entropy_from_logits(s, False, e_buf[: B * H * Nq * Nk].view(B, H, Nq, Nk))
        pooled = None
        if want_pool:
            pooled = _pool_keys(e.div_(z.unsqueeze(-1)).mean(dim=1, keepdim=True), key_cells, n_key_cells, key_grid)
        return ent, lse, pooled
    ent = q.new_empty((B, H, Nq), dtype=torch.float32)
    lse = q.new_empty((B, H, Nq), dtype=torch.float32)
    pooled = q.new_empty((B, 1, Nq, n_key_cells), dtype=torch.float32) if want_pool else None
    s_buf, e_buf = _scratch(per * H * Nq * Nk, q.device)
    for b0 in range(0, B, per):
        b1 = min(B, b0 + per)
        n = (b1 - b0) * H * Nq * Nk
        s = torch.matmul(qs[b0:b1], kt[b0:b1], out=s_buf[:n].view(b1 - b0, H, Nq, Nk))
        e, z, ent[b0:b1], lse[b0:b1] = _entropy_from_logits(s, False, e_buf[:n].view(b1 - b0, H, Nq, Nk))
        if want_pool:
            pm = e.div_(z.unsqueeze(-1)).mean(dim=1, keepdim=True)
            pooled[b0:b1] = _pool_keys(pm, key_cells, n_key_cells, key_grid)
    return ent, lse, pooled


LOG2E = 1.4426950408889634  # log2(e): exp(x) = 2^(x·log2 e)


# pooled_rows on CPU: score chunks of this many bytes, of at most MAPS_CHUNK_ROWS rows of as many
# batch items as fit (all heads of an item in one chunk, for the mean over heads). Measured on a
# 2-core CPU (32 items × 8 heads × 1024 tokens, head size 4, the 256×256 case's largest layer):
# 122 against 154 ms for the former chunks of 4 MiB over every item and head (4 rows each); 2 MiB
# without the row limit 135, 4 MiB 130-146; (32, 8, 256, 8) 9.6 against 11.1 ms; small layers
# the same within noise.
MAPS_CHUNK_BYTES = 2 * 2**20
MAPS_CHUNK_ROWS = 32


def pooled_rows(q: torch.Tensor, k: torch.Tensor, *, scale: float, lse: torch.Tensor, key_cells: torch.Tensor,
                n_key_cells: int, key_grid: tuple | None = None, map_heads_mean: bool = True,
                chunk_rows: int | None = None, chunk_bytes: int | None = None) -> torch.Tensor:
    """Key-pooled rows of ``A = softmax(q kᵀ·scale)`` when each row's log-sum-exp is already known
    (from the fused kernel that gave the layer's output): ``A = exp(s − lse)`` directly, without
    the row max, row sum and entropy passes of the chunked kernel. No mask.

    One matmul gives ``(s − lse)·log2 e`` (q gets a column −lse, k a row of ones) and ``exp2``
    gives A: on CPU torch's vectorized exp2 takes a quarter of exp's time, and the subtraction is
    not a pass of its own. This pass is most of what maps cost on large layers (its exp over every
    score); its error is that of float32 logits (measured ≤ 3e-7 absolute against float64).

    Chunks: ``chunk_bytes`` of scores (default MAPS_CHUNK_BYTES on CPU, by device elsewhere), of
    at most ``chunk_rows`` rows (default MAPS_CHUNK_ROWS on CPU) of as many batch items as fit.
    q: (B,H,Nr,D); k: (B,H,Nk,D); lse: (B,H,Nr). Returns (B, 1 if map_heads_mean else H, Nr, Gk)."""
    B, H, Nr, _ = q.shape
    Nk = k.shape[-2]
    cpu = q.device.type == "cpu"
    budget = max(1, (chunk_bytes or (MAPS_CHUNK_BYTES if cpu else default_chunk_bytes(q.device))) // 4)
    rows = max(1, min(Nr, budget // (H * Nk), chunk_rows or (MAPS_CHUNK_ROWS if cpu else Nr)))
    items = max(1, min(B, budget // (H * Nk * rows)))
    ka = torch.cat([k.float(), k.new_ones((B, H, Nk, 1), dtype=torch.float32)], dim=-1).transpose(-1, -2).contiguous()
    qa = torch.cat([q.float() * (scale * LOG2E), (lse * -LOG2E).unsqueeze(-1)], dim=-1)  # (B,H,Nr,D+1)
    pooled = q.new_empty((B, 1 if map_heads_mean else H, Nr, n_key_cells), dtype=torch.float32)
    compilable = maps_kernel.applies(q, Nk, map_heads_mean)
    if compilable and maps_kernel.ready() and _compiled_pool(qa, ka, pooled, key_cells, n_key_cells, key_grid):
        return pooled
    t0 = time.perf_counter()
    s_buf, _ = _scratch(items * H * rows * Nk, q.device)
    for b0 in range(0, B, items):
        b1 = min(B, b0 + items)
        for r0 in range(0, Nr, rows):
            r1 = min(Nr, r0 + rows)
            out = s_buf[: (b1 - b0) * H * (r1 - r0) * Nk].view(b1 - b0, H, r1 - r0, Nk)
            p = torch.matmul(qa[b0:b1, :, r0:r1], ka[b0:b1], out=out).exp2_()  # rows of A
            if map_heads_mean:
                p = p.mean(dim=1, keepdim=True)
            pooled[b0:b1, :, r0:r1] = _pool_keys(p, key_cells, n_key_cells, key_grid)
    if compilable:
        maps_kernel.spent(time.perf_counter() - t0)
    return pooled


def _compiled_pool(qa, ka, pooled, key_cells, n_key_cells, key_grid) -> bool:
    """pooled_rows' loop with the compiled kernel (maps_kernel): one batch item of rows_for rows at
    a time, the head-averaged rows of A pooled over the keys of each cell (in the kernel for a
    regular grid). False when the kernel is off (the caller then computes every row the eager
    way)."""
    B, _, Nr, _ = qa.shape
    Nk = ka.shape[-1]
    rows = maps_kernel.rows_for(Nr, Nk)
    for b in range(B):
        for r0 in range(0, Nr, rows):
            r1 = min(Nr, r0 + rows)
            p = maps_kernel.pooled_chunk(qa[b : b + 1, :, r0:r1], ka[b : b + 1], key_grid, rows)
            if p is None:
                return False
            if key_grid is None:
                p = _pool_keys(p.view(1, 1, r1 - r0, Nk), key_cells, n_key_cells, key_grid)
            pooled[b, 0, r0:r1] = p
    return True


def normalized(entropy: torch.Tensor, n_keys: torch.Tensor) -> torch.Tensor:
    """Row entropy / ln(allowed keys), in [0, 1]; one allowed key gives 0, none gives NaN.

    n_keys broadcasts against entropy (e.g. (B,1,R) against (B,H,R))."""
    denom = torch.log(n_keys)  # 0 for one key, -inf for none
    out = entropy / denom.clamp_min(1e-30)
    return torch.where(denom > 0, out, torch.where(n_keys > 0, 0.0, float("nan")))
