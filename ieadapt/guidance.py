"""IE-Adapt enhancement by guidance (SPEC §5.2): steer away from a degraded prediction.

    ε̂ = ε_u + w (ε_c − ε_u) + s (ε_c − ε_p)        (without CFG: ε̂ = ε_c + s (ε_c − ε_p))

``ε_p`` is the conditional prediction with the selected layers' attention replaced by I or U. It
is computed by one extra denoiser call on the conditional batch items only, made by wrapping the
denoiser's forward (``capture.hooks.DenoiserWrapHook``), so it works for every pipeline family
capture supports without copying any pipeline. The extra call runs as the tracer's side pass: the
perturbation is capture's own (``Tracer(side_perturb=...)``), and the call is neither captured nor
counted as a CFG branch. The pipeline then applies its own CFG to the returned prediction; the
conditional half is returned as ``ε_c + (s / w)(ε_c − ε_p)`` so that its CFG gives ε̂ exactly.

Outside the step window, or where the schedule gives ``s = 0``, the denoiser call is untouched (no
extra forward, bit-identical output).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass

import torch

from capture import hooks
from capture.models.families import output_sample, with_sample

log = logging.getLogger(__name__)

SCHEDULES = {
    "constant": "s at every step of the window",
    "linear": "s at the window's first step, falling linearly to 0 after its last",
    "cosine": "s at the window's first step, falling along a half cosine to 0 after its last",
}


@dataclass(frozen=True)
class GuidanceConfig:
    scale: float = 3.0  # s
    perturb: str = "U"  # I | U: the degraded prediction's attention map in the selected layers
    steps: tuple[int, int] | None = None  # inclusive window of step indices; None: every step
    schedule: str = "constant"

    def __post_init__(self):
        if self.perturb not in ("I", "U"):
            raise ValueError(f"guidance perturbation must be I or U, not {self.perturb!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; one of {', '.join(SCHEDULES)}")

    def scale_at(self, step: int, n_steps: int) -> float:
        """s at ``step`` of a ``n_steps``-step sampling run (0 outside the window)."""
        a, b = self.steps if self.steps is not None else (0, n_steps - 1)
        if not a <= step <= b:
            return 0.0
        frac = (step - a) / (b - a + 1)  # 0 at the first step, < 1 at the last
        if self.schedule == "linear":
            return self.scale * (1.0 - frac)
        if self.schedule == "cosine":
            return self.scale * 0.5 * (1.0 + math.cos(math.pi * frac))
        return self.scale

    def side_spec(self, layers: list[str]) -> str:
        """The capture perturbation spec of the side pass (window applied by the guidance itself)."""
        return f"{self.perturb}@{','.join(layers)}"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["steps"] = list(self.steps) if self.steps else None
        return d


class Guidance:
    """The denoiser wrapper. ``tracer``: the active capture Tracer whose ``side_perturb`` holds
    :meth:`GuidanceConfig.side_spec`; ``guidance_scale``: the pipeline call's CFG scale w;
    ``n_steps``: its number of sampling steps."""

    def __init__(self, tracer, cfg: GuidanceConfig, guidance_scale: float, n_steps: int):
        self.tracer = tracer
        self.cfg = cfg
        self.w = float(guidance_scale)
        self.n_steps = int(n_steps)
        self.extra_calls = 0
        self.extra_items = 0  # batch items of the extra calls
        self.extra_seconds = 0.0

    def __call__(self, forward, args, kwargs):
        out = forward(*args, **kwargs)
        s = self.cfg.scale_at(self.tracer.step, self.n_steps)
        if s == 0.0:
            return out
        eps = output_sample(out)  # (B, ...) with B = branches × videos
        lo, cfg_on = self._cond_items(eps.shape[0])
        if lo is None:  # this call computes the unconditional branch (pipelines with one call per branch)
            return out
        t0 = time.perf_counter()
        a, k = self.tracer.family.batch_slice(args, kwargs, lo, eps.shape[0])
        with torch.no_grad(), self.tracer.side_pass():
            eps_p = output_sample(forward(*a, **k))
        self.extra_calls += 1
        self.extra_items += eps.shape[0] - lo
        self.extra_seconds += time.perf_counter() - t0
        eps_c = eps[lo:]
        factor = s / self._w(eps_c) if cfg_on else s
        new = eps.clone()
        new[lo:] = eps_c + factor * (eps_c - eps_p)
        return with_sample(out, new)

    def _w(self, eps_c: torch.Tensor):
        """The CFG scale the pipeline applies to this prediction: its public ``guidance_scale``
        when that is a per-frame tensor (Stable Video Diffusion's ramp), else the call's scale."""
        w = getattr(self.tracer.pipe, "guidance_scale", None)
        if isinstance(w, torch.Tensor) and w.numel() > 1:
            return w.to(eps_c.device, eps_c.dtype)[: eps_c.shape[0]]
        return self.w

    def _cond_items(self, batch: int) -> tuple[int | None, bool]:
        """(first conditional batch item or None, whether CFG is on) for this denoiser call."""
        tr = self.tracer
        if tr.call_branch is None:  # a call outside the CFG branches (LTX-2's own guidance passes)
            return None, False
        if tr.family.separate_cfg_calls:
            if tr.call_branch is None:
                return None, False
            branch, total = tr.call_branch
            return (0 if branch == total - 1 else None), total == 2
        cfg_on = batch == 2 * tr.n_videos
        return (batch // 2 if cfg_on else 0), cfg_on


def apply_guidance(tracer, cfg: GuidanceConfig, guidance_scale: float, n_steps: int):
    """Register the guidance wrapper on the tracer's denoiser; returns (Guidance, remove())."""
    g = Guidance(tracer, cfg, guidance_scale, n_steps)
    for den in tracer.denoisers:  # every expert of a multi-expert pipeline (Wan 2.2)
        hooks.register(den, hooks.DenoiserWrapHook(g), hooks.WRAP_HOOK)

    def remove():
        for den in tracer.denoisers:
            hooks.remove(den, hooks.WRAP_HOOK)

    return g, remove
