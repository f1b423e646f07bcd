"""LTX-Video (LTXVideoTransformer3DModel): attn1 is full 3D self-attention over the video tokens
(joint, no text in the sequence), attn2 cross-attention to the text with its padding mask. The
latent arrives packed as (B, tokens, C) with the latent frame, height and width as arguments; the
VAE does the patching (transformer patch 1)."""

from __future__ import annotations

from .base import Family


class LTXFamily(Family):
    name = "ltx"
    denoiser_attr = "transformer"

    def kind(self, name, module):
        return "cross" if name.endswith("attn2") else "joint"
