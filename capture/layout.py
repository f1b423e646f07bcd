"""Token layout of one attention call, and its reduction into per-step accumulators.

Given a layer's kind, the SDPA shapes and the video geometry of the denoiser call, this module
knows which batch item belongs to which CFG branch and frame/position, where each query and key
token lies on the latent grid, and how to fold the kernel's per-row results into the scalars and
pooled maps the store keeps. Pure torch; knows no diffusers classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import dims
from .models.families import Geometry
from .stats import DEFAULT_CHUNK_BYTES, Part, RowStats, chunk_rows_for, normalized, row_stats

PART_INDEX = {p: i for i, p in enumerate(dims.PARTS)}


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


def make_layout(kind: str, batch: int, nq: int, nk: int, geo: Geometry, n_videos: int, grid: int) -> Layout:
    n_branch = max(1, geo.batch // max(1, n_videos))
    if batch % n_branch:
        raise ValueError(f"attention batch {batch} does not split into {n_branch} branches")
    per = batch // n_branch
    tokens3d = False
    if kind in ("spatial", "cross"):
        if kind == "cross" and geo.patch > 1:  # transformer cross-attention: queries are 3D video tokens
            f = geo.frames // geo.patch_t
            th, tw = geo.height // geo.patch, geo.width // geo.patch
            tokens3d = True
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
    else:
        raise ValueError(f"unknown layer kind {kind!r}")
    return Layout(kind, n_branch, per, f, th, tw, text, min(grid, th), min(grid, tw), tokens3d)


def kernel_args(lay: Layout, nq: int, nk: int, maps: bool, device) -> dict:
    """Keyword arguments for stats.row_stats for this layout."""
    kw: dict = {}
    if lay.kind == "joint":
        vid = torch.arange(nk - lay.text, device=device)
        hw = lay.th * lay.tw
        frame = torch.cat([torch.full((lay.text,), -1, device=device), vid // hw])
        pos = torch.cat([torch.full((lay.text,), -1, device=device), vid % hw])
        kw["parts"] = (Part("spatial", frame, frame), Part("temporal", pos, pos))
        if maps:
            cells = torch.cat([torch.full((lay.text,), -1, device=device), (vid // hw) * lay.cells + lay.cell_of(vid % hw)])
            kw.update(key_cells=cells, n_key_cells=lay.frames * lay.cells, key_grid=lay.key_grid(lay.text))
    elif maps and lay.kind == "spatial":
        kw.update(key_cells=lay.cell_of(torch.arange(nk, device=device)), n_key_cells=lay.cells, key_grid=lay.key_grid(0))
    elif maps and lay.kind == "temporal":
        kw.update(key_cells=torch.arange(nk, device=device), n_key_cells=nk)
    return kw


class Accumulator:
    """Sums for one (step, layer); several SDPA calls in a step add up."""

    def __init__(self, lay: Layout, heads: int, device):
        nb, np_, G, F = lay.n_branch, len(dims.PARTS), lay.cells, lay.frames
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=device)  # noqa: E731
        self.lay, self.heads = lay, heads
        self.ent, self.entn, self.rows = z(nb, np_, heads), z(nb, np_, heads), z(nb, np_, heads)
        self.energy, self.venergy, self.mass = z(nb, np_, heads), z(nb, np_, heads), z(nb, np_, heads)
        self.videos = z(nb)
        self.map_s, self.map_s_n = z(nb, G, G), z(nb, G)
        self.map_t, self.map_t_n = z(nb, F, F), z(nb, F)
        self.emap, self.emap_n = z(nb, F, G), z(nb, F, G)
        self.calls = 0

    def _scalars(self, part, branch_of, ent, n_keys, out_sq, v_sq, mass=None):
        """ent, out_sq, mass: (B,H,R) rows of this part; v_sq: (B,H) summed value energy."""
        i = PART_INDEX[part]
        valid = torch.isfinite(ent)
        en = normalized(ent, n_keys.expand_as(ent))
        for b in range(self.lay.n_branch):
            sel = branch_of == b
            v = valid[sel]
            self.ent[b, i] += torch.where(v, ent[sel], 0).sum(dim=(0, 2)).double()
            self.entn[b, i] += torch.where(v, en[sel], 0).sum(dim=(0, 2)).double()
            self.rows[b, i] += v.sum(dim=(0, 2)).double()
            self.energy[b, i] += out_sq[sel].sum(dim=(0, 2)).double()
            self.venergy[b, i] += v_sq[sel].sum(dim=0).double()
            m = mass[sel] if mass is not None else torch.ones_like(ent[sel])
            self.mass[b, i] += torch.where(v, m, 0).sum(dim=(0, 2)).double()

    def add(self, rs: RowStats, out: torch.Tensor, v: torch.Tensor, rows: torch.Tensor | None, n_videos: int):
        """rs from the kernel; out: SDPA output (B,H,Nq,Dv); v: (B,H,Nk,Dv); rows: sampled rows."""
        lay = self.lay
        B, H, Nq, _ = out.shape
        Nk = v.shape[-2]
        dev = out.device
        row_ids = rows if rows is not None else torch.arange(Nq, device=dev)
        branch_of = torch.arange(B, device=dev) // lay.per_branch
        out_sq = out.float().pow(2).sum(-1)  # (B,H,Nq), all rows: energy is exact in every mode
        v_sq_tok = v.float().pow(2).sum(-1)  # (B,H,Nk)
        self.calls += 1
        self.videos += torch.full((lay.n_branch,), float(n_videos), dtype=torch.float64, device=dev)
        ent = rs.entropy
        if lay.kind == "joint":
            T = lay.text
            vid_rows = row_ids >= T
            txt_rows = ~vid_rows
            v_vid = v_sq_tok[..., T:].sum(-1)
            self._scalars("all", branch_of, ent[..., vid_rows], rs.n_keys[..., vid_rows], out_sq[..., T:], v_vid)
            if T:
                self._scalars("text", branch_of, ent[..., txt_rows], rs.n_keys[..., txt_rows], out_sq[..., :T], v_sq_tok.sum(-1))
            for name, pt in rs.parts.items():
                self._scalars(name, branch_of, pt["entropy"][..., vid_rows], pt["n_keys"][..., vid_rows],
                              pt["out_sq"][..., vid_rows], v_vid, pt["mass"][..., vid_rows])
        else:
            self._scalars("all", branch_of, ent, rs.n_keys, out_sq, v_sq_tok.sum(-1))
        self._maps(rs, row_ids, branch_of)

    def _maps(self, rs: RowStats, row_ids, branch_of):
        lay = self.lay
        dev = branch_of.device
        B = branch_of.shape[0]
        ent_h = rs.entropy.nan_to_num(0.0).mean(1).double()  # (B,R) head-averaged row entropy
        ok = torch.isfinite(rs.entropy).all(1).double()
        G, F = lay.cells, lay.frames
        if lay.kind in ("spatial", "cross") and lay.tokens3d:
            # transformer cross-attention: queries are the (frame, y, x) tokens of one video
            hw = lay.th * lay.tw
            self._emap_rows(branch_of, (row_ids // hw).expand(B, -1), lay.cell_of(row_ids % hw).expand(B, -1), ent_h, ok)
        elif lay.kind in ("spatial", "cross"):
            # UNet layers: frames are folded into the batch, queries are one frame's grid
            frame = torch.arange(B, device=dev) % lay.frames
            cells = lay.cell_of(row_ids)
            self._emap_rows(branch_of, frame[:, None].expand(-1, row_ids.numel()), cells.expand(B, -1), ent_h, ok)
        if lay.kind == "spatial":
            if rs.key_pooled is not None:
                qc = lay.cell_of(row_ids)
                kp = rs.key_pooled[:, 0].double()  # (B,R,G)
                for b in range(lay.n_branch):
                    sel = branch_of == b
                    self.map_s[b].index_add_(0, qc, kp[sel].sum(0))
                    self.map_s_n[b].index_add_(0, qc, torch.full_like(qc, int(sel.sum()), dtype=torch.float64))
        elif lay.kind == "temporal":
            pos = torch.arange(B, device=dev) % (lay.th * lay.tw)
            cells = lay.cell_of(pos)
            self._emap_rows(branch_of, row_ids.expand(B, -1), cells[:, None].expand(-1, row_ids.numel()), ent_h, ok)
            if rs.key_pooled is not None:
                kp = rs.key_pooled[:, 0].double()  # (B,R,F)
                for b in range(lay.n_branch):
                    sel = branch_of == b
                    self.map_t[b].index_add_(0, row_ids, kp[sel].sum(0))
                    self.map_t_n[b].index_add_(0, row_ids, torch.full_like(row_ids, int(sel.sum()), dtype=torch.float64))
        elif lay.kind == "joint":
            T, hw = lay.text, lay.th * lay.tw
            vid = row_ids >= T
            vr = row_ids[vid] - T
            qf, qc = vr // hw, lay.cell_of(vr % hw)
            self._emap_rows(branch_of, qf.expand(B, -1), qc.expand(B, -1), ent_h[:, vid], ok[:, vid])
            if rs.key_pooled is not None:
                kp = rs.key_pooled[:, 0, vid].double().reshape(B, -1, F, G)  # (B,Rv,F,G)
                tot = kp.sum(dim=(2, 3), keepdim=True).clamp_min(1e-300)
                kp = kp / tot  # renormalize over video keys: text keys are not on the grid
                ks, kt = kp.sum(2), kp.sum(3)  # (B,Rv,G), (B,Rv,F)
                for b in range(lay.n_branch):
                    sel = branch_of == b
                    n = float(sel.sum())
                    self.map_s[b].index_add_(0, qc, ks[sel].sum(0))
                    self.map_s_n[b].index_add_(0, qc, torch.full_like(qc, n, dtype=torch.float64))
                    self.map_t[b].index_add_(0, qf, kt[sel].sum(0))
                    self.map_t_n[b].index_add_(0, qf, torch.full_like(qf, n, dtype=torch.float64))

    def _emap_rows(self, branch_of, frame, cell, ent_h, ok):
        """frame, cell, ent_h, ok: (B,R). Adds head-averaged row entropy onto (branch, frame, cell)."""
        G = self.lay.cells
        flat = (frame * G + cell).long()
        for b in range(self.lay.n_branch):
            sel = branch_of == b
            self.emap[b].view(-1).index_add_(0, flat[sel].reshape(-1), (ent_h[sel] * ok[sel]).reshape(-1))
            self.emap_n[b].view(-1).index_add_(0, flat[sel].reshape(-1), ok[sel].reshape(-1))

    def result(self) -> dict[str, torch.Tensor]:
        """Means and per-video sums, as float32 on CPU; NaN where nothing was recorded."""
        nan = float("nan")
        rows = self.rows
        res = {
            dims.ENTROPY: self.ent / rows,
            dims.ENTROPY_NORM: self.entn / rows,
            dims.MASS: self.mass / rows,
            dims.ENERGY: torch.where(rows > 0, self.energy / self.videos[:, None, None], nan),
            dims.VALUE_ENERGY: torch.where(rows > 0, self.venergy / self.videos[:, None, None], nan),
            dims.MAP_SPATIAL: self.map_s / self.map_s_n[..., None],
            dims.MAP_TEMPORAL: self.map_t / self.map_t_n[..., None],
            dims.ENTROPY_MAP: self.emap / self.emap_n,
        }
        return {k: v.float().cpu() for k, v in res.items()}


def accumulate(acc: Accumulator, q, k, v, mask, scale: float, out, *, maps: bool, rows=None,
               chunk_bytes: int = DEFAULT_CHUNK_BYTES, n_videos: int = 1) -> None:
    """Run the statistics kernel on one attention call and add it to ``acc``.

    q: (B,H,Nq,D); k, v: (B,H,Nk,·) with heads already expanded; out: the layer's original
    SDPA output (B,H,Nq,Dv), from which energies are taken.
    """
    B, H, Nq, _ = q.shape
    Nk = k.shape[-2]
    kw = kernel_args(acc.lay, Nq, Nk, maps, q.device)
    rs = row_stats(q, k, scale=scale, mask=mask, v=v if acc.lay.kind == "joint" else None,
                   chunk_rows=chunk_rows_for(B * H, Nk, chunk_bytes, q.device), rows=rows, **kw)
    acc.add(rs, out, v, rows, n_videos)
