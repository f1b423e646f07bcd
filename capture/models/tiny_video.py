"""More tiny random-weight video pipelines built from configs (no download), one per family:
ModelScope-style TextToVideoSD (UNet3D), Latte and LTX-Video. Sizes follow the dummy components
of diffusers' own pipeline tests, widened just enough for every attention kind to have a grid.
Their videos are noise; they exist to exercise capture, perturbation and guidance end to end.
"""

from __future__ import annotations

import torch
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from .tokenizer import VOCAB_SIZE, byte_clip_tokenizer

TEXT_DIM = 32
TEXT_TOKENS = 32


def _seeded(seed: int, offset: int) -> None:
    torch.manual_seed(seed * 1000 + offset)


def _t5(seed: int) -> T5EncoderModel:
    _seeded(seed, 9)
    return T5EncoderModel(T5Config(vocab_size=VOCAB_SIZE, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                   pad_token_id=513, eos_token_id=513, decoder_start_token_id=513))


def _kl_vae(seed: int, latent_channels: int = 4):
    from diffusers import AutoencoderKL

    _seeded(seed, 8)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(16,) * 4, layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=8)


def _done(pipe, *modules):
    for m in modules:
        m.eval()  # modules built from configs start in training mode (dropout on)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_text_to_video_sd(seed: int = 0):
    """UNet3DConditionModel (spatial, cross, temporal attention; `transformer_in` over frames)."""
    from diffusers import DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel

    _seeded(seed, 1)
    unet = UNet3DConditionModel(block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                                up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=TEXT_DIM,
                                attention_head_dim=8, norm_num_groups=8)
    vae, text_encoder = _kl_vae(seed), _clip_text(seed)
    scheduler = DDIMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              steps_offset=1)
    pipe = TextToVideoSDPipeline(vae=vae, text_encoder=text_encoder, tokenizer=byte_clip_tokenizer(77), unet=unet,
                                 scheduler=scheduler)
    return _done(pipe, unet, vae, text_encoder)


def tiny_latte(seed: int = 0, frames: int = 8):
    """Two Latte block pairs (spatial + cross per frame, temporal per patch position); ``frames`` is
    fixed by the transformer's temporal position embedding."""
    from diffusers import DDIMScheduler, LattePipeline, LatteTransformer3DModel

    _seeded(seed, 1)
    transformer = LatteTransformer3DModel(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8,
                                          num_attention_heads=2, caption_channels=TEXT_DIM, in_channels=4,
                                          cross_attention_dim=16, out_channels=8, attention_bias=True,
                                          activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                          norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
                                          video_length=frames)
    vae, text_encoder = _kl_vae(seed), _t5(seed)
    pipe = LattePipeline(tokenizer=byte_clip_tokenizer(TEXT_TOKENS), text_encoder=text_encoder, vae=vae,
                         transformer=transformer, scheduler=DDIMScheduler())
    return _done(pipe, transformer, vae, text_encoder)


def tiny_ltx(seed: int = 0):
    """Two LTX-Video blocks (3D video self-attention, masked text cross-attention); frames = 8k+1."""
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel

    _seeded(seed, 1)
    transformer = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                             num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                                             num_layers=2, caption_channels=TEXT_DIM)
    _seeded(seed, 2)
    vae = AutoencoderKLLTXVideo(in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8,) * 4,
                                decoder_block_out_channels=(8,) * 4, layers_per_block=(1,) * 5,
                                decoder_layers_per_block=(1,) * 5, spatio_temporal_scaling=(True, True, False, False),
                                decoder_spatio_temporal_scaling=(True, True, False, False),
                                decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4,
                                upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1, patch_size_t=1,
                                encoder_causal=True, decoder_causal=False)
    text_encoder = _t5(seed)
    pipe = LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                       tokenizer=byte_clip_tokenizer(TEXT_TOKENS), transformer=transformer)
    return _done(pipe, transformer, vae, text_encoder)


HUNYUAN_PROMPT_TEMPLATE = {"template": "{}", "crop_start": 0}  # the byte tokenizer has no chat template


