"""Layer inventory with token counts: one denoiser forward on dummy inputs, SDPA shapes recorded.

Token counts depend on the video size, so they are measured, not computed from configs: the
probe runs the denoiser once at the requested frames x height x width and records, for every
attention layer, the query/key tokens and heads it actually used.
"""

from __future__ import annotations

import torch

from . import hooks
from .layers import inventory
from .models.families import family_of

PROBE_HOOK = "attnlens.probe"


def text_tokens_for(pipe, call_kwargs: dict | None = None) -> int:
    if call_kwargs and "max_sequence_length" in call_kwargs:
        return int(call_kwargs["max_sequence_length"])
    fam = family_of(pipe).name
    if fam == "cogvideox":
        return 226
    if fam == "wan":
        return 512
    tok = getattr(pipe, "tokenizer", None)
    return int(getattr(tok, "model_max_length", 77) or 77)


def probe_layers(pipe, *, frames: int, height: int, width: int, text_tokens: int) -> list[dict]:
    """One dict per attention layer: name, kind, block, heads, query_tokens, key_tokens, batch."""
    fam = family_of(pipe)
    den = fam.denoiser(pipe)
    layers = inventory(den, fam)
    modules = dict(den.named_modules())
    seen: dict[str, tuple] = {}

    def record(name, call):
        seen.setdefault(name, (tuple(call.q.shape), tuple(call.k.shape)))
        return call.original()

    args, kwargs = fam.probe_inputs(den, frames, height, width, text_tokens)
    p = next(den.parameters())
    args = tuple(a.to(p.device, p.dtype) if a.is_floating_point() else a.to(p.device) for a in args)
    kwargs = {k: (v.to(p.device, p.dtype) if v.is_floating_point() else v.to(p.device)) for k, v in kwargs.items()}
    try:
        for l in layers:
            hooks.register(modules[l.name], hooks.AttentionLayerHook(l.name, record), PROBE_HOOK)
        with torch.no_grad(), hooks.native_attention_backend():
            den(*args, **kwargs)
    finally:
        for l in layers:
            hooks.remove(modules[l.name], PROBE_HOOK)
    rows = []
    for l in layers:
        qs, ks = seen.get(l.name, ((0, 0, 0, 0), (0, 0, 0, 0)))
        rows.append(dict(name=l.name, kind=l.kind, block=l.block, heads=qs[1] or l.heads, query_tokens=qs[2],
                         key_tokens=ks[2], batch=qs[0]))
    return rows
