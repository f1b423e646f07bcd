"""Statistics of small attention calls, computed together at the end of each step.

On a small layer the arithmetic of its statistics is a few microseconds; what a capture costs there
is the thirty-odd tensor ops per call (kernel passes, reductions, scatters), each paying torch's
dispatch. Calls of the same shape and layout (the same kind of layer in every block of a UNet
level, say) are therefore copied into one batch buffer as they happen, and their statistics come
from one kernel call and one set of reductions per group when the step ends (:meth:`flush`),
instead of one per call; each call's share reaches its accumulator as host arrays (numpy slices of
the group's results, Accumulator.add_host), so no torch op runs per call there either. The sums
each layer's accumulator receives are the same: a row's entropy depends only on its own query and
keys, which the batch does not mix.

The model's own output is never deferred (the caller takes it from the model's call); only the
copies of q, k, v and that output are kept, so a model that reuses or changes its tensors in
place after the call cannot alter what is recorded.

Only calls the accumulator adds in its uniform way are deferred (no mask, no sampled rows, whole
CFG branches in the batch, not a joint layer): see :func:`deferrable`. Pure torch on top of
:mod:`capture.layout` and :mod:`capture.stats`; knows nothing about models or stores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .layout import Accumulator, Layout, kernel_args, map_plan, sq_sums
from .stats import RowStats, batch_row_stats_, pooled_rows

# A call is deferred when its score matrix has at most this many entries (B·H·Nq·Nk): there the
# per-op dispatch, not the arithmetic, is what the statistics cost (benchmarks/bench_overhead.py).
MAX_SCORES = 2**20
# Copies held per group before it is computed early (the step has not ended yet): bounds the
# memory of the buffers whatever the model.
MAX_GROUP_BYTES = 64 * 2**20


def deferrable(lay: Layout, q: torch.Tensor, k: torch.Tensor, mask, rows) -> bool:
    """Whether the call's statistics can wait for the step's batched computation."""
    B, H, Nq, _ = q.shape
    per = lay.per_branch
    return (mask is None and rows is None and lay.kind != "joint" and lay.item_video is None
            and B >= per and B % per == 0 and B * H * Nq * k.shape[-2] <= MAX_SCORES)


def _layout_key(lay: Layout) -> tuple:
    """What decides a call's kernel arguments and scatter indices (equal for equal layouts)."""
    got = lay.cache.get("group_key")
    if got is None:
        got = lay.cache["group_key"] = (lay.kind, lay.n_branch, lay.per_branch, lay.frames, lay.th, lay.tw, lay.gy,
                                        lay.gx, lay.tokens3d, lay.branch_base, lay.per_position)
    return got


@dataclass
class _Group:
    """Calls of one shape and layout within a step: their copies side by side in the batch dim."""

    lay: Layout  # the first call's layout (every call of the group has an equal one)
    scale: float
    maps: bool
    merged: bool  # calls came with their entropy and lse (capture.merged): no kernel call at flush
    batch: int  # B, the batch items of each call
    accs: list = field(default_factory=list)  # (accumulator, videos of the call) per call
    bufs: dict = field(default_factory=dict)  # name -> (capacity·B, ...) buffer
    rs: list = field(default_factory=list)  # merged: (entropy, lse) per call
    n: int = 0
    nbytes: int = 0  # bytes of one call's copies

    def slot(self, name: str, t: torch.Tensor) -> None:
        """Copy t (B, ...) into call n's slice of buffer ``name``, growing it as needed."""
        B = t.shape[0]
        buf = self.bufs.get(name)
        if buf is None or buf.shape[0] < (self.n + 1) * B:
            cap = max(4, 2 * (self.n + 1))
            new = t.new_empty((cap * B,) + tuple(t.shape[1:]))
            if buf is not None:
                new[: self.n * B].copy_(buf[: self.n * B])
            buf = self.bufs[name] = new
        buf[self.n * B:(self.n + 1) * B].copy_(t)


