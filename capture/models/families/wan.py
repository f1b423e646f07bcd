"""Wan 2.1 / 2.2 (WanTransformer3DModel): attn1 is full 3D self-attention over video tokens, attn2
cross-attention to the text; with ``added_kv_proj_dim`` (image-to-video checkpoints) each attn2
makes two SDPA calls, over the image keys and over the text keys, kept apart as sub-layers
``attn2.image`` and ``attn2.text``. The pipeline calls the transformer once per CFG branch."""

from __future__ import annotations

import torch

from .base import Family


class WanFamily(Family):
    name = "wan"
    denoiser_attr = "transformer"
    separate_cfg_calls = True
    time_scale = 4

    def kind(self, name, module):
        if name.endswith("attn2") or getattr(module, "is_cross_attention", False):
            return "cross"
        return "joint"

    def calls(self, name, module):
        if name.endswith("attn2") and getattr(module, "add_k_proj", None) is not None:
            return ("image", "text")  # WanAttnProcessor: image keys first, then the text keys
        return ()

    def probe_inputs(self, denoiser, frames, height, width, text_tokens):
        cfg = denoiser.config
        lat_f = (frames - 1) // self.time_scale + 1
        hs = torch.zeros(1, cfg.in_channels, lat_f, height // self.vae_scale, width // self.vae_scale)
        text = torch.zeros(1, text_tokens, cfg.text_dim)
        return (hs, torch.tensor([1]), text), {}
