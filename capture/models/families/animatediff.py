"""AnimateDiff (UNetMotionModel): spatial self (attn1) and cross (attn2) attention in the UNet's
`attentions`, temporal attention in the motion adapter's `motion_modules`."""

from __future__ import annotations

import torch

from .base import Family


class AnimateDiffFamily(Family):
    name = "animatediff"
    denoiser_attr = "unet"
    temporal_marker = ".motion_modules."

    def kind(self, name, module):
        if self.temporal_marker in f".{name}":
            return "temporal"
        return super().kind(name, module)

    def denoising_steps(self, pipe, record):
        steps = super().denoising_steps(pipe, record)
        passes = free_init_passes(pipe)
        if steps is None or passes is None:
            return steps
        iters, fast = passes
        # FreeInit runs the schedule once per iteration, with fast sampling on fewer steps at first
        return sum(max(1, int(steps / iters * (k + 1))) for k in range(iters)) if fast else steps * iters

    def batch_slice(self, args, kwargs, lo, batch):
        # the pipeline repeats the text embeddings per frame: (batch × frames, tokens, dim)
        frames = self.geometry(args, kwargs).frames
        ehs = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        args, kwargs = super().batch_slice(args, kwargs, lo, batch)
        if isinstance(ehs, torch.Tensor) and ehs.shape[0] == batch * frames and frames > 1:
            if "encoder_hidden_states" in kwargs:
                kwargs["encoder_hidden_states"] = ehs[lo * frames:]
            else:
                args = args[:2] + (ehs[lo * frames:],) + args[3:]
        return args, kwargs

    def probe_inputs(self, denoiser, frames, height, width, text_tokens):
        cfg = denoiser.config
        sample = torch.zeros(1, cfg.in_channels, frames, height // self.vae_scale, width // self.vae_scale)
        text = torch.zeros(frames, text_tokens, cfg.cross_attention_dim)  # the pipeline repeats text per frame
        return (sample, torch.tensor([1])), {"encoder_hidden_states": text}


def free_init_passes(pipe) -> tuple[int, bool] | None:
    """(iterations, fast sampling) of diffusers' FreeInit on this pipeline, None when it is off.
    The one place that reads FreeInitMixin's private settings (enable_free_init sets them)."""
    if not getattr(pipe, "free_init_enabled", False):
        return None
    return int(pipe._free_init_num_iters), bool(getattr(pipe, "_free_init_use_fast_sampling", False))
