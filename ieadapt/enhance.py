"""IE-Adapt enhancement runs (SPEC §5.2): guidance or temperature on selected layers, captured.

Every run is an ordinary capture run in the trace root (same statistics, maps and video), with
an ``ieadapt`` attribute that records the method, its settings and the exact layers, so the
dashboard and the catalog compare it with its baseline (the same prompt and seed, plain CFG).

- ``guidance``: see ieadapt.guidance (one extra denoiser call on the conditional items per step
  inside the window).
- ``temperature``: the selected layers' logits are multiplied by ``factor`` in every branch inside
  the window (``factor`` < 1 raises their entropy, > 1 lowers it); no extra call. It is capture's
  ``T=`` perturbation, so the stored statistics of those layers are the unmodified maps' and the
  layers are flagged as perturbed.
- ``cfg``: plain generation with the same settings (the baseline), for comparisons.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field

import torch

from capture.selection import SelectionError
from capture.tracer import CaptureConfig, Tracer, takes_prompt

from .guidance import GuidanceConfig, apply_guidance

log = logging.getLogger(__name__)

MODES = ("guidance", "temperature", "cfg")
PAG_DEFAULT_LAYERS = "mid_block.*attn1"  # diffusers' AnimateDiffPAGPipeline default pag_applied_layers


@dataclass(frozen=True)
class EnhanceConfig:
    mode: str = "guidance"
    scale: float = 3.0  # guidance: s
    perturb: str = "U"  # guidance: I | U
    steps: tuple[int, int] | None = None  # inclusive step window; None: every step
    schedule: str = "constant"  # guidance: see ieadapt.guidance.SCHEDULES
    factor: float = 0.8  # temperature: logits × factor

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; one of {', '.join(MODES)}")
        if self.mode == "temperature" and not (math.isfinite(self.factor) and self.factor > 0):
            raise ValueError(f"temperature factor must be finite and > 0, not {self.factor}")
        if not (math.isfinite(self.scale) and self.scale >= 0):
            raise ValueError(f"guidance scale s must be finite and >= 0, not {self.scale}")
        if self.mode == "guidance":
            self.guidance()  # validates perturbation and schedule

    def guidance(self) -> GuidanceConfig:
        return GuidanceConfig(scale=self.scale, perturb=self.perturb, steps=self.steps, schedule=self.schedule)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["steps"] = list(self.steps) if self.steps else None
        return d


@dataclass
class EnhanceResult:
    run_id: str
    run_dir: object
    seconds: float
    extra_calls: int = 0  # guidance: extra denoiser calls made
    extra_items: int = 0  # guidance: batch items of those calls
    extra_seconds: float = 0.0
    layers: list[str] = field(default_factory=list)
    frames: object = None  # the pipeline's output frames (e.g. (videos, F, H, W, 3) floats for output_type="np")


def pag_layers(names: list[str], pattern: str = PAG_DEFAULT_LAYERS) -> list[str]:
    """The self-attention layers diffusers' PAG pipelines apply to for ``pattern`` (a regex
    searched in the qualified name, as ``PAGMixin`` does). ``names``: (name, kind) pairs."""
    return [n for n, kind in names if kind != "cross" and re.search(pattern, n)]


def enhance(pipe, layers: list[str], cfg: EnhanceConfig, *, prompt: str, seed: int, call: dict, root=None,
            model: str | None = None, capture: CaptureConfig | None = None, attrs: dict | None = None,
            run_id: str | None = None, on_step=None) -> EnhanceResult:
    """Generate ``prompt`` from ``seed`` with IE-Adapt ``cfg`` on ``layers`` and capture it.

    ``call``: the pipeline call's other arguments (num_inference_steps, guidance_scale, …)."""
    n_steps = int(call["num_inference_steps"])
    if cfg.steps and cfg.steps[0] >= n_steps:
        raise SelectionError(f"step window {cfg.steps[0]}-{cfg.steps[1]} starts after the last step ({n_steps - 1})")
    if cfg.mode != "cfg" and not layers:
        raise SelectionError("no layers to apply IE-Adapt to")
    attrs = dict(attrs or {})
    record = {"method": "enhance", **cfg.as_dict(), "layers": list(layers), **attrs.pop("ieadapt", {})}
    perturb, side = [], []
    if cfg.mode == "temperature":
        window = f":steps={cfg.steps[0]}-{cfg.steps[1]}" if cfg.steps else ""
        perturb = [f"T={cfg.factor:g}@{','.join(layers)}{window}"]
    elif cfg.mode == "guidance":
        side = [cfg.guidance().side_spec(layers)]
    tracer = Tracer(pipe, root=root, config=capture or CaptureConfig(), perturb=perturb, side_perturb=side,
                    model=model, attrs={**attrs, "ieadapt": record}, on_step=on_step)
    tracer.next_run_id = run_id
    t0 = time.perf_counter()
    g = None
    with tracer:
        remove = None
        if cfg.mode == "guidance":
            guider = getattr(pipe, "guider", None)  # HunyuanVideo 1.5: the scale lives on the guider
            w = call.get("guidance_scale", call.get("max_guidance_scale", getattr(guider, "guidance_scale", 1.0)))
            g, remove = apply_guidance(tracer, cfg.guidance(), float(w), n_steps)
        try:
            torch.manual_seed(seed)  # some pipelines (I2VGenXL) also draw from the global generator
            text = {"prompt": prompt} if takes_prompt(pipe) else {}  # Stable Video Diffusion: image only
            out = pipe(generator=torch.Generator().manual_seed(seed), **call, **text)
        finally:
            if remove is not None:
                remove()
    return EnhanceResult(run_id=tracer.run_id, run_dir=tracer.run_dirs[-1], seconds=time.perf_counter() - t0,
                         extra_calls=g.extra_calls if g else 0,
                         extra_items=g.extra_items if g else 0, extra_seconds=g.extra_seconds if g else 0.0,
                         layers=list(layers), frames=getattr(out, "frames", None))