def tiny_hunyuan(seed: int = 0):
    """One dual-stream and one single-stream HunyuanVideo block ([video; text] joint attention with
    the text padding mask) and one text-refiner block; Llama + CLIP text encoders; frames = 4k+1."""
    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
                           HunyuanVideoTransformer3DModel)
    from transformers import LlamaConfig, LlamaModel

    _seeded(seed, 1)
    transformer = HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2,
                                                 attention_head_dim=10, num_layers=1, num_single_layers=1,
                                                 num_refiner_layers=1, patch_size=1, patch_size_t=1,
                                                 guidance_embeds=True, text_embed_dim=TEXT_DIM,
                                                 pooled_projection_dim=TEXT_DIM, rope_axes_dim=(2, 4, 4))
    _seeded(seed, 2)
    vae = AutoencoderKLHunyuanVideo(in_channels=3, out_channels=3, latent_channels=4,
                                    down_block_types=("HunyuanVideoDownBlock3D",) * 4,
                                    up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8,) * 4,
                                    layers_per_block=1, norm_num_groups=4, spatial_compression_ratio=8,
                                    temporal_compression_ratio=4, mid_block_add_attention=True)
    _seeded(seed, 3)
    llama = LlamaModel(LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=TEXT_DIM, intermediate_size=64,
                                   num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=128, pad_token_id=513, bos_token_id=512, eos_token_id=513))
    clip = _clip_text(seed, offset=4)
    pipe = HunyuanVideoPipeline(text_encoder=llama, tokenizer=byte_clip_tokenizer(64), transformer=transformer,
                                vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=clip,
                                tokenizer_2=byte_clip_tokenizer(77))
    return _done(pipe, transformer, vae, llama, clip)


def _umt5(seed: int):
    from transformers import UMT5Config, UMT5EncoderModel

    _seeded(seed, 9)
    return UMT5EncoderModel(UMT5Config(vocab_size=VOCAB_SIZE, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2,
                                       num_heads=4, pad_token_id=513, eos_token_id=513, decoder_start_token_id=513))


def _wan_vae(seed: int):
    from diffusers import AutoencoderKLWan

    _seeded(seed, 8)
    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True])


def tiny_skyreels(seed: int = 0):
    """Two SkyReels-V2 blocks (Wan architecture: 3D video self-attention, text cross-attention)."""
    from diffusers import SkyReelsV2Pipeline, SkyReelsV2Transformer3DModel, UniPCMultistepScheduler

    _seeded(seed, 1)
    transformer = SkyReelsV2Transformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                               in_channels=16, out_channels=16, text_dim=TEXT_DIM, freq_dim=256,
                                               ffn_dim=32, num_layers=2, cross_attn_norm=True,
                                               qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    vae, text_encoder = _wan_vae(seed), _umt5(seed)
    pipe = SkyReelsV2Pipeline(tokenizer=byte_clip_tokenizer(64), text_encoder=text_encoder, transformer=transformer,
                              vae=vae, scheduler=UniPCMultistepScheduler(flow_shift=8.0, use_flow_sigmas=True,
                                                                         prediction_type="flow_prediction"))
    return _done(pipe, transformer, vae, text_encoder)


def tiny_allegro(seed: int = 0):
    """Two Allegro blocks (3D video self-attention, text cross-attention with the padding mask)."""
    from diffusers import AllegroPipeline, AllegroTransformer3DModel, AutoencoderKLAllegro, DDIMScheduler

    _seeded(seed, 1)
    transformer = AllegroTransformer3DModel(patch_size=2, patch_size_t=1, num_attention_heads=2, attention_head_dim=12,
                                            in_channels=4, out_channels=4, num_layers=2, cross_attention_dim=24,
                                            sample_height=8, sample_width=8, sample_frames=8,
                                            caption_channels=TEXT_DIM)
    _seeded(seed, 2)
    vae = AutoencoderKLAllegro(in_channels=3, out_channels=3, down_block_types=("AllegroDownBlock3D",) * 4,
                               up_block_types=("AllegroUpBlock3D",) * 4, block_out_channels=(8,) * 4,
                               latent_channels=4, layers_per_block=1, norm_num_groups=2,
                               temporal_compression_ratio=4)
    # Allegro decodes in tiles only (frames x height x width of pixels per tile): one tile of the
    # tiny default video (8 x 64 x 64)
    vae.enable_tiling()
    vae.kernel = vae.stride = (8, 64, 64)
    text_encoder = _t5(seed)
    pipe = AllegroPipeline(tokenizer=byte_clip_tokenizer(TEXT_TOKENS), text_encoder=text_encoder, vae=vae,
                           transformer=transformer, scheduler=DDIMScheduler())
    return _done(pipe, transformer, vae, text_encoder)