class DeferredStats:
    """Groups of deferred calls; :meth:`flush` adds every group's statistics to its accumulators."""

    def __init__(self, chunk_bytes: int | None = None):
        self.chunk_bytes = chunk_bytes  # score chunk budget of the kernel calls (None: by device)
        self.groups: dict[tuple, _Group] = {}
        self.deferred = 0  # calls deferred so far (for tests and logs)
        self.flushes = 0  # group computations

    def add(self, acc: Accumulator, lay: Layout, q, k, v, out, scale: float, n_videos: int, maps: bool,
            rs: RowStats | None = None) -> None:
        """Defer one call: q (B,H,Nq,D), k (B,H,Nk,D), v (B,H,Nk,Dv), out (B,H,Nq,Dv) its output;
        rs: its entropy and lse from the merged kernel, if it came from there."""
        key = (_layout_key(lay), tuple(q.shape), tuple(k.shape), tuple(v.shape), q.dtype, out.dtype, q.device,
               float(scale), maps, rs is not None)
        g = self.groups.get(key)
        if g is None:
            g = self.groups[key] = _Group(lay, float(scale), maps, rs is not None, q.shape[0])
            g.nbytes = sum(t.numel() * t.element_size() for t in (q, k, v, out))
        if rs is None or maps:  # the kernel (or the maps pass) needs the queries and keys
            g.slot("q", q)
            g.slot("k", k)
        g.slot("v", v)
        g.slot("out", out)
        if rs is not None:
            g.rs.append((rs.entropy, rs.lse))
        g.accs.append((acc, n_videos))
        g.n += 1
        self.deferred += 1
        if g.n * g.nbytes >= MAX_GROUP_BYTES:
            self._compute(g)

    def flush(self) -> None:
        """Compute every pending group (the end of a step, or before its accumulators are read)."""
        for g in self.groups.values():
            if g.n:
                self._compute(g)

    def discard(self) -> None:
        """Drop pending calls (a run that failed or ended mid-step); buffers stay for reuse."""
        for g in self.groups.values():
            g.n = 0
            g.accs.clear()
            g.rs.clear()

    def _compute(self, g: _Group) -> None:
        """One kernel call (or none, for merged calls) and one set of reductions for the group's
        n calls of B items each; then each call's share is added to its accumulator."""
        lay, n, B = g.lay, g.n, g.batch
        nB = n * B
        v, out = g.bufs["v"][:nB], g.bufs["out"][:nB]
        _, H, Nq, _ = out.shape
        Nk = v.shape[-2]
        dev = out.device
        kw = kernel_args(lay, Nq, Nk, g.maps, dev)
        if g.merged:
            ent = torch.cat([e for e, _ in g.rs]) if n > 1 else g.rs[0][0]
            key_pooled = None
            if g.maps and "key_cells" in kw:
                lse = torch.cat([s for _, s in g.rs]) if n > 1 else g.rs[0][1]
                key_pooled = pooled_rows(g.bufs["q"][:nB], g.bufs["k"][:nB], scale=g.scale, lse=lse,
                                         key_cells=kw["key_cells"], n_key_cells=kw["n_key_cells"],
                                         key_grid=kw.get("key_grid"), chunk_bytes=self.chunk_bytes)
        else:
            ent, _, key_pooled = batch_row_stats_(g.bufs["q"][:nB], g.bufs["k"][:nB], scale=g.scale,
                                                  key_cells=kw.get("key_cells"), n_key_cells=kw.get("n_key_cells", 0),
                                                  key_grid=kw.get("key_grid"), chunk_bytes=self.chunk_bytes)
        # the accumulator's uniform sums (Accumulator._add_uniform), for all n calls at once
        per = lay.per_branch
        nbc = B // per
        e = ent.reshape(n, nbc, per, H, Nq).sum(dim=(2, 4))  # (n, nbc, H)
        # energies, each call's branches a group of their own (float32 sums for half-precision models)
        o = sq_sums(out, n * nbc).view(n, nbc, H)
        vv = sq_sums(v, n * nbc).view(n, nbc, H)
        inv_ln = 1.0 / math.log(Nk) if Nk > 1 else 0.0  # one key: normalized entropy 0
        cnt = torch.full_like(e, float(per * Nq))
        # to the host once for the group; each call's share is a numpy slice (no torch op per call)
        vals = torch.stack([e, e * inv_ln, cnt, cnt, o, vv], dim=-1).cpu().numpy()  # (n, nbc, H, 6)
        maps = _group_maps(lay, n, B, ent, key_pooled) if g.maps else None
        for i, (acc, n_videos) in enumerate(g.accs):
            acc.add_uniform_host(vals[i], lay.branch_base, n_videos)
            acc.calls += 1
            if maps is not None:
                for name, (per_call, alike) in maps.items():
                    acc.add_host(name, per_call[i] if per_call is not None else alike)
        self.flushes += 1
        g.n = 0
        g.accs.clear()
        g.rs.clear()


def _group_maps(lay: Layout, n: int, B: int, ent: torch.Tensor, key_pooled: torch.Tensor | None) -> dict | None:
    """The map sums of n calls of B items at once (Accumulator.add_map_rows's scatter as one
    index_add over every call): name -> (host array (n, ...) of each call's sums, or None; the host
    array every call adds alike, or None). ent: (n·B, H, Nq); key_pooled: (n·B, 1, Nq, K)."""
    _, _, Nq = ent.shape
    plan = map_plan(lay, B, Nq, ent.device)
    if plan is None:
        return None
    nb, F, G = lay.n_branch, lay.frames, lay.cells
    ent_h = ent.mean(dim=1).reshape(n, B * Nq)  # head-averaged row entropy
    emap = ent_h.new_zeros((n, nb * F * G)).index_add_(1, plan["emap"], ent_h)
    out = {"emap": (emap.view(n, nb, F, G).cpu().numpy(), None), "emap_n": (None, plan["emap_n"].cpu().numpy())}
    if plan["dst"] is not None and key_pooled is not None:
        Q = G if plan["dst"] == "s" else F
        K = key_pooled.shape[-1]
        m = key_pooled.new_zeros((n, nb * Q, K)).index_add_(1, plan["qflat"], key_pooled.reshape(n, B * Nq, K))
        dst = "map_s" if plan["dst"] == "s" else "map_t"
        out[dst] = (m.view(n, nb, Q, K).cpu().numpy(), None)
        out[dst + "_n"] = (None, plan["q_n"].cpu().numpy())
    return out
