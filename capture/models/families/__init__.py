"""Model families: the one place that knows each architecture's module names and input layout.

One file per family, each a small declaration (see base.Family); ``FAMILIES`` maps denoiser
class names to them, and any other denoiser gets the generic family, which infers layer kinds
from token counts at run time. Nothing else in the project names a diffusers model class.
"""

from __future__ import annotations

import torch

from .allegro import AllegroFamily
from .animatediff import AnimateDiffFamily
from .base import Family, Geometry, block_rank, is_attention, output_sample, unwrap_compiled, with_sample
from .cogvideox import CogVideoXFamily
from .generic import GenericFamily, infer_kind
from .hunyuan import HunyuanVideoFamily
from .hunyuan15 import HunyuanVideo15Family
from .kandinsky5 import Kandinsky5Family
from .latte import LatteFamily
from .ltx import LTXFamily
from .ltx2 import LTX2Family
from .mochi import MochiFamily
from .skyreels import SkyReelsV2Family
from .svd import SVDFamily
from .unet3d import UNet3DFamily
from .wan import WanFamily

# denoiser class name -> family
FAMILIES: dict[str, type[Family]] = {
    "UNetMotionModel": AnimateDiffFamily,
    "CogVideoXTransformer3DModel": CogVideoXFamily,
    "WanTransformer3DModel": WanFamily,
    "UNet3DConditionModel": UNet3DFamily,
    "I2VGenXLUNet": UNet3DFamily,
    "LatteTransformer3DModel": LatteFamily,
    "LTXVideoTransformer3DModel": LTXFamily,
    "HunyuanVideoTransformer3DModel": HunyuanVideoFamily,
    "SkyReelsV2Transformer3DModel": SkyReelsV2Family,
    "AllegroTransformer3DModel": AllegroFamily,
    "MochiTransformer3DModel": MochiFamily,
    "UNetSpatioTemporalConditionModel": SVDFamily,
    "HunyuanVideo15Transformer3DModel": HunyuanVideo15Family,
    "LTX2VideoTransformer3DModel": LTX2Family,
    "Kandinsky5Transformer3DModel": Kandinsky5Family,
}

DENOISER_ATTRS = ("unet", "transformer", "prior")


def denoiser_of(pipe_or_denoiser):
    """(denoiser, attribute name) of a pipeline; a denoiser passed directly is returned as is. A
    denoiser wrapped by ``torch.compile`` is the module it wraps (see unwrap_compiled)."""
    for attr in DENOISER_ATTRS:
        den = getattr(pipe_or_denoiser, attr, None)
        if isinstance(den, torch.nn.Module):
            return unwrap_compiled(den), attr
    if hasattr(pipe_or_denoiser, "components"):
        raise ValueError(f"{type(pipe_or_denoiser).__name__} has no denoiser (no unet or transformer component)")
    return unwrap_compiled(pipe_or_denoiser), None


def family_of(pipe_or_denoiser) -> Family:
    """The family of a pipeline (or of its denoiser), by the denoiser's class; the generic family
    for a denoiser no family declares."""
    den, attr = denoiser_of(pipe_or_denoiser)
    cls = FAMILIES.get(type(den).__name__)
    if cls is None:
        return GenericFamily(den, attr or "unet")
    fam = cls(den)
    if attr and attr != fam.denoiser_attr:
        fam.denoiser_attr = attr
    return fam


__all__ = ["Family", "Geometry", "FAMILIES", "family_of", "denoiser_of", "output_sample", "with_sample",
           "AnimateDiffFamily", "CogVideoXFamily", "WanFamily", "UNet3DFamily", "LatteFamily", "LTXFamily", "HunyuanVideoFamily", "SkyReelsV2Family",
           "AllegroFamily", "MochiFamily", "SVDFamily", "HunyuanVideo15Family",
           "LTX2Family", "Kandinsky5Family", "GenericFamily", "infer_kind", "block_rank",
           "is_attention"]
