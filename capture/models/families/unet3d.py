"""ModelScope-style 3D UNets (UNet3DConditionModel: TextToVideoSD, VideoToVideoSD, ZeroScope;
I2VGenXLUNet): spatial self (attn1) and cross (attn2) attention in `attentions`, temporal attention
in `temp_attentions`, in the input's `transformer_in` (both of whose attn1/attn2 attend over
frames) and in I2VGenXL's image-latent encoder. Frames are folded into the batch like AnimateDiff's."""

from __future__ import annotations

import inspect

from .animatediff import AnimateDiffFamily


class UNet3DFamily(AnimateDiffFamily):
    name = "unet3d"
    denoiser_attr = "unet"
    images_per_prompt = True  # I2VGenXL: a batch of prompts needs a list of images
    # attention over frames before the UNet's down blocks
    input_blocks = ("transformer_in.", "image_latents_temporal_encoder.")

    def kind(self, name, module):
        if ".temp_attentions." in f".{name}" or name.startswith(self.input_blocks):
            return "temporal"  # TransformerTemporalModel (and I2VGenXL's image-latent encoder): over frames
        return "cross" if getattr(module, "is_cross_attention", False) else "spatial"

    def block(self, name):
        return "in" if name.startswith(self.input_blocks) else super().block(name)

    def probe_inputs(self, denoiser, frames, height, width, text_tokens):
        import torch

        if "image_latents" in inspect.signature(denoiser.forward).parameters:
            raise NotImplementedError("I2VGenXL's UNet needs image latents: probed by a generation")
        cfg = denoiser.config
        sample = torch.zeros(1, cfg.in_channels, frames, height // self.vae_scale, width // self.vae_scale)
        text = torch.zeros(1, text_tokens, cfg.cross_attention_dim)  # the UNet repeats the text per frame itself
        return (sample, torch.tensor([1])), {"encoder_hidden_states": text}
