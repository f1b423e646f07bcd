"""Latte (LatteTransformer3DModel): alternating blocks; `transformer_blocks` attend within a frame
(attn1 spatial, attn2 cross to the text), `temporal_transformer_blocks` across frames at each
patch position."""

from __future__ import annotations

from .base import Family


class LatteFamily(Family):
    name = "latte"
    denoiser_attr = "transformer"

    def kind(self, name, module):
        if name.startswith("temporal_transformer_blocks."):
            return "temporal"
        return "cross" if name.endswith("attn2") or getattr(module, "is_cross_attention", False) else "spatial"
