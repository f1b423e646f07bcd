"""Tiny random-weight pipelines built from configs: deterministic from a seed, no download.

They have the real architectures (AnimateDiff UNet + motion modules; CogVideoX joint 3D
transformer), so every attention kind exists and the real diffusers pipelines run them, in seconds
on a laptop CPU. Their videos are noise: they exist to exercise capture end to end.
"""

from __future__ import annotations

import torch
from diffusers import (
    AnimateDiffPipeline,
    AutoencoderKL,
    AutoencoderKLCogVideoX,
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    WanPipeline,
    WanTransformer3DModel,
    CogVideoXDDIMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    DDIMScheduler,
    MotionAdapter,
    UNet2DConditionModel,
    UNetMotionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

from .tokenizer import VOCAB_SIZE, byte_clip_tokenizer

TEXT_DIM = 32
COGVIDEOX_TEXT_TOKENS = 32  # the byte tokenizer spends one token per character
WAN_TEXT_TOKENS = 64


def _seeded(seed: int, offset: int) -> None:
    torch.manual_seed(seed * 1000 + offset)


def tiny_animatediff(seed: int = 0) -> AnimateDiffPipeline:
    """Two resolution levels (spatial self, cross and temporal attention in each) + a mid block."""
    _seeded(seed, 1)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    _seeded(seed, 2)
    adapter = MotionAdapter(
        block_out_channels=(32, 64),
        motion_layers_per_block=1,
        motion_num_attention_heads=4,
        motion_norm_num_groups=8,
        motion_max_seq_length=32,
        use_motion_mid_block=True,
    )
    unet = UNetMotionModel.from_unet2d(unet, adapter)
    _seeded(seed, 3)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
    )
    _seeded(seed, 4)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=TEXT_DIM,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=512,
            eos_token_id=513,
            pad_token_id=513,
        )
    )
    scheduler = DDIMScheduler(
        beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1
    )
    for m in (unet, vae, text_encoder):
        m.eval()  # modules built from configs start in training mode (dropout on)
    pipe = AnimateDiffPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=byte_clip_tokenizer(77),
        unet=unet,
        motion_adapter=adapter,
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_cogvideox(seed: int = 0) -> CogVideoXPipeline:
    """Two joint (text + video) transformer blocks; frames must be 4k+1 (latent frames = k+1)."""
    _seeded(seed, 1)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=16,
        text_embed_dim=TEXT_DIM,
        num_layers=2,
        sample_width=8,
        sample_height=8,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=COGVIDEOX_TEXT_TOKENS,
    )
    _seeded(seed, 2)
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    _seeded(seed, 3)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=VOCAB_SIZE,
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            pad_token_id=513,
            eos_token_id=513,
            decoder_start_token_id=513,
        )
    )
    for m in (transformer, vae, text_encoder):
        m.eval()  # modules built from configs start in training mode (dropout on)
    pipe = CogVideoXPipeline(
        tokenizer=byte_clip_tokenizer(COGVIDEOX_TEXT_TOKENS),
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=CogVideoXDDIMScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_wan(seed: int = 0) -> WanPipeline:
    """Two Wan blocks (3D video self-attention + text cross-attention); frames = 4k+1."""
    _seeded(seed, 1)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    _seeded(seed, 2)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    _seeded(seed, 3)
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=VOCAB_SIZE, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   pad_token_id=513, eos_token_id=513, decoder_start_token_id=513)
    )
    for m in (transformer, vae, text_encoder):
        m.eval()
    pipe = WanPipeline(
        tokenizer=byte_clip_tokenizer(WAN_TEXT_TOKENS),
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
