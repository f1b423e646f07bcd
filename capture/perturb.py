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

import math
import re
from dataclasses import asdict, dataclass

import torch

KINDS = ("I", "U", "T", "M")


class PerturbSpecError(ValueError):
    pass


@dataclass(frozen=True)
class PerturbSpec:
    kind: str
    layers: str
    factor: float | None = None
    steps: tuple[int, int] | None = None  # inclusive
    branch: str | None = None  # None = every branch
    text: bool = False
    source: int | None = None  # M: the video whose maps are used
    video: int | None = None  # only this video of a batched call (None: every video)

    @classmethod
    def parse(cls, spec: str) -> "PerturbSpec":
        m = re.fullmatch(r"\s*([IUTM])(?:=([^@]+))?@([^:]+)((?::[^:]+)*)\s*", spec)
        if not m:
            raise PerturbSpecError(
                f"bad perturbation {spec!r}: expected I@LAYERS, U@LAYERS, T=FACTOR@LAYERS or M=VIDEO@LAYERS, "
                "optionally followed by :steps=A-B :branch=cond|uncond :video=K :text=1"
            )
        kind, factor, layers, opts = m.groups()
        kw: dict = {}
        if kind == "T":
            try:
                kw["factor"] = float(factor)
            except (TypeError, ValueError):
                raise PerturbSpecError(f"bad perturbation {spec!r}: T needs a numeric factor, e.g. T=0.5@...") from None
            if not (math.isfinite(kw["factor"]) and kw["factor"] >= 0):  # 0: every logit 0, i.e. uniform
                raise PerturbSpecError(f"bad perturbation {spec!r}: the temperature factor must be finite and >= 0")
        elif kind == "M":
            if factor is None or not factor.strip().isdigit():
                raise PerturbSpecError(f"bad perturbation {spec!r}: M needs the source video's index, e.g. M=0@...")
            kw["source"] = int(factor)
        elif factor is not None:
            raise PerturbSpecError(f"bad perturbation {spec!r}: only T and M take a value")
        for opt in filter(None, opts.split(":")):
            key, _, val = opt.partition("=")
            if key == "steps":
                kw["steps"] = parse_steps(val)
            elif key == "branch":
                if val not in ("cond", "uncond"):
                    raise PerturbSpecError(f"bad perturbation {spec!r}: branch must be cond or uncond")
                kw["branch"] = val
            elif key == "video":
                if not val.isdigit():
                    raise PerturbSpecError(f"bad perturbation {spec!r}: video must be a batch index >= 0")
                kw["video"] = int(val)
            elif key == "text":
                kw["text"] = val in ("1", "true", "yes")
            else:
                raise PerturbSpecError(f"bad perturbation {spec!r}: unknown option {key!r}")
        return cls(kind=kind, layers=layers.strip(), **kw)

    def __str__(self) -> str:
        s = self.kind + (f"={self.factor:g}" if self.factor is not None else "")
        s += (f"={self.source}" if self.source is not None else "") + "@" + self.layers
        if self.steps:
            s += f":steps={self.steps[0]}-{self.steps[1]}"
        if self.branch:
            s += f":branch={self.branch}"
        if self.video is not None:
            s += f":video={self.video}"
        if self.text:
            s += ":text=1"
        return s

    def describe(self) -> str:
        """The spec in words, e.g. "identity map (I) on kind=temporal, steps 0–3, cond branch only"."""
        what = {"I": "identity map (I)", "U": "uniform map (U)", "T": f"logits × {self.factor} (T)",
                "M": f"maps of video {self.source} injected (M)"}[self.kind]
        if self.kind == "T":
            what = f"logits × {self.factor:g} (T)"
        parts = [f"{what} on {self.layers}", f"steps {self.steps[0]}–{self.steps[1]}" if self.steps else "every step",
                 f"{self.branch} branch only" if self.branch else "both CFG branches"]
        if self.video is not None:
            parts.append(f"video {self.video} only")
        if self.text:
            parts.append("text rows too")
        return ", ".join(parts)

    def active(self, step: int) -> bool:
        return self.steps is None or self.steps[0] <= step <= self.steps[1]

    def applies_to(self, video: int) -> bool:
        """Whether this spec changes video ``video`` of a batched call."""
        if self.video is not None and video != self.video:
            return False
        return not (self.kind == "M" and video == self.source)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["spec"] = str(self)
        return d


def parse_steps(text: str, n_steps: int | None = None) -> tuple[int, int]:
    """'A-B' (inclusive) or 'A' -> (A, B). Raises on negative, reversed or out-of-range windows."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text or "")
    if not m:
        raise PerturbSpecError(f"bad step window {text!r}: expected A-B with 0 <= A <= B, e.g. 0-10")
    a = int(m.group(1))
    b = int(m.group(2)) if m.group(2) is not None else a
    if b < a:
        raise PerturbSpecError(f"bad step window {text!r}: end before start")
    if n_steps is not None and a >= n_steps:
        raise PerturbSpecError(f"step window {text!r} starts after the last step ({n_steps - 1})")
    return a, b


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
