"""Stable Video Diffusion (UNetSpatioTemporalConditionModel): each `attentions` block has spatial
`transformer_blocks` (attn1 self within a frame, attn2 cross to the image embedding) and
`temporal_transformer_blocks` (attn1 across frames at each position, attn2 cross to the image
embedding, one query per frame). Frames are folded into the batch; the pipeline has no prompt."""

from __future__ import annotations

from .base import Family


class SVDFamily(Family):
    name = "svd"
    denoiser_attr = "unet"

    def kind(self, name, module):
        if name.endswith("attn2"):
            return "cross"
        return "temporal" if ".temporal_transformer_blocks." in name else "spatial"
