"""Model families: the one place that knows each architecture's module names and input layout.

A family answers, for one kind of denoiser: which submodules are attention layers, their kind
(spatial / temporal / cross / joint, read from the architecture, not guessed from sizes) and
block, how to read the video geometry from the denoiser's forward arguments, and how to build
dummy denoiser inputs for a layer-inventory probe. Nothing else in the project names diffusers
model internals.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass

import torch

@dataclass(frozen=True)
class Geometry:
    """Video geometry of one denoiser call, in latent units."""

    batch: int  # denoiser batch (CFG branches × videos)
    frames: int  # latent frames
    height: int  # latent height
    width: int  # latent width
    patch: int = 1  # spatial patch size of a transformer (1 for UNets)
    patch_t: int = 1  # temporal patch size


def _is_attention(module: torch.nn.Module) -> bool:
    try:
        from diffusers.models.attention import AttentionModuleMixin
    except ImportError:  # older diffusers
        AttentionModuleMixin = ()
    from diffusers.models.attention_processor import Attention

    return isinstance(module, (Attention,) + ((AttentionModuleMixin,) if AttentionModuleMixin else ()))


def _block_rank(block: str) -> tuple[int, int]:
    head, _, idx = block.partition(".")
    order = {"down": 0, "mid": 1, "up": 2, "block": 3}
    return order.get(head, 4), int(idx) if idx.isdigit() else 0


class Family(abc.ABC):
    name = "generic"
    denoiser_attr = "unet"
    patch, patch_t = 1, 1
    separate_cfg_calls = False  # True: the pipeline calls the denoiser once per CFG branch (cond first)

    def __init__(self, denoiser=None):
        if denoiser is not None:
            self.configure(denoiser)

    def configure(self, denoiser) -> None:
        """Read what geometry needs from the denoiser's config (patch sizes)."""

    def denoiser(self, pipe):
        return getattr(pipe, self.denoiser_attr)

    def attention_layers(self, denoiser) -> list[tuple[str, torch.nn.Module, str, str]]:
        """(qualified name, module, kind, block) for every attention module, in data-flow order.

        named_modules() registers UNet up blocks before the mid block; sorting by block rank
        (down, mid, up, then transformer blocks) gives the order the data flows through.
        """
        out = []
        for name, mod in denoiser.named_modules():
            if name and _is_attention(mod):
                out.append((name, mod, self.kind(name, mod), self.block(name)))
        return sorted(out, key=lambda t: _block_rank(t[3]))

    def kind(self, name: str, module) -> str:
        return "cross" if getattr(module, "is_cross_attention", False) else "spatial"

    def block(self, name: str) -> str:
        m = re.match(r"(down|up)_blocks\.(\d+)", name)
        if m:
            return f"{m.group(1)}.{m.group(2)}"
        if name.startswith("mid_block"):
            return "mid"
        m = re.match(r"(?:transformer_)?blocks\.(\d+)", name)
        return f"block.{m.group(1)}" if m else name.split(".")[0]

    def batch_slice(self, args: tuple, kwargs: dict, lo: int, batch: int) -> tuple[tuple, dict]:
        """The denoiser inputs of batch items ``lo:`` of a call with ``batch`` items: every tensor
        whose first dimension is the batch is sliced (also inside dicts, lists and tuples);
        everything else (scalar timesteps, rotary embeddings, flags) is passed unchanged."""

        def cut(x):
            if isinstance(x, torch.Tensor):
                return x[lo:] if x.dim() > 0 and x.shape[0] == batch else x
            if isinstance(x, dict):
                return {k: cut(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return type(x)(cut(v) for v in x)
            return x

        return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}

    @abc.abstractmethod
    def geometry(self, args, kwargs) -> Geometry:
        """The video geometry of one denoiser call, from its forward arguments."""

    @abc.abstractmethod
    def probe_inputs(self, denoiser, frames: int, height: int, width: int, text_tokens: int):
        """(args, kwargs) for one denoiser forward at this video size (layer inventory probe)."""


class AnimateDiffFamily(Family):
    """UNetMotionModel: spatial self (attn1), cross (attn2) in `attentions`, temporal in `motion_modules`."""

    name = "animatediff"
    denoiser_attr = "unet"
    vae_scale = 8

    def kind(self, name, module):
        if ".motion_modules." in f".{name}":
            return "temporal"
        return super().kind(name, module)

    def geometry(self, args, kwargs):
        sample = kwargs.get("sample", args[0] if args else None)  # (B, C, F, H, W)
        b, _, f, h, w = sample.shape
        return Geometry(batch=b, frames=f, height=h, width=w)

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


class CogVideoXFamily(Family):
    """CogVideoXTransformer3DModel: one joint attention over [text; video] tokens per block."""

    name = "cogvideox"
    denoiser_attr = "transformer"
    vae_scale = 8
    time_scale = 4

    def kind(self, name, module):
        return "joint"

    def geometry(self, args, kwargs):
        hs = kwargs.get("hidden_states", args[0] if args else None)  # (B, F, C, H, W)
        b, f, _, h, w = hs.shape
        return Geometry(batch=b, frames=f, height=h, width=w, patch=self.patch, patch_t=self.patch_t)

    def configure(self, denoiser):
        self.patch = int(denoiser.config.patch_size)
        self.patch_t = int(denoiser.config.patch_size_t or 1)

    def probe_inputs(self, denoiser, frames, height, width, text_tokens):
        cfg = denoiser.config
        lat_f = (frames - 1) // self.time_scale + 1
        hs = torch.zeros(1, lat_f, cfg.in_channels, height // self.vae_scale, width // self.vae_scale)
        text = torch.zeros(1, text_tokens, cfg.text_embed_dim)
        return (hs,), {"encoder_hidden_states": text, "timestep": torch.tensor([1])}


class WanFamily(Family):
    """WanTransformer3DModel: attn1 is full 3D self-attention over video tokens, attn2 cross."""

    name = "wan"
    denoiser_attr = "transformer"
    separate_cfg_calls = True
    vae_scale = 8
    time_scale = 4

    def kind(self, name, module):
        if name.endswith("attn2") or getattr(module, "is_cross_attention", False):
            return "cross"
        return "joint"

    def configure(self, denoiser):
        p = denoiser.config.patch_size  # (t, h, w)
        self.patch_t, self.patch = int(p[0]), int(p[1])

    def geometry(self, args, kwargs):
        hs = kwargs.get("hidden_states", args[0] if args else None)  # (B, C, F, H, W)
        b, _, f, h, w = hs.shape
        return Geometry(batch=b, frames=f, height=h, width=w, patch=self.patch, patch_t=self.patch_t)

    def probe_inputs(self, denoiser, frames, height, width, text_tokens):
        cfg = denoiser.config
        lat_f = (frames - 1) // self.time_scale + 1
        hs = torch.zeros(1, cfg.in_channels, lat_f, height // self.vae_scale, width // self.vae_scale)
        text = torch.zeros(1, text_tokens, cfg.text_dim)
        return (hs, torch.tensor([1]), text), {}


def output_sample(out) -> torch.Tensor:
    """The prediction tensor of a denoiser's output (a diffusers output object or a tuple)."""
    return out[0] if isinstance(out, tuple) else out.sample


def with_sample(out, sample: torch.Tensor):
    """The denoiser output ``out`` with its prediction replaced by ``sample``."""
    if isinstance(out, tuple):
        return (sample, *out[1:])
    out.sample = sample
    return out


def family_of(pipe_or_denoiser) -> Family:
    """The family of a pipeline (or of its denoiser), by the denoiser's class."""
    den = pipe_or_denoiser
    for attr in ("unet", "transformer"):
        if getattr(pipe_or_denoiser, attr, None) is not None:
            den = getattr(pipe_or_denoiser, attr)
            break
    cls = type(den).__name__
    families = {
        "UNetMotionModel": AnimateDiffFamily,
        "CogVideoXTransformer3DModel": CogVideoXFamily,
        "WanTransformer3DModel": WanFamily,
    }
    if cls not in families:
        raise ValueError(
            f"unsupported denoiser {cls}: attnlens knows UNetMotionModel (AnimateDiff), "
            "CogVideoXTransformer3DModel and WanTransformer3DModel"
        )
    return families[cls](den)