def tiny_mochi(seed: int = 0):
    """Two Mochi blocks (asymmetric joint attention: [video; text] per video, padded text dropped)."""
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    _seeded(seed, 1)
    transformer = MochiTransformer3DModel(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2,
                                          pooled_projection_dim=16, in_channels=12, out_channels=None,
                                          qk_norm="rms_norm", text_embed_dim=TEXT_DIM, time_embed_dim=4,
                                          activation_fn="swiglu", max_sequence_length=TEXT_TOKENS)
    _seeded(seed, 2)
    vae = AutoencoderKLMochi(latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
                             decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1))
    text_encoder = _t5(seed)
    pipe = MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                         tokenizer=byte_clip_tokenizer(TEXT_TOKENS), transformer=transformer)
    return _done(pipe, transformer, vae, text_encoder)


def _wan_transformer(seed: int, offset: int, **kw):
    from diffusers import WanTransformer3DModel

    _seeded(seed, offset)
    cfg = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
               text_dim=TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    cfg.update(kw)
    return WanTransformer3DModel(**cfg)


def tiny_wan22(seed: int = 0):
    """Wan 2.2's two experts: ``transformer`` for high noise (t >= 0.875 · 1000), ``transformer_2``
    for low noise, each two blocks; layer names start with the expert's attribute."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    high, low = _wan_transformer(seed, 1), _wan_transformer(seed, 2)
    vae, text_encoder = _wan_vae(seed), _umt5(seed)
    pipe = WanPipeline(tokenizer=byte_clip_tokenizer(64), text_encoder=text_encoder, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=high, transformer_2=low,
                       boundary_ratio=0.875)
    return _done(pipe, high, low, vae, text_encoder)


def tiny_wan_i2v(seed: int = 0):
    """Wan 2.1 image-to-video as its real checkpoint is built: a CLIP image encoder and
    ``added_kv_proj_dim``, so every attn2 makes two SDPA calls (image keys, then text keys)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    transformer = _wan_transformer(seed, 1, in_channels=36, image_dim=4, added_kv_proj_dim=24)
    _seeded(seed, 5)
    image_encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=4, projection_dim=4, num_hidden_layers=2,
                                                     num_attention_heads=2, image_size=32, intermediate_size=16,
                                                     patch_size=8))
    processor = CLIPImageProcessor(crop_size=32, size=32)
    vae, text_encoder = _wan_vae(seed), _umt5(seed)
    pipe = WanImageToVideoPipeline(tokenizer=byte_clip_tokenizer(512), text_encoder=text_encoder, vae=vae,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), image_processor=processor,
                                   image_encoder=image_encoder, transformer=transformer)
    return _done(pipe, transformer, vae, text_encoder, image_encoder)


