"""CogVideoX (CogVideoXTransformer3DModel): one joint attention over [text; video] tokens per block."""

from __future__ import annotations

import torch

from .base import Family


class CogVideoXFamily(Family):
    name = "cogvideox"
    denoiser_attr = "transformer"
    latent_layout = "BFCHW"
    time_scale = 4
    text_first = True

    def kind(self, name, module):
        return "joint"

    def probe_inputs(self, denoiser, frames, height, width, text_tokens):
        cfg = denoiser.config
        lat_f = (frames - 1) // self.time_scale + 1
        hs = torch.zeros(1, lat_f, cfg.in_channels, height // self.vae_scale, width // self.vae_scale)
        text = torch.zeros(1, text_tokens, cfg.text_embed_dim)
        return (hs,), {"encoder_hidden_states": text, "timestep": torch.tensor([1])}
