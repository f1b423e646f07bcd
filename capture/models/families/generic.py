"""The generic family: any diffusers denoiser whose attention modules reach SDPA.

Nothing is assumed about the architecture beyond diffusers' own attention modules. Before a run
a layer is ``cross`` (the module says it attends to an encoder) or ``self``; at its first call its
kind is inferred from the SDPA shapes against the call's video geometry (``infer_kind``) and
recorded as inferred. Statistics are exact whatever the kind; ``other`` layers get scalars only.
"""

from __future__ import annotations

import math

import torch

from .base import Family, Geometry

# why a layer's kind could not be inferred, shown in the run's one warning
OTHER_REASONS = {
    "tokens": "its token counts match no frame grid, frame sequence or video sequence of the call",
    "text_order": "a joint sequence with extra (text) tokens whose order against the video tokens is unknown",
}


def grid_sizes(height: int, width: int, levels: int = 8) -> dict[int, tuple[int, int]]:
    """Token count -> (h, w) of the latent grid at each 2^d downsampling (UNet resolutions)."""
    out: dict[int, tuple[int, int]] = {}
    for d in range(levels):
        h, w = math.ceil(height / 2**d), math.ceil(width / 2**d)
        out.setdefault(h * w, (h, w))
        if h == 1 and w == 1:
            break
    return out


def infer_kind(batch: int, nq: int, nk: int, geo: Geometry, *, cross_module: bool = False,
               text_first: bool | None = None, temporal_hint: bool = False) -> tuple[str, str | None]:
    """(kind, reason) of one SDPA call with ``batch`` items, ``nq`` queries and ``nk`` keys.

    - a batch of one item per (video, frame) and queries on a frame's token grid: ``spatial``
      (``cross`` when the keys are not the queries' tokens);
    - a batch of one item per (video, grid position) and one query per frame: ``temporal``;
    - a batch of one item per video and the whole video sequence as queries: ``joint``
      (``cross`` when the keys come from elsewhere); extra tokens beyond the video count as text,
      in front or behind by ``text_first`` (None: unknown, so ``other``);
    - anything else: ``other`` (reason in OTHER_REASONS).
    """
    B = max(1, geo.batch)
    th, tw = geo.token_hw
    grids = grid_sizes(th, tw)
    n_vid = geo.token_frames * th * tw
    frame_counts = {geo.frames, geo.token_frames}
    self_like = nq == nk and not cross_module
    per_frame = batch % B == 0 and batch // B in frame_counts and nq in grids
    per_pos = batch % B == 0 and batch // B in grids and nq in frame_counts and batch // B != 1
    if per_frame and per_pos and self_like:  # frames == grid cells: only the module's name can tell
        return ("temporal" if temporal_hint else "spatial"), None
    if per_pos:  # keys from elsewhere at each position: a temporal block's cross-attention (SVD)
        return ("temporal" if self_like else "cross"), None
    if per_frame:
        return ("spatial" if self_like else "cross"), None
    if batch == B and nq == n_vid and not self_like:
        return "cross", None
    if batch == B and self_like and nq >= n_vid:
        if nq == n_vid:
            return "joint", None
        if text_first is None:
            return "other", "text_order"
        return "joint", None
    return "other", "tokens"


def video_first(forward: tuple | None, v: torch.Tensor) -> bool | None:
    """Where the video tokens sit in a joint sequence of video and text tokens: True if first,
    False if last, None if this cannot tell. ``forward``: (attention module, args, kwargs) of the
    forward that made the SDPA call; ``v`` (B, H, N, D) its values. The module's own value
    projection of its video input (``to_v(hidden_states)``; values get no norm or rotary embedding
    in diffusers' processors) is compared with the first and with the last rows of ``v``."""
    if forward is None:
        return None
    module, args, kwargs = forward
    hs = kwargs.get("hidden_states", args[0] if args else None)
    text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
    to_v = getattr(module, "to_v", None)
    if not (isinstance(hs, torch.Tensor) and isinstance(text, torch.Tensor) and callable(to_v) and hs.dim() == 3):
        return None
    B, H, N, _ = v.shape
    n = hs.shape[1]
    if hs.shape[0] != B or not 0 < n < N:
        return None
    with torch.no_grad():
        mine = to_v(hs)
    if mine.shape[-1] % H:
        return None
    mine = mine.view(B, n, H, -1).transpose(1, 2).to(v.dtype)
    if mine.shape != v[:, :, :n].shape:
        return None
    tol = dict(rtol=1e-3, atol=1e-5) if v.dtype == torch.float32 else dict(rtol=2e-2, atol=1e-3)
    head, tail = torch.allclose(v[:, :, :n], mine, **tol), torch.allclose(v[:, :, N - n:], mine, **tol)
    return head if head != tail else None


class GenericFamily(Family):
    name = "generic"
    infers_kinds = True
    text_first = None

    def __init__(self, denoiser=None, attr: str = "unet"):
        self.denoiser_attr = attr
        super().__init__(denoiser)

    def kind(self, name, module):
        return "cross" if getattr(module, "is_cross_attention", False) else "self"
