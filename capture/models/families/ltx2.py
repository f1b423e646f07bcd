"""LTX-2 (LTX2VideoTransformer3DModel): every block has a video stream (attn1: 3D self-attention
over the video tokens, joint; attn2: cross-attention to the text) and an audio stream (audio_attn1,
audio_attn2), linked by audio_to_video_attn (video queries, audio keys: cross) and
video_to_audio_attn (audio queries, video keys). Audio-query layers are kind other: captured
exactly as scalars, with no video maps. The pipeline's extra guidance passes of a step (STG,
modality isolation) run uncaptured after the captured CFG call."""

from __future__ import annotations

from .base import Family


class LTX2Family(Family):
    name = "ltx2"
    denoiser_attr = "transformer"
    main_call_only = True

    def kind(self, name, module):
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "attn1":
            return "joint"
        if leaf in ("attn2", "audio_to_video_attn"):
            return "cross"
        return "other"  # audio_attn1, audio_attn2, video_to_audio_attn: audio queries