def conditioning_image(height: int = 64, width: int = 64):
    """A deterministic RGB test image (colour gradients and a disc) for image-to-video presets."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    r = (255 * x / max(1, width - 1)).astype(np.uint8)
    g = (255 * y / max(1, height - 1)).astype(np.uint8)
    disc = ((x - width / 2) ** 2 + (y - height / 2) ** 2) < (min(height, width) / 4) ** 2
    b = np.where(disc, 255, 40).astype(np.uint8)
    return Image.fromarray(np.stack([r, g, b], -1))


def _clip_vision(seed: int, hidden: int = TEXT_DIM, projection: int = TEXT_DIM, image_size: int = 32,
                 patch_size: int = 8):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    _seeded(seed, 5)
    enc = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=hidden, projection_dim=projection,
                                                         num_hidden_layers=2, num_attention_heads=4,
                                                         image_size=image_size, intermediate_size=64,
                                                         patch_size=patch_size))
    return enc, CLIPImageProcessor(crop_size=image_size, size=image_size)


def _clip_text(seed: int, offset: int = 3):
    _seeded(seed, offset)
    return CLIPTextModel(CLIPTextConfig(vocab_size=VOCAB_SIZE, hidden_size=TEXT_DIM, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                        bos_token_id=512, eos_token_id=513, pad_token_id=513))


def tiny_i2vgenxl(seed: int = 0):
    """I2VGenXL: the UNet3D layout (spatial, cross, temporal, `transformer_in`) conditioned on an
    image; no callback_on_step_end (steps come from the UNet's timestep)."""
    from diffusers import DDIMScheduler, I2VGenXLPipeline, I2VGenXLUNet

    _seeded(seed, 1)
    unet = I2VGenXLUNet(block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4,
                        out_channels=4, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=TEXT_DIM,
                        attention_head_dim=8, num_attention_heads=None, norm_num_groups=4)
    vae, text_encoder = _kl_vae(seed), _clip_text(seed)
    image_encoder, processor = _clip_vision(seed)
    scheduler = DDIMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              steps_offset=1)
    pipe = I2VGenXLPipeline(vae=vae, text_encoder=text_encoder, tokenizer=byte_clip_tokenizer(77),
                            image_encoder=image_encoder, feature_extractor=processor, unet=unet, scheduler=scheduler)
    return _done(pipe, unet, vae, text_encoder, image_encoder)


def tiny_svd(seed: int = 0):
    """Stable Video Diffusion: spatial `transformer_blocks` and temporal `temporal_transformer_blocks`
    (each with self- and image cross-attention); conditioned on an image only, no prompt."""
    from diffusers import (AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline,
                           UNetSpatioTemporalConditionModel)

    _seeded(seed, 1)
    unet = UNetSpatioTemporalConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8,
                                            in_channels=8, out_channels=4,
                                            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                                            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
                                            cross_attention_dim=TEXT_DIM, num_attention_heads=(2, 4), num_frames=8,
                                            projection_class_embeddings_input_dim=3 * 8, addition_time_embed_dim=8)
    _seeded(seed, 2)
    vae = AutoencoderKLTemporalDecoder(block_out_channels=(32, 32, 32, 32),
                                       down_block_types=("DownEncoderBlock2D",) * 4, latent_channels=4,
                                       layers_per_block=1)
    image_encoder, processor = _clip_vision(seed, image_size=224, patch_size=32)  # SVD resizes to 224 itself
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       interpolation_type="linear", num_train_timesteps=1000,
                                       prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
                                       steps_offset=1, timestep_spacing="leading", timestep_type="continuous",
                                       use_karras_sigmas=True)
    pipe = StableVideoDiffusionPipeline(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler,
                                        feature_extractor=processor)
    return _done(pipe, unet, vae, image_encoder)


def tiny_sana_video(seed: int = 0):
    """SanaVideo: softmax-free linear self-attention (no attention map: not capturable) and softmax
    cross-attention to the text; no family of its own (the generic family)."""
    from diffusers import DPMSolverMultistepScheduler, SanaVideoPipeline, SanaVideoTransformer3DModel
    from transformers import Gemma2Config, Gemma2Model

    _seeded(seed, 1)
    transformer = SanaVideoTransformer3DModel(in_channels=16, out_channels=16, num_attention_heads=2,
                                              attention_head_dim=12, num_layers=2, num_cross_attention_heads=2,
                                              cross_attention_head_dim=12, cross_attention_dim=24,
                                              caption_channels=TEXT_DIM, sample_size=8, patch_size=(1, 2, 2),
                                              rope_max_seq_len=32)
    _seeded(seed, 3)
    text_encoder = Gemma2Model(Gemma2Config(vocab_size=VOCAB_SIZE, hidden_size=TEXT_DIM, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                            head_dim=16, max_position_embeddings=128, pad_token_id=513,
                                            bos_token_id=512, eos_token_id=513))
    pipe = SanaVideoPipeline(tokenizer=byte_clip_tokenizer(64), text_encoder=text_encoder, vae=_wan_vae(seed),
                             transformer=transformer, scheduler=DPMSolverMultistepScheduler())
    return _done(pipe, transformer, text_encoder)


