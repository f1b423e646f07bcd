"""HunyuanVideo 1.5 (HunyuanVideo15Transformer3DModel): every block one joint attention over
[video; text] tokens (text behind the video: image-embedding, Qwen and ByT5 tokens) with the
padding mask, plus a text refiner (kind other). The pipeline's guider runs one transformer call
per condition (cond first); the pipeline has no callback_on_step_end, so steps come from the
transformer's timestep."""

from __future__ import annotations

from .hunyuan import HunyuanVideoFamily


class HunyuanVideo15Family(HunyuanVideoFamily):
    name = "hunyuan15"

    def cfg_branches(self, pipe, record=None):
        return guider_branches(getattr(pipe, "guider", None))


def guider_branches(guider) -> int:
    """Branches per step of a diffusers guider (ClassifierFreeGuidance: 2 while enabled and
    guidance_scale > 1). The one place that reads a guider's state."""
    if guider is None:
        return 1
    enabled = getattr(guider, "_enabled", True)
    return int(getattr(guider, "num_conditions", 1)) if enabled else 1
