"""HunyuanVideo (HunyuanVideoTransformer3DModel): dual-stream `transformer_blocks` and single-stream
`single_transformer_blocks`, each one joint attention over [video; text] tokens (text behind the
video) with the text padding mask; the text refiner (`context_embedder.token_refiner`) attends
over text tokens only (kind other). True CFG runs the transformer once per branch, cond first,
when ``true_cfg_scale > 1`` and a negative prompt is given; the default is guidance-distilled."""

from __future__ import annotations

from .base import Family


class HunyuanVideoFamily(Family):
    name = "hunyuan"
    denoiser_attr = "transformer"
    separate_cfg_calls = True
    text_first = False
    time_scale = 4

    def kind(self, name, module):
        return "other" if name.startswith("context_embedder.") else "joint"

    def block(self, name):
        return "text" if name.startswith("context_embedder.") else super().block(name)

    def cfg_branches(self, pipe, record=None):
        record = record or {}
        neg = record.get("negative_prompt") is not None or record.get("negative_prompt_embeds") not in (None,)
        return 2 if float(record.get("true_cfg_scale") or 1.0) > 1 and neg else 1
