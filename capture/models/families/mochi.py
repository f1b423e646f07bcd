"""Mochi (MochiTransformer3DModel): asymmetric joint attention, one `MochiAttention` per block over
[video; text] tokens (text behind the video). Its processor makes one SDPA call per batch item,
with that item's padded text tokens dropped, so each call has its own key count; they are kept
apart by batch item (branch and video) and add up into the layer's statistics."""

from __future__ import annotations

from .base import Family


class MochiFamily(Family):
    name = "mochi"
    denoiser_attr = "transformer"
    text_first = False
    per_item_calls = True
    time_scale = 6

    def kind(self, name, module):
        return "joint"