CHAT_TEMPLATE = ("{% for m in messages %}{% if m['content'] is string %}{{ m['content'] }}"
                 "{% else %}{% for c in m['content'] %}{{ c['text'] }}{% endfor %}{% endif %}{% endfor %}")


def _qwen_text(seed: int, layers: int):
    """A tiny Qwen2.5-VL text model on the byte vocabulary (HunyuanVideo 1.5's and Kandinsky 5's
    text encoder)."""
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    _seeded(seed, 3)
    return Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(vocab_size=VOCAB_SIZE, hidden_size=TEXT_DIM, intermediate_size=64,
                                                    num_hidden_layers=layers, num_attention_heads=2,
                                                    num_key_value_heads=1, max_position_embeddings=256,
                                                    pad_token_id=513, bos_token_id=512, eos_token_id=513,
                                                    rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                                     "mrope_section": [2, 3, 3]}))


def tiny_hunyuan15(seed: int = 0):
    """HunyuanVideo 1.5: [video; text] joint attention with the text padding mask in every block, a
    text refiner, a guider running CFG as one call per branch; no callback_on_step_end."""
    from diffusers import (AutoencoderKLHunyuanVideo15, ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler,
                           HunyuanVideo15Pipeline, HunyuanVideo15Transformer3DModel)
    from transformers import ByT5Tokenizer

    _seeded(seed, 1)
    transformer = HunyuanVideo15Transformer3DModel(in_channels=9, out_channels=4, num_attention_heads=2,
                                                   attention_head_dim=10, num_layers=2, num_refiner_layers=1,
                                                   patch_size=1, patch_size_t=1, text_embed_dim=TEXT_DIM,
                                                   text_embed_2_dim=TEXT_DIM, image_embed_dim=16,
                                                   rope_axes_dim=(2, 4, 4), target_size=64, task_type="t2v")
    _seeded(seed, 2)
    vae = AutoencoderKLHunyuanVideo15(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 16),
                                      layers_per_block=1, spatial_compression_ratio=4, temporal_compression_ratio=4)
    qwen = _qwen_text(seed, layers=3)
    tokenizer = byte_clip_tokenizer(64)
    tokenizer.chat_template = CHAT_TEMPLATE
    byt5 = _t5(seed)
    pipe = HunyuanVideo15Pipeline(text_encoder=qwen, tokenizer=tokenizer, transformer=transformer, vae=vae,
                                  scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=byt5,
                                  tokenizer_2=ByT5Tokenizer(), guider=ClassifierFreeGuidance(guidance_scale=6.0))
    # the byte tokenizer has no system-prompt template to crop; short text sequences for a tiny model
    pipe.prompt_template_encode_start_idx, pipe.tokenizer_max_length, pipe.tokenizer_2_max_length = 0, 32, 16
    return _done(pipe, transformer, vae, qwen, byt5)


