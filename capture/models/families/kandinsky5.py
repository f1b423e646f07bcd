"""Kandinsky 5 (Kandinsky5Transformer3DModel): ``visual_transformer_blocks.N.self_attention`` is
full 3D self-attention over the video tokens (joint, no text in the sequence), ``cross_attention``
attends to the text, and ``text_transformer_blocks.N.self_attention`` refines the text alone
(other). The latents are channels last, (B, F, H, W, C); the pipeline calls the transformer once
per CFG branch, cond first, while its guidance scale is above 1.

Checkpoints with sparse attention (``attention_type="nabla"``) put the video tokens in 8×8 blocks,
not in raster order, and the maps are laid out by raster position: there the visual layers are
``other`` (exact scalar statistics, no maps) rather than maps in the wrong places."""

from __future__ import annotations

import re

from .base import Family, guidance_scale


class Kandinsky5Family(Family):
    name = "kandinsky5"
    denoiser_attr = "transformer"
    latent_layout = "BFHWC"
    separate_cfg_calls = True
    time_scale = 4
    sparse = False  # the video tokens are in NABLA's block order

    def configure(self, denoiser) -> None:
        super().configure(denoiser)
        self.sparse = getattr(denoiser.config, "attention_type", None) == "nabla"

    def kind(self, name, module):
        if name.startswith("text_transformer_blocks") or self.sparse:
            return "other"
        return "cross" if name.endswith("cross_attention") else "joint"

    def block(self, name):
        m = re.match(r"(text|visual)_transformer_blocks\.(\d+)", name)
        if m is None:
            return super().block(name)
        return f"{'text' if m.group(1) == 'text' else 'block'}.{m.group(2)}"

    def cfg_branches(self, pipe, record=None):
        # Kandinsky5T2VPipeline makes the unconditional call while guidance_scale > 1
        g = guidance_scale(pipe, record)
        return 2 if g is not None and g > 1 else 1
