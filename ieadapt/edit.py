"""IE-Adapt text-guided editing (SPEC §5.2): source and target denoised together, the target taking
the source's attention maps in the selected layers for the first fraction of steps.

One batched pipeline call generates [source, target] from identical starting latents (the same
seed twice, or the DDIM inversion of a real video, see ieadapt.invert). Capture's ``M=0``
perturbation makes the target video's attention in the injected layers softmax(q_src k_srcᵀ) V_tgt
for steps ``0 … round(inject × steps) − 1`` in both CFG branches. The tracer splits the call into
two runs (source and target), each captured and stored like any other run; their ``ieadapt``
attributes link them.

Injected layers: the selection's spatial layers (by default chosen low-entropy: structure-carrying),
and with ``temporal`` also its temporal layers, or every temporal layer when it has none; likewise
``cross`` for cross-attention (prompt-to-prompt style: the target's words placed where the source's
words attended; needs source and target prompts whose tokens line up, e.g. one word swapped).

Metrics (stored with the target run): structure preservation against the source (SSIM, PSNR;
LPIPS with local weights), temporal consistency (flicker), fidelity to the target prompt (the demo
world's classifier on demo-world prompts; CLIP score with local weights).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from capture.selection import SelectionError
from capture.store import new_run_id
from capture.tracer import CaptureConfig, Tracer

log = logging.getLogger(__name__)


@dataclass
class EditResult:
    source_run: str
    target_run: str
    source_dir: object
    target_dir: object
    layers: list[str]
    inject_steps: int
    seconds: float
    frames: object = None  # (2, F, H, W, 3): source, target
    metrics: dict = field(default_factory=dict)


def injected_layers(selection_layers: list[str], kinds: dict[str, str], temporal: bool, cross: bool = False) -> list[str]:
    """The layers whose maps the target takes from the source (see the module docstring)."""
    out = [n for n in selection_layers if kinds.get(n) == "spatial"]
    for flag, kind in ((temporal, "temporal"), (cross, "cross")):
        if flag:
            chosen = [n for n in selection_layers if kinds.get(n) == kind]
            out += chosen or [n for n, k in kinds.items() if k == kind]
    joint = [n for n in selection_layers if kinds.get(n) == "joint"]  # 3D-attention models: their self layers
    return out + joint


def edit(pipe, layers: list[str], *, source_prompt: str, target_prompt: str, inject: float, call: dict,
         seed: int | None = None, source_latents: torch.Tensor | None = None, root=None, model: str | None = None,
         capture: CaptureConfig | None = None, attrs: dict | None = None, on_step=None) -> EditResult:
    """Edit the source (from ``seed``, or from ``source_latents`` e.g. a DDIM inversion) towards
    ``target_prompt``; returns both runs. ``call``: the other pipeline arguments."""
    if not 0.0 <= inject <= 1.0:
        raise SelectionError(f"injection fraction {inject} is not in [0, 1]")
    if (seed is None) == (source_latents is None):
        raise SelectionError("give exactly one source: a seed or inverted latents")
    if not layers and inject > 0:
        raise SelectionError("no layers to inject the source's maps into")
    n = int(call["num_inference_steps"])
    k = int(round(inject * n))
    perturb = [f"M=0@{','.join(layers)}:steps=0-{k - 1}"] if k > 0 else []
    ids = [new_run_id(), new_run_id()]
    while ids[1] == ids[0]:
        ids[1] = new_run_id()
    record = {"method": "edit", "source_prompt": source_prompt, "target_prompt": target_prompt, "inject": inject,
              "inject_steps": k, "layers": list(layers),
              "source": "seed" if seed is not None else "inversion", **(attrs or {}).get("ieadapt", {})}
    extra = {k_: v for k_, v in (attrs or {}).items() if k_ != "ieadapt"}
    tracer = Tracer(pipe, root=root, config=capture or CaptureConfig(), perturb=perturb, model=model,
                    attrs=extra, on_step=on_step, split_videos=True)
    tracer.next_run_ids = ids
    tracer.next_video_attrs = [{"ieadapt": {**record, "role": "source", "target_run": ids[1]}},
                               {"ieadapt": {**record, "role": "target", "source_run": ids[0]}}]
    kw = dict(call)
    if "image" in kw and not isinstance(kw["image"], (list, tuple)) and tracer.family.images_per_prompt:
        kw["image"] = [kw["image"]] * 2  # I2VGenXL: one conditioning image per prompt (the same for both)
    if source_latents is not None:
        kw["latents"] = source_latents.repeat(2, *[1] * (source_latents.dim() - 1))
    g = [torch.Generator().manual_seed(seed if seed is not None else 0) for _ in range(2)]
    t0 = time.perf_counter()
    with tracer:
        out = pipe(prompt=[source_prompt, target_prompt], generator=g, **kw)
    return EditResult(source_run=ids[0], target_run=ids[1], source_dir=tracer.run_dirs[-2],
                      target_dir=tracer.run_dirs[-1], layers=list(layers), inject_steps=k,
                      seconds=time.perf_counter() - t0, frames=getattr(out, "frames", None))


def measure_edit(res: EditResult, target_prompt: str, weights=None) -> dict:
    """Store and return the edit's metrics (see the module docstring) on the target run."""
    from capture import metrics_optional
    from capture.catalog import read_run_metrics
    from capture.metrics import measure_run
    from capture.sweep_exec import world_metrics

    measure_run(res.target_dir, res.source_dir)
    world_metrics(res.target_dir, target_prompt)  # skipped (logged) for prompts outside the demo world
    for a in metrics_optional.measure_run(res.target_dir, res.source_dir, weights):
        if not a.available:
            log.info("%s", a.line())
    rows = read_run_metrics(res.target_dir)
    means = rows[rows["frame"].isna()]
    res.metrics = dict(zip(means["metric"], means["value"]))
    return res.metrics
