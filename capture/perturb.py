"""Attention-map perturbations: parsing specs and computing replaced outputs without N×N matrices.

Spec grammar (several per run)::

    KIND@LAYERS[:steps=A-B][:branch=cond|uncond][:video=K][:text=1]
    KIND = I | U | T=<factor> | M=<video>

- ``I``: the identity map (each query keeps itself): output = V. Self-attention only.
- ``U``: the uniform map over the allowed keys: output = mean of V over those keys.
- ``T=f``: logits × f (f < 1 raises entropy, f > 1 lowers it), through SDPA's own ``scale``.
- ``M=k``: the attention map of video ``k`` of the same batch (same CFG branch, frame or position)
  applied to each other video's values: output = softmax(q_k k_kᵀ) V. Used by editing: the
  target video takes the source video's maps. Needs a pipeline call with several videos.

``video=K`` applies a spec to video K of a batched call only (several videos per call: batched
sweep variants); by default every video (for ``M``: every video but the source).

``LAYERS`` uses the selection syntax of layers.py (no ``:`` inside). ``steps`` is an inclusive
window of step indices. In joint text+video layers only video query rows (and, for I/U, video
keys) are touched unless ``text=1``.
"""
from __future__ import annotations

import torch

from .perturb_spec import KINDS, PerturbSpec, PerturbSpecError, parse_steps  # noqa: F401  (the public names)


def _allowed(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """Mask -> float 0/1 weights of allowed keys (broadcastable to (B,H,Nq,Nk)), or None."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return mask.to(like.dtype)
    from .stats import allowed_keys  # padding written as a large finite bias counts as masked

    return allowed_keys(mask).to(like.dtype)


def identity_output(v: torch.Tensor, nq: int) -> torch.Tensor:
    """Output of the identity map: each query row takes its own value row."""
    if v.shape[-2] != nq:
        raise PerturbSpecError(f"I needs queries and keys to be the same tokens ({nq} queries vs {v.shape[-2]} keys)")
    return v.clone()


def uniform_output(v: torch.Tensor, nq: int, mask: torch.Tensor | None) -> torch.Tensor:
    """Output of the uniform map over allowed keys: (B,H,Nq,Dv), no Nq×Nk matrix beyond the mask."""
    w = _allowed(mask, v)
    if w is None:
        mean = v.mean(dim=-2, keepdim=True)
        return mean.expand(*v.shape[:-2], nq, v.shape[-1]).clone()
    w = w.expand(*w.shape[:-2], w.shape[-2], v.shape[-2])
    num = torch.matmul(w, v)  # rows of w: (.., Nq|1, Nk)
    den = w.sum(-1, keepdim=True).clamp_min(1)
    out = num / den
    return out.expand(*v.shape[:-2], nq, v.shape[-1]).clone()


def perturbed_output(spec: PerturbSpec, sdpa, q, k, v, mask, scale, orig: torch.Tensor | None, text: int,
                     source_items: torch.Tensor | None = None, text_first: bool = True) -> torch.Tensor:
    """The layer output with ``spec`` applied to every batch item (the caller picks branches).

    text: number of text tokens of a joint sequence, in front of the video tokens (or behind them
    with ``text_first=False``); their rows and keys are left alone unless spec.text. ``orig`` is
    the unperturbed output, needed only to keep text rows.
    """
    nq = q.shape[-2]
    T = 0 if spec.text else text
    vid = slice(T, None) if text_first else slice(0, nq - T)  # the video tokens
    if spec.kind == "T":
        out = sdpa(q, k, v, attn_mask=mask, scale=scale * spec.factor)
    elif spec.kind == "M":
        if source_items is None:
            raise PerturbSpecError(f"{spec}: M needs the batch's video layout")
        m = mask[source_items] if mask is not None and mask.dim() == 4 and mask.shape[0] == q.shape[0] else mask
        out = sdpa(q[source_items], k[source_items], v, attn_mask=m, scale=scale)
    elif spec.kind == "I":
        out = identity_output(v, nq)
    else:
        if T:
            vm = None if mask is None else mask[..., vid]
            out = uniform_output(v[..., vid, :], nq, vm)
        else:
            out = uniform_output(v, nq, mask)
    if T:  # text rows keep the original output
        if orig is None:
            orig = sdpa(q, k, v, attn_mask=mask, scale=scale)
        kept = orig.clone()
        kept[..., vid, :] = out[..., vid, :].to(kept.dtype)
        out = kept
    return out.to(v.dtype)
