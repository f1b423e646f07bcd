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


def probe_by_generation(pipe, call: dict) -> list[dict]:
    """The inventory measured on a short generation (``call``: pipeline keyword arguments):
    for families without dummy denoiser inputs, and for kinds inferred at run time."""
    import tempfile

    from .tracer import CaptureConfig, Tracer, takes_prompt

    # two steps: some schedules (Mochi's) divide by steps − 1; only the first is captured
    call = dict(call, num_inference_steps=2, output_type="latent")
    with tempfile.TemporaryDirectory(prefix="attnlens-probe-") as tmp:
        tr = Tracer(pipe, root=tmp, config=CaptureConfig(layers=("all",), maps=False, steps=(0, 0)))
        text = {"prompt": "probe"} if takes_prompt(pipe) else {}
        with tr:
            pipe(**call, **text)
        rows = []
        for l in tr.inventory:
            m = tr._meta.get(l.name, {})
            kind, reason = tr.kinds_inferred.get(l.name, (l.kind, None))
            rows.append(dict(name=l.name, kind=kind, block=l.block, heads=m.get("heads", l.heads),
                             query_tokens=m.get("n_query", 0), key_tokens=m.get("n_key", 0), batch=0,
                             inferred=l.name in tr.kinds_inferred, not_capturable=l.not_capturable))
    return rows


def probe_layers(pipe, *, frames: int, height: int, width: int, text_tokens: int, call: dict | None = None) -> list[dict]:
    """One dict per attention layer: name, kind, block, heads, query_tokens, key_tokens, batch.

    One forward of each denoiser on the family's dummy inputs where it has them (every expert of
    Wan 2.2 included); otherwise (generic family, image-conditioned or multi-call layers) a two-step
    generation with ``call``, which also shows inferred kinds."""
    fam = family_of(pipe)
    layers = inventory(pipe, fam)
    if fam.infers_kinds or any(l.call is not None for l in layers):
        if call is None:
            raise ValueError(f"the {fam.name} family is probed by a generation: give the call")
        return probe_by_generation(pipe, call)
    modules = fam.named_modules(pipe)
    seen: dict[str, tuple] = {}

    def record(name, c):
        seen.setdefault(name, (tuple(c.q.shape), tuple(c.k.shape)))
        return c.original()

    for prefix, den in fam.denoisers(pipe):
        try:
            args, kwargs = fam.probe_inputs(den, frames, height, width, text_tokens)
        except NotImplementedError:
            if call is None:
                raise
            return probe_by_generation(pipe, call)
        p = next(den.parameters())
        args = tuple(a.to(p.device, p.dtype) if a.is_floating_point() else a.to(p.device) for a in args)
        kwargs = {k: (v.to(p.device, p.dtype) if v.is_floating_point() else v.to(p.device)) for k, v in kwargs.items()}
        mine = [l for l in layers if l.name.startswith(prefix)]
        try:
            for l in mine:
                hooks.register(modules[l.module], hooks.AttentionLayerHook(l.name, record), PROBE_HOOK)
            with torch.no_grad(), hooks.native_attention_backend(), hooks.eager_denoisers(None, (), [den]):
                den(*args, **kwargs)
        finally:
            for l in mine:
                hooks.remove(modules[l.module], PROBE_HOOK)
    rows = []
    for l in layers:
        qs, ks = seen.get(l.name, ((0, 0, 0, 0), (0, 0, 0, 0)))
        rows.append(dict(name=l.name, kind=l.kind, block=l.block, heads=qs[1] or l.heads, query_tokens=qs[2],
                         key_tokens=ks[2], batch=qs[0], not_capturable=l.not_capturable))
    return rows
