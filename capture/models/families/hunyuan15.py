"""HunyuanVideo 1.5 (HunyuanVideo15Transformer3DModel): every block one joint attention over
[video; text] tokens (text behind the video: image-embedding, Qwen and ByT5 tokens) with the
padding mask, plus a text refiner (kind other). The pipeline's guider runs one transformer call
per condition (cond first); the pipeline has no callback_on_step_end, so steps come from the
transformer's timestep."""

from __future__ import annotations

from .base import guider_branches
from .hunyuan import HunyuanVideoFamily


class HunyuanVideo15Family(HunyuanVideoFamily):
    name = "hunyuan15"
    decode_per_video = True  # its VAE's causal attention mask does not broadcast over a batch

    def decode_video(self, pipe, latents, record):
        lat = latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor  # as HunyuanVideo15Pipeline decodes
        return pipe.vae.decode(lat, return_dict=False)[0]

    def cfg_branches(self, pipe, record=None):
        return guider_branches(getattr(pipe, "guider", None))