def tiny_ltx2(seed: int = 0):
    """LTX-2: one transformer with a video stream and an audio stream per block (self-attention,
    text cross-attention, and audio<->video cross-attention between the streams), Gemma 3 text
    encoder with text connectors, video and audio VAEs and a vocoder."""
    from diffusers import (AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, FlowMatchEulerDiscreteScheduler,
                           LTX2Pipeline, LTX2VideoTransformer3DModel)
    from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    _seeded(seed, 3)
    text_cfg = Gemma3TextConfig(vocab_size=VOCAB_SIZE, hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
                                sliding_window=64, pad_token_id=513, bos_token_id=512, eos_token_id=513)
    vision_cfg = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    image_size=32, patch_size=8)
    text_encoder = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text_cfg, vision_config=vision_cfg,
                                                               mm_tokens_per_image=4))
    _seeded(seed, 1)
    transformer = LTX2VideoTransformer3DModel(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1,
                                              num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                                              audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
                                              audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=2,
                                              qk_norm="rms_norm_across_heads", caption_channels=TEXT_DIM,
                                              rope_double_precision=False, rope_type="split")
    _seeded(seed, 4)
    connectors = LTX2TextConnectors(caption_channels=TEXT_DIM, text_proj_in_factor=text_cfg.num_hidden_layers + 1,
                                    video_connector_num_attention_heads=4, video_connector_attention_head_dim=8,
                                    video_connector_num_layers=1, video_connector_num_learnable_registers=None,
                                    audio_connector_num_attention_heads=4, audio_connector_attention_head_dim=8,
                                    audio_connector_num_layers=1, audio_connector_num_learnable_registers=None,
                                    connector_rope_base_seq_len=32, rope_theta=10000.0, rope_double_precision=False,
                                    causal_temporal_positioning=False, rope_type="split")
    _seeded(seed, 2)
    vae = AutoencoderKLLTX2Video(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                                 decoder_block_out_channels=(8,), layers_per_block=(1,), decoder_layers_per_block=(1, 1),
                                 spatio_temporal_scaling=(True,), decoder_spatio_temporal_scaling=(True,),
                                 decoder_inject_noise=(False, False), downsample_type=("spatial",),
                                 upsample_residual=(False,), upsample_factor=(1,), timestep_conditioning=False,
                                 patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False)
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    _seeded(seed, 6)
    audio_vae = AutoencoderKLLTX2Audio(base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1,
                                       attn_resolutions=None, in_channels=2, resolution=32, latent_channels=2,
                                       norm_type="pixel", causality_axis="height", dropout=0.0,
                                       mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160,
                                       is_causal=True, mel_bins=8)
    _seeded(seed, 7)
    vocoder = LTX2Vocoder(in_channels=2 * 8, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[4, 4],
                          upsample_factors=[2, 2], resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]],
                          leaky_relu_negative_slope=0.1, output_sampling_rate=16000)
    pipe = LTX2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae,
                        text_encoder=text_encoder, tokenizer=byte_clip_tokenizer(TEXT_TOKENS), connectors=connectors,
                        transformer=transformer, vocoder=vocoder)
    return _done(pipe, transformer, vae, audio_vae, text_encoder, connectors, vocoder)


def tiny_kandinsky5(seed: int = 0, **config):
    """Kandinsky 5: visual self-attention over the video tokens (joint), cross-attention to the
    Qwen2.5-VL text, text blocks of its own; channels-last latents; one transformer call per CFG
    branch. Its modulations start at zero (which gates every attention output off), so they are
    drawn at random too: a perturbation then changes the video, as in a trained model. ``config``:
    more transformer settings (``attention_type="nabla"``: sparse attention)."""
    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, Kandinsky5T2VPipeline,
                           Kandinsky5Transformer3DModel)

    _seeded(seed, 1)
    transformer = Kandinsky5Transformer3DModel(in_visual_dim=4, in_text_dim=TEXT_DIM, in_text_dim2=TEXT_DIM, time_dim=32,
                                               out_visual_dim=4, patch_size=(1, 2, 2), model_dim=48, ff_dim=128,
                                               num_text_blocks=1, num_visual_blocks=2, axes_dims=(8, 8, 8),
                                               visual_cond=False, **config)
    with torch.no_grad():
        for p in transformer.parameters():
            if not p.any():
                p.normal_(0.0, 0.2)
    _seeded(seed, 2)
    vae = AutoencoderKLHunyuanVideo(in_channels=3, out_channels=3, spatial_compression_ratio=8,
                                    temporal_compression_ratio=4, latent_channels=4, block_out_channels=(8, 8, 8, 8),
                                    layers_per_block=1, norm_num_groups=4)
    qwen = _qwen_text(seed, layers=2)
    clip = _clip_text(seed, offset=4)
    pipe = Kandinsky5T2VPipeline(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
                                 text_encoder=qwen, tokenizer=byte_clip_tokenizer(64), text_encoder_2=clip,
                                 tokenizer_2=byte_clip_tokenizer(77))
    # the byte tokenizer has no system prompt to crop
    pipe.prompt_template, pipe.prompt_template_encode_start_idx = "{}", 0
    return _done(pipe, transformer, vae, qwen, clip)
