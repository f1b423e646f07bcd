"""Random-weight pipelines with the real architectures' dimensions, for GPU benchmarks.

- ``sd15-animatediff-random``: Stable Diffusion 1.5 UNet + AnimateDiff v1-5-2 motion adapter dims
  (the SD VAE; a small random CLIP text encoder with SD's 768-wide output: text cost is not what
  is measured).
- ``cogvideox-2b-random``: CogVideoX-2b transformer and VAE dims (a one-layer T5 with the 4096-wide
  output the transformer expects).

Weights are initialized directly on the target device. The byte-level tokenizer of the tiny
presets stands in for the real ones; nothing is downloaded.
"""

from __future__ import annotations

import torch

CALL_KWARGS = {"cogvideox-2b-random": {"max_sequence_length": 226}}


def _eval(*mods):
    for m in mods:
        m.eval()


def sd15_animatediff(device, dtype):
    from diffusers import (AnimateDiffPipeline, AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel,
                           UNetMotionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    from capture.models.tokenizer import VOCAB_SIZE, byte_clip_tokenizer

    with torch.device(device):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
        adapter = MotionAdapter(block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2,
                                motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=32,
                                use_motion_mid_block=True)
        unet = UNetMotionModel.from_unet2d(unet, adapter)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        te = CLIPTextModel(CLIPTextConfig(vocab_size=VOCAB_SIZE, hidden_size=768, intermediate_size=1024,
                                          num_hidden_layers=1, num_attention_heads=12, max_position_embeddings=77,
                                          bos_token_id=512, eos_token_id=513, pad_token_id=513))
    _eval(unet, vae, te)
    sched = DDIMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1)
    pipe = AnimateDiffPipeline(vae=vae, text_encoder=te, tokenizer=byte_clip_tokenizer(77), unet=unet,
                               motion_adapter=adapter, scheduler=sched)
    return pipe.to(device=device, dtype=dtype)


def cogvideox_2b(device, dtype):
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from capture.models.tokenizer import VOCAB_SIZE, byte_clip_tokenizer

    with torch.device(device):
        torch.manual_seed(0)
        tr = CogVideoXTransformer3DModel(num_attention_heads=30, attention_head_dim=64, in_channels=16, out_channels=16,
                                         time_embed_dim=512, text_embed_dim=4096, num_layers=30, sample_width=90,
                                         sample_height=60, sample_frames=49, patch_size=2,
                                         temporal_compression_ratio=4, max_text_seq_length=226)
        vae = AutoencoderKLCogVideoX(latent_channels=16, temporal_compression_ratio=4)
        te = T5EncoderModel(T5Config(vocab_size=VOCAB_SIZE, d_model=4096, d_kv=64, d_ff=1024, num_layers=1,
                                     num_heads=8, pad_token_id=513, eos_token_id=513, decoder_start_token_id=513))
    _eval(tr, vae, te)
    pipe = CogVideoXPipeline(tokenizer=byte_clip_tokenizer(226), text_encoder=te, vae=vae, transformer=tr,
                             scheduler=CogVideoXDDIMScheduler())
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.vae.enable_tiling()  # as the CogVideoX docs advise for 480x720 decoding
    return pipe


def build(name: str, device="cuda", dtype=torch.float16):
    builders = {"sd15-animatediff-random": sd15_animatediff, "cogvideox-2b-random": cogvideox_2b}
    pipe = builders[name](device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe
