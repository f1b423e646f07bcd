"""Token layout of one attention call, and its reduction into per-step accumulators.

Given a layer's kind, the SDPA shapes and the video geometry of the denoiser call, this module
knows which batch item belongs to which CFG branch and frame/position, where each query and key
token lies on the latent grid, and how to fold the kernel's per-row results into the scalars and
pooled maps the store keeps. Pure torch; knows no diffusers classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from . import dims
from .models.families import Geometry
from .stats import DEFAULT_CHUNK_BYTES, Part, RowStats, chunk_rows_for, normalized, pooled_rows, row_stats

PART_INDEX = {p: i for i, p in enumerate(dims.PARTS)}


def sq_sums(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Σ x² over each group of consecutive batch items, its rows and dims: x (B,H,N,D) -> (groups, H)
    float32 (half-precision inputs summed in float32), B a multiple of groups.

    One reduction over a view that matches x's memory: the (B,N,H,D) memory diffusers' processors
    hand over (heads transposed in), or plain (B,H,N,D). A row-wise vecdot followed by a sum over
    items and rows was 2.5-3x slower on the 16x256x256 case's layers (0.75 against 0.25 ms at
    (32, 8, 1024, 4)), and less accurate (float64 reference: 1e-7 against 3e-7 relative)."""
    B, H, N, D = x.shape
    x = x.float()  # a no-op for float32; half precision keeps its strides
    xt = x.transpose(1, 2)
    if xt.is_contiguous():  # memory (B, N, H, D): reduce over the (items x rows) axis per (head, dim)
        xv = xt.reshape(groups, (B // groups) * N, H * D)
        return torch.linalg.vecdot(xv, xv, dim=1).view(groups, H, D).sum(-1)
    if x.is_contiguous():
        xv = x.view(groups, B // groups, H, N * D)
        return torch.linalg.vecdot(xv, xv).sum(1)
    return torch.linalg.vecdot(x, x).reshape(groups, B // groups, H, N).sum(dim=(1, 3))


@dataclass
class Layout:
    kind: str
    n_branch: int
    per_branch: int  # SDPA batch items per branch
    frames: int  # latent frames in the layer's token space
    th: int  # token grid height
    tw: int  # token grid width
    text: int  # text tokens in front of video tokens (joint layers)
    gy: int  # map grid height (<= th)
    gx: int
    tokens3d: bool = False  # query tokens are (frame, y, x) of one video, not one frame's grid
    branch_base: int = 0  # branch of the first batch item (pipelines that run CFG branches as separate calls)
    text_first: bool = True  # joint layers: the text tokens come before the video tokens (else after)
    item_video: int | None = None  # per-item calls (Mochi): the one batch item's video
    per_position: bool = False  # cross-attention with one batch item per grid position (SVD temporal blocks)
    # index tensors derived from the layout (kernel arguments, scatter indices), built at the first
    # call and reused for every later call of the layer: not rebuilt per call (see Accumulator)
    cache: dict = field(init=False, default_factory=dict, repr=False, compare=False)

    @property
    def vid0(self) -> int:
        """Index of the first video token of a joint sequence."""
        return self.text if self.text_first else 0

    @property
    def n_video(self) -> int:
        return self.frames * self.th * self.tw

    def video_rows(self, row_ids: torch.Tensor) -> torch.Tensor:
        """Which of the given token indices are video tokens (bool)."""
        return (row_ids >= self.vid0) & (row_ids < self.vid0 + self.n_video)

    @property
    def cells(self) -> int:
        return self.gy * self.gx

    def cell_of(self, pos: torch.Tensor) -> torch.Tensor:
        y, x = pos // self.tw, pos % self.tw
        return (y * self.gy // self.th) * self.gx + (x * self.gx // self.tw)

    def key_grid(self, offset: int):
        """Fast-path reshape pooling when cells tile the token grid exactly."""
        if self.th % self.gy == 0 and self.tw % self.gx == 0:
            return (self.frames if self.kind == "joint" else 1, self.th, self.tw, self.gy, self.gx, offset)
        return None


def _grid_for(tokens: int, height: int, width: int) -> tuple[int, int]:
    """The (h, w) token grid at some power-of-two downsampling of (height, width)."""
    for d in range(0, 8):
        h, w = math.ceil(height / 2**d), math.ceil(width / 2**d)
        if h * w == tokens:
            return h, w
    raise ValueError(f"{tokens} tokens do not tile a {height}x{width} latent at any 2^k downsampling")


def make_layout(kind: str, batch: int, nq: int, nk: int, geo: Geometry, n_videos: int, grid: int, *,
                total_branches: int | None = None, branch_base: int = 0, text_first: bool = True) -> Layout:
    """total_branches/branch_base: for pipelines that run each CFG branch as its own denoiser call,
    the number of branches of a step and the one this call computes; otherwise branches are
    concatenated in the batch (diffusers' usual [uncond; cond])."""
    call_branches = 1 if total_branches else max(1, geo.batch // max(1, n_videos))
    n_branch = total_branches or call_branches
    if batch % call_branches:
        raise ValueError(f"attention batch {batch} does not split into {call_branches} branches")
    per = batch // call_branches
    tokens3d = False
    if kind in ("spatial", "cross"):
        th3, tw3 = geo.token_hw
        per_video = per // max(1, n_videos)
        if kind == "cross" and per == max(1, n_videos) and nq == geo.token_frames * th3 * tw3:
            # transformer cross-attention: the queries are one video's 3D tokens
            f, th, tw = geo.token_frames, th3, tw3
            tokens3d = True
        elif kind == "cross" and nq in (geo.frames, geo.token_frames) and per_video != nq and per_video > 1:
            # cross-attention of a temporal block (SVD): one batch item per grid position, one query per frame
            f = nq
            th, tw = _grid_for(per_video, geo.height, geo.width)
            return Layout(kind, n_branch, per, f, th, tw, 0, min(grid, th), min(grid, tw), False, branch_base,
                          per_position=True)
        else:
            f = geo.frames
            th, tw = _grid_for(nq, geo.height, geo.width)
        text = 0
    elif kind == "temporal":
        f = nq
        th, tw = _grid_for(per // max(1, n_videos), geo.height, geo.width)
        text = 0
    elif kind == "joint":
        f = geo.frames // geo.patch_t
        th, tw = geo.height // geo.patch, geo.width // geo.patch
        text = nk - f * th * tw
        if text < 0 or nq != nk:
            raise ValueError(f"joint layer with {nq}x{nk} tokens does not match {f}x{th}x{tw} video tokens")
    elif kind == "other":  # kind not inferred: exact scalar statistics, no maps
        return Layout(kind, n_branch, per, 1, 1, 1, 0, 1, 1, False, branch_base)
    else:
        raise ValueError(f"unknown layer kind {kind!r}")
    return Layout(kind, n_branch, per, f, th, tw, text, min(grid, th), min(grid, tw), tokens3d, branch_base,
                  text_first)


def kernel_args(lay: Layout, nq: int, nk: int, maps: bool, device) -> dict:
    """Keyword arguments for stats.row_stats for this layout (built once per layout and shape)."""
    key = ("kernel", nq, nk, maps, str(device))
    got = lay.cache.get(key)
    if got is None:
        got = lay.cache[key] = _kernel_args(lay, nq, nk, maps, device)
    return dict(got)


def _kernel_args(lay: Layout, nq: int, nk: int, maps: bool, device) -> dict:
    kw: dict = {}
    if lay.kind == "joint":
        vid = torch.arange(nk - lay.text, device=device)
        hw = lay.th * lay.tw
        txt = torch.full((lay.text,), -1, device=device)

        def with_text(t):  # text tokens (-1: in no part, no cell) where the sequence has them
            return torch.cat([txt, t] if lay.text_first else [t, txt])

        frame, pos = with_text(vid // hw), with_text(vid % hw)
        kw["parts"] = (Part("spatial", frame, frame), Part("temporal", pos, pos))
        if maps:
            cells = with_text((vid // hw) * lay.cells + lay.cell_of(vid % hw))
            kw.update(key_cells=cells, n_key_cells=lay.frames * lay.cells, key_grid=lay.key_grid(lay.vid0))
    elif maps and lay.kind == "spatial":
        kw.update(key_cells=lay.cell_of(torch.arange(nk, device=device)), n_key_cells=lay.cells, key_grid=lay.key_grid(0))
    elif maps and lay.kind == "temporal":
        # each key (frame) is its own cell: the grid path, which then pools nothing
        kw.update(key_cells=torch.arange(nk, device=device), n_key_cells=nk, key_grid=(nk, 1, 1, 1, 1, 0))
    return kw


def map_plan(lay: Layout, B: int, n_rows: int, dev) -> dict | None:
    """Scatter indices of a full call (every row) of a non-joint layer, built once per layout:
    flat (branch, frame, cell) slots of each (item, row) for the entropy map, their counts, and
    the flat (branch, query cell|frame) rows of the pooled query-key map."""
    key = ("maps", B, n_rows, str(dev))
    if key in lay.cache:
        return lay.cache[key]
    nb, F, G = lay.n_branch, lay.frames, lay.cells
    branch_of = torch.arange(B, device=dev) // lay.per_branch + lay.branch_base
    plan = None
    if lay.kind == "cross" and lay.per_position:
        R = n_rows
        frame = torch.arange(R, device=dev).expand(B, -1)
        cell = lay.cell_of(torch.arange(B, device=dev) % (lay.th * lay.tw))[:, None].expand(-1, R)
        plan = {"dst": None}
    elif lay.kind in ("spatial", "cross") and lay.tokens3d:
        hw = lay.th * lay.tw
        ids = torch.arange(n_rows, device=dev)
        frame, cell = (ids // hw).expand(B, -1), lay.cell_of(ids % hw).expand(B, -1)
        plan = {"dst": None}
    elif lay.kind in ("spatial", "cross"):
        R = n_rows
        frame = (torch.arange(B, device=dev) % lay.frames)[:, None].expand(-1, R)
        cell = lay.cell_of(torch.arange(R, device=dev)).expand(B, -1)
        plan = {"dst": "s" if lay.kind == "spatial" else None, "q": cell}
    elif lay.kind == "temporal":
        R = n_rows
        frame = torch.arange(R, device=dev).expand(B, -1)
        cell = lay.cell_of(torch.arange(B, device=dev) % (lay.th * lay.tw))[:, None].expand(-1, R)
        plan = {"dst": "t", "q": frame}
    if plan is not None:
        flat = (branch_of[:, None] * (F * G) + frame * G + cell).long().reshape(-1)
        plan["emap"] = flat
        plan["emap_n"] = torch.bincount(flat, minlength=nb * F * G).float().view(nb, F, G)
        if plan["dst"] is not None:
            Q = G if plan["dst"] == "s" else F
            qflat = (branch_of[:, None] * Q + plan.pop("q")).reshape(-1)
            plan["qflat"] = qflat
            plan["q_n"] = torch.bincount(qflat, minlength=nb * Q).float().view(nb, Q)
        plan.pop("q", None)
    lay.cache[key] = plan
    return plan


class Accumulator:
    """Sums for one (step, layer); several SDPA calls in a step add up."""

    # columns of the per-(branch, part, head) sums
    _ENT, _ENTN, _MASS, _ROWS, _ENERGY, _VENERGY = range(6)

    def __init__(self, lay: Layout, heads: int, device):
        nb, np_, G, F = lay.n_branch, len(dims.PARTS), lay.cells, lay.frames
        # float32 sums: one step's sums cover at most a few million rows per branch
        z = lambda *s: torch.zeros(*s, dtype=torch.float32, device=device)  # noqa: E731
        self.lay, self.heads = lay, heads
        self._sums = None  # (nb, parts, heads, 6) on the device, allocated by the first call added there
        self.videos = [0.0] * nb  # videos summed per branch (a Python list: no tensor op per call)
        self._z, self._map_shapes = z, (nb, G, F)
        self.map_s = None  # the maps' sums, allocated by the first call that adds maps (_ensure_maps)
        # sums computed elsewhere for many calls at once and handed over on the host (capture.deferred):
        # name -> numpy array shaped like the torch sum of the same name; added in result()
        self.host: dict[str, np.ndarray] = {}
        self.calls = 0

    def widen(self, lay: Layout, at: int) -> None:
        """Re-lay the sums of this accumulator's branches as branches ``at``, ``at + 1``, ... of
        ``lay``'s ``lay.n_branch``: for a run that learns at a step's second denoiser call that
        the first was one CFG branch of several (the tracer's two-pass inference). Every sum keeps
        its value; the new branches start at zero."""
        nb_old, nb = self.lay.n_branch, lay.n_branch
        if nb < at + nb_old:
            raise ValueError(f"{nb_old} branch(es) at {at} do not fit in {nb}")

        def grow(x):
            shape = (nb,) + tuple(x.shape[1:])
            new = x.new_zeros(shape) if isinstance(x, torch.Tensor) else np.zeros(shape, dtype=x.dtype)
            new[at:at + nb_old] = x
            return new

        if self._sums is not None:
            self._sums = grow(self._sums)
        for n in ("map_s", "map_s_n", "map_t", "map_t_n", "emap", "emap_n"):
            if getattr(self, n, None) is not None:
                setattr(self, n, grow(getattr(self, n)))
        self.host = {n: grow(h) for n, h in self.host.items()}
        self.videos = [0.0] * at + self.videos + [0.0] * (nb - at - nb_old)
        self.lay = lay
        self._map_shapes = (nb,) + self._map_shapes[1:]

    def sums(self) -> torch.Tensor:
        """The per-(branch, part, head) sums on the device: one tensor, so each call adds with one
        index_add. Allocated on first use: calls whose sums are computed in groups add on the host."""
        if self._sums is None:
            nb, _, _ = self._map_shapes
            self._sums = self._z(nb, len(dims.PARTS), self.heads, 6)
        return self._sums

    def _scalars(self, part, branch_of, ent, n_keys, out_sq, v_sq, mass=None):
        """ent, out_sq, mass: (B,H,R) rows of this part; v_sq: (B,H) summed value energy.

        Few, wide tensor ops: on small layers the per-op overhead, not arithmetic, is the cost."""
        valid = torch.isfinite(ent)
        en = normalized(ent, n_keys)
        per_row = torch.stack([ent, en, mass if mass is not None else torch.ones_like(ent)], dim=-1)
        per_row = torch.where(valid.unsqueeze(-1), per_row, 0).sum(dim=-2)  # (B,H,3)
        totals = torch.stack([valid.sum(-1).float(), out_sq.sum(-1), v_sq], dim=-1)  # (B,H,3)
        self.sums()[:, PART_INDEX[part]].index_add_(0, branch_of, torch.cat([per_row, totals], dim=-1))

    def add(self, rs: RowStats, out: torch.Tensor, v: torch.Tensor, rows: torch.Tensor | None, n_videos: int,
            lay: Layout | None = None, maps: bool = True):
        """rs from the kernel; out: SDPA output (B,H,Nq,Dv); v: (B,H,Nk,Dv); rows: sampled rows.

        lay: this call's layout when it differs from the accumulator's only by branch_base.
        maps: also add the pooled maps and the entropy map (else only the scalar sums)."""
        lay = lay or self.lay
        B, H, Nq, _ = out.shape
        self.calls += 1
        if lay.kind != "joint" and rs.n_keys_all is not None and B >= lay.per_branch and B % lay.per_branch == 0:
            self._add_uniform(lay, rs, out, v, n_videos)
            if maps:
                self._maps(rs, rows, lay, B, out.device)
            return
        dev = out.device
        row_ids = rows if rows is not None else torch.arange(Nq, device=dev)
        branch_of = torch.arange(B, device=dev) // lay.per_branch + lay.branch_base
        out = out.float()
        v = v.float()
        out_sq = torch.linalg.vecdot(out, out)  # (B,H,Nq), all rows: energy is exact in every mode
        v_sq_tok = torch.linalg.vecdot(v, v)  # (B,H,Nk)
        for b in sorted(set((torch.arange(B) // lay.per_branch + lay.branch_base).tolist())):
            self.videos[b] += float(n_videos)
        ent = rs.entropy
        if lay.kind == "joint":
            T, v0 = lay.text, lay.vid0
            vid_rows = lay.video_rows(row_ids)
            txt_rows = ~vid_rows
            all_ids = torch.arange(Nq, device=dev)
            vid_all = lay.video_rows(all_ids)
            v_vid = v_sq_tok[..., v0:v0 + lay.n_video].sum(-1)
            self._scalars("all", branch_of, ent[..., vid_rows], rs.n_keys[..., vid_rows], out_sq[..., vid_all], v_vid)
            if T:
                self._scalars("text", branch_of, ent[..., txt_rows], rs.n_keys[..., txt_rows], out_sq[..., ~vid_all],
                              v_sq_tok.sum(-1))
            for name, pt in rs.parts.items():
                self._scalars(name, branch_of, pt["entropy"][..., vid_rows], pt["n_keys"][..., vid_rows],
                              pt["out_sq"][..., vid_rows], v_vid, pt["mass"][..., vid_rows])
        else:
            self._scalars("all", branch_of, ent, rs.n_keys, out_sq, v_sq_tok.sum(-1))
        if maps:
            self._maps_general(rs, row_ids, branch_of)

    def _add_uniform(self, lay: Layout, rs: RowStats, out, v, n_videos: int) -> None:
        """The common case in a handful of wide ops: every row allows all Nk keys (no mask), so no
        row is invalid and every row's normalizer is ln Nk; the call's batch items are whole
        branches in order ([branch_base, branch_base + 1, ...] × per_branch items each)."""
        ent = rs.entropy  # (B,H,R)
        B, H, R = ent.shape
        per = lay.per_branch
        nbc, b0 = B // per, lay.branch_base
        e = ent.reshape(nbc, per, H, R).sum(dim=(1, 3))  # (nbc,H)
        o, vv = sq_sums(out, nbc), sq_sums(v, nbc)  # energies, summed in float32
        nk = rs.n_keys_all
        inv_ln = 1.0 / math.log(nk) if nk > 1 else 0.0  # one key: normalized entropy 0
        key = ("rows", nbc, H, per * R, str(ent.device))
        cnt = lay.cache.get(key)
        if cnt is None:
            cnt = lay.cache[key] = torch.full((nbc, H), float(per * R), device=ent.device)
        self.add_uniform_sums(torch.stack([e, e * inv_ln, cnt, cnt, o, vv], dim=-1), b0, n_videos)

    def add_uniform_sums(self, vals: torch.Tensor, branch_base: int, n_videos: int) -> None:
        """vals (nbc, H, 6): one call's sums of part "all" for its nbc whole branches from
        branch_base on, columns as in _ENT, _ENTN, _MASS (1 per row for part "all"), _ROWS,
        _ENERGY, _VENERGY (capture.deferred computes them for many calls at once)."""
        nbc = vals.shape[0]
        self.sums()[branch_base:branch_base + nbc, 0].add_(vals)
        self._count_videos(branch_base, nbc, n_videos)

    def add_uniform_host(self, vals: np.ndarray, branch_base: int, n_videos: int) -> None:
        """add_uniform_sums with vals (nbc, H, 6) on the host (capture.deferred's per-group results)."""
        nbc = vals.shape[0]
        self.add_host("sums", vals, (slice(branch_base, branch_base + nbc), 0))
        self._count_videos(branch_base, nbc, n_videos)

    def _count_videos(self, branch_base: int, nbc: int, n_videos: int) -> None:
        for b in range(branch_base, branch_base + nbc):
            self.videos[b] += float(n_videos)

    def add_host(self, name: str, values: np.ndarray, index=slice(None)) -> None:
        """Add host values to the host sum ``name`` (shaped like the torch sum of that name) at
        ``index``: one call's share of a batch computed for many calls at once."""
        got = self.host.get(name)
        if got is None:
            (nb, G, F), heads = self._map_shapes, self.heads
            shape = {"sums": (nb, len(dims.PARTS), heads, 6), "map_s": (nb, G, G), "map_s_n": (nb, G),
                     "map_t": (nb, F, F), "map_t_n": (nb, F), "emap": (nb, F, G), "emap_n": (nb, F, G)}[name]
            got = self.host[name] = np.zeros(shape, dtype=np.float32)
        got[index] += values

    def _ensure_maps(self) -> None:
        if self.map_s is None:
            z, (nb, G, F) = self._z, self._map_shapes
            self.map_s, self.map_s_n = z(nb, G, G), z(nb, G)
            self.map_t, self.map_t_n = z(nb, F, F), z(nb, F)
            self.emap, self.emap_n = z(nb, F, G), z(nb, F, G)

    def _maps(self, rs: RowStats, rows, lay: Layout, B: int, dev) -> None:
        """Maps of a call whose rows all allow every key: cached scatter indices (see map_plan)."""
        self._ensure_maps()
        if rows is not None:  # sampled rows: indices of those rows, not cached
            return self._maps_general(rs, rows, torch.arange(B, device=dev) // lay.per_branch + lay.branch_base)
        self.add_map_rows(lay, rs.entropy.mean(1), rs.key_pooled)

    def add_map_rows(self, lay: Layout, ent_h: torch.Tensor, key_pooled: torch.Tensor | None) -> None:
        """Maps of a full call (every row, every key allowed) of B items: ent_h (B, Nq) its
        head-averaged row entropy, key_pooled (B, 1, Nq, Gk) its head-averaged key-pooled rows."""
        self._ensure_maps()
        plan = map_plan(lay, ent_h.shape[0], ent_h.shape[-1], ent_h.device)
        if plan is None:
            return
        self.emap.view(-1).index_add_(0, plan["emap"], ent_h.reshape(-1))
        self.emap_n.add_(plan["emap_n"])
        if plan["dst"] is not None and key_pooled is not None:
            dst, cnt = (self.map_s, self.map_s_n) if plan["dst"] == "s" else (self.map_t, self.map_t_n)
            K = dst.shape[-1]
            dst.view(-1, K).index_add_(0, plan["qflat"], key_pooled[:, 0].reshape(-1, K))
            cnt.add_(plan["q_n"])

    def _maps_general(self, rs: RowStats, row_ids, branch_of):
        self._ensure_maps()
        lay = self.lay  # geometry only: identical for every call of the layer in a step
        dev = branch_of.device
        B = branch_of.shape[0]
        ent_h = rs.entropy.nan_to_num(0.0).mean(1)  # (B,R) head-averaged row entropy
        ok = torch.isfinite(rs.entropy).all(1).float()
        G, F = lay.cells, lay.frames
        R = row_ids.numel()
        kp = rs.key_pooled[:, 0] if rs.key_pooled is not None else None  # (B,R,Gk)
        if lay.kind == "cross" and lay.per_position:  # queries are frames, batch items are positions
            cells = lay.cell_of(torch.arange(B, device=dev) % (lay.th * lay.tw))
            self._emap_rows(branch_of, row_ids.expand(B, -1), cells[:, None].expand(-1, R), ent_h, ok)
        elif lay.kind in ("spatial", "cross") and lay.tokens3d:
            # transformer cross-attention: queries are the (frame, y, x) tokens of one video
            hw = lay.th * lay.tw
            self._emap_rows(branch_of, (row_ids // hw).expand(B, -1), lay.cell_of(row_ids % hw).expand(B, -1), ent_h, ok)
        elif lay.kind in ("spatial", "cross"):
            # UNet layers: frames are folded into the batch, queries are one frame's grid
            frame = torch.arange(B, device=dev) % lay.frames
            self._emap_rows(branch_of, frame[:, None].expand(-1, R), lay.cell_of(row_ids).expand(B, -1), ent_h, ok)
            if lay.kind == "spatial" and kp is not None:
                self._add_rows(self.map_s, self.map_s_n, branch_of, lay.cell_of(row_ids).expand(B, -1), kp)
        elif lay.kind == "temporal":
            cells = lay.cell_of(torch.arange(B, device=dev) % (lay.th * lay.tw))
            self._emap_rows(branch_of, row_ids.expand(B, -1), cells[:, None].expand(-1, R), ent_h, ok)
            if kp is not None:
                self._add_rows(self.map_t, self.map_t_n, branch_of, row_ids.expand(B, -1), kp)
        elif lay.kind == "joint":
            hw = lay.th * lay.tw
            vid = lay.video_rows(row_ids)
            vr = row_ids[vid] - lay.vid0
            qf, qc = vr // hw, lay.cell_of(vr % hw)
            self._emap_rows(branch_of, qf.expand(B, -1), qc.expand(B, -1), ent_h[:, vid], ok[:, vid])
            if kp is not None:
                kv = kp[:, vid].reshape(B, -1, F, G)  # (B,Rv,F,G)
                kv = kv / kv.sum(dim=(2, 3), keepdim=True).clamp_min(1e-300)  # renormalize over video keys
                self._add_rows(self.map_s, self.map_s_n, branch_of, qc.expand(B, -1), kv.sum(2))
                self._add_rows(self.map_t, self.map_t_n, branch_of, qf.expand(B, -1), kv.sum(3))

    @staticmethod
    def _add_rows(dst, count, branch_of, qidx, rows):
        """dst (nb,Q,K) += rows (B,R,K) at (branch_of[b], qidx[b,r]); count (nb,Q) += 1 each."""
        nb, Q, K = dst.shape
        flat = (branch_of[:, None] * Q + qidx).reshape(-1)
        dst.view(nb * Q, K).index_add_(0, flat, rows.reshape(-1, K))
        count.view(-1).index_add_(0, flat, torch.ones_like(flat, dtype=count.dtype))

    def _emap_rows(self, branch_of, frame, cell, ent_h, ok):
        """frame, cell, ent_h, ok: (B,R). Adds head-averaged row entropy onto (branch, frame, cell)."""
        nb, F, G = self.emap.shape
        flat = (branch_of[:, None] * (F * G) + frame * G + cell).long().reshape(-1)
        self.emap.view(-1).index_add_(0, flat, (ent_h * ok).reshape(-1))
        self.emap_n.view(-1).index_add_(0, flat, ok.reshape(-1))

    def host_sums(self) -> np.ndarray:
        """The per-(branch, part, head) sums, (nb, parts, heads, 6) float32 on the host."""
        if self._sums is None:  # every call came through capture.deferred (or none came)
            if "sums" not in self.host:
                self.add_host("sums", 0.0)  # zeros of the right shape
            return self.host["sums"]
        S = self._sums.cpu().numpy()
        if "sums" in self.host:
            S = S + self.host["sums"]  # x + 0 == x: calls summed on either side give the same floats
        return S

    def map_results(self) -> dict[str, np.ndarray]:
        """The maps' means (float32 numpy; NaN where no row fell), or {} for a statistics-only capture."""
        if self.map_s is None and "emap" not in self.host:
            return {}
        host = []
        for n in ("map_s", "map_s_n", "map_t", "map_t_n", "emap", "emap_n"):
            if n not in self.host:
                self.add_host(n, 0.0)  # zeros of the right shape
            h = self.host[n]
            host.append(h if self.map_s is None else getattr(self, n).cpu().numpy() + h)
        with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 -> NaN, as recorded nowhere
            return {dims.MAP_SPATIAL: (host[0] / host[1][..., None]).astype(np.float32, copy=False),
                    dims.MAP_TEMPORAL: (host[2] / host[3][..., None]).astype(np.float32, copy=False),
                    dims.ENTROPY_MAP: (host[4] / host[5]).astype(np.float32, copy=False)}

    def result(self) -> dict[str, torch.Tensor]:
        """Means and per-video sums, as float32 torch tensors on CPU; NaN where nothing was recorded
        (:func:`results` for several accumulators at once, as numpy arrays)."""
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in results([self])[0].items()}


def results(accs: list) -> list[dict[str, np.ndarray] | None]:
    """Each accumulator's means and per-video sums (Accumulator.result, as float32 numpy arrays;
    None for None), the scalar statistics of all of them computed at once: one step's layers
    cost a handful of numpy operations, not a handful per layer (padded to the most branches
    and heads among them, sliced back per layer)."""
    live = [(i, a) for i, a in enumerate(accs) if a is not None]
    out: list = [None] * len(accs)
    if not live:
        return out
    nb = max(a._map_shapes[0] for _, a in live)
    heads = max(a.heads for _, a in live)
    S = np.zeros((len(live), nb, len(dims.PARTS), heads, 6), dtype=np.float32)
    videos = np.zeros((len(live), nb, 1, 1), dtype=np.float32)
    for j, (_, a) in enumerate(live):
        s = a.host_sums()
        S[j, : s.shape[0], :, : s.shape[2]] = s
        videos[j, : len(a.videos), 0, 0] = a.videos
    rows = S[..., Accumulator._ROWS]
    nan = np.float32("nan")
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 -> NaN, as recorded nowhere
        stats = {
            dims.ENTROPY: S[..., Accumulator._ENT] / rows,
            dims.ENTROPY_NORM: S[..., Accumulator._ENTN] / rows,
            dims.MASS: S[..., Accumulator._MASS] / rows,
            dims.ENERGY: np.where(rows > 0, S[..., Accumulator._ENERGY] / videos, nan),
            dims.VALUE_ENERGY: np.where(rows > 0, S[..., Accumulator._VENERGY] / videos, nan),
        }
    for j, (i, a) in enumerate(live):
        n_b, h = a._map_shapes[0], a.heads
        out[i] = {k: v[j, :n_b, :, :h] for k, v in stats.items()}
        out[i].update(a.map_results())
    return out


def _block_stats(q, k, v, scale, chunk_bytes, to_rows):
    """Stats of independent attention blocks stacked in the batch dim; results mapped back to rows.

    q, k, v: (B', H, n, ·) blocks; to_rows(t (B', H, n)) -> (B, H, rows) in the layer's row order.
    Returns entropy, lse and squared output norm per row; the output comes from SDPA itself.
    """
    Bp, H, n, _ = q.shape
    rs = row_stats(q, k, scale=scale, chunk_rows=chunk_rows_for(Bp * H, n, chunk_bytes, q.device))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    return to_rows(rs.entropy), to_rows(rs.lse), to_rows(out.float().pow(2).sum(-1)), n


def joint_parts(lay: Layout, q, k, v, scale: float, lse_full, rows, *, chunk_bytes=None) -> dict:
    """Renormalized intra-frame (spatial) and same-position (temporal) statistics of joint layers.

    Each part is a set of small independent attention problems: per frame, its hw queries against
    its hw keys; per position, its F queries against its F keys. They cost N²/F and N·F instead of
    N² per part. lse_full: (B,H,R) full-row log-normalizers of the computed rows (R = rows or all).
    """
    B, H, _, D = q.shape
    v0, F, hw = lay.vid0, lay.frames, lay.th * lay.tw
    qv, kv, vv = (x[:, :, v0:v0 + F * hw].reshape(B, H, F, hw, x.shape[-1]) for x in (q, k, v))
    n_vid = F * hw

    def frames_to_rows(t):  # (B*F, H, hw) -> (B, H, F*hw)
        return t.reshape(B, F, H, hw).permute(0, 2, 1, 3).reshape(B, H, n_vid)

    def positions_to_rows(t):  # (B*hw, H, F) -> (B, H, F*hw)
        return t.reshape(B, hw, H, F).permute(0, 2, 3, 1).reshape(B, H, n_vid)

    per_frame = [x.permute(0, 2, 1, 3, 4).reshape(B * F, H, hw, x.shape[-1]) for x in (qv, kv, vv)]
    per_pos = [x.permute(0, 3, 1, 2, 4).reshape(B * hw, H, F, x.shape[-1]) for x in (qv, kv, vv)]
    vid_rows = (rows[lay.video_rows(rows)] - v0) if rows is not None else None
    lse_vid = lse_full[..., lay.video_rows(rows) if rows is not None else slice(v0, v0 + F * hw)]
    out = {}
    for name, blocks, to_rows in (("spatial", per_frame, frames_to_rows), ("temporal", per_pos, positions_to_rows)):
        ent, lse, out_sq, n = _block_stats(*blocks, scale, chunk_bytes, to_rows)
        if vid_rows is not None:
            ent, lse, out_sq = ent[..., vid_rows], lse[..., vid_rows], out_sq[..., vid_rows]
        out[name] = {
            "entropy": ent,
            "n_keys": torch.full((B, 1, ent.shape[-1]), float(n), device=q.device),
            "mass": torch.exp(lse - lse_vid),
            "out_sq": out_sq,
        }
    return out


def accumulate(acc: Accumulator, q, k, v, mask, scale: float, out, *, maps: bool, rows=None,
               chunk_bytes: int = DEFAULT_CHUNK_BYTES, n_videos: int = 1, method: str = "auto",
               lay: Layout | None = None, rs: RowStats | None = None) -> None:
    """Run the statistics kernel on one attention call and add it to ``acc``.

    q: (B,H,Nq,D); k, v: (B,H,Nk,·) with heads already expanded; out: the layer's original
    SDPA output (B,H,Nq,Dv), from which energies are taken. Joint layers without a per-query mask
    get their parts from :func:`joint_parts`; with one, from the kernel's generic (slower) parts.
    rs: every row's entropy and lse, already computed with the output (capture.merged; no mask,
    no sampled rows); then only the maps, if wanted, are computed here, from that lse.
    """
    B, H, Nq, _ = q.shape
    Nk = k.shape[-2]
    lay = lay or acc.lay
    kw = kernel_args(lay, Nq, Nk, maps, q.device)
    fast_parts = lay.kind == "joint" and mask is None
    if fast_parts:
        kw.pop("parts", None)
    chunk_rows = chunk_rows_for(B * H, Nk, chunk_bytes, q.device)
    if rs is None:
        rs = row_stats(q, k, scale=scale, mask=mask, v=v if lay.kind == "joint" else None,
                       chunk_rows=chunk_rows, rows=rows, method=method, **kw)
    elif "key_cells" in kw:
        if mask is not None or rows is not None or kw.get("parts"):
            raise ValueError("precomputed statistics are for calls without mask, sampled rows or parts")
        rs.key_pooled = pooled_rows(q, k, scale=scale, lse=rs.lse, key_cells=kw["key_cells"],
                                    n_key_cells=kw["n_key_cells"], key_grid=kw.get("key_grid"), chunk_bytes=chunk_bytes)
    if fast_parts:
        ids = rows if rows is not None else None
        parts = joint_parts(lay, q, k, v, scale, rs.lse, ids, chunk_bytes=chunk_bytes)
        # the accumulator indexes parts by the layer's row ids; give every row a slot
        full = {}
        for name, d in parts.items():
            full[name] = {}
            for key, t in d.items():
                slot = torch.full(t.shape[:-1] + (rs.entropy.shape[-1],), float("nan"), device=t.device)
                idx = lay.video_rows(rows).nonzero().squeeze(-1) if rows is not None else torch.arange(
                    lay.vid0, lay.vid0 + lay.n_video, device=t.device)
                slot[..., idx] = t
                full[name][key] = slot
        rs.parts = full
    acc.add(rs, out, v, rows, n_videos, lay, maps=maps)
