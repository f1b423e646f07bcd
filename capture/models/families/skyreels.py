"""SkyReels-V2 (SkyReelsV2Transformer3DModel): the Wan architecture (3D video self-attention in
attn1, cross-attention in attn2, image keys too in image-to-video checkpoints), one transformer
call per CFG branch, cond first."""

from __future__ import annotations

from .wan import WanFamily


class SkyReelsV2Family(WanFamily):
    name = "skyreels"
