"""The family base class: what every architecture declaration answers, and the shared readers.

A family answers, for one kind of denoiser: which submodules are attention layers, their kind
(spatial / temporal / cross / joint / other) and block, how many SDPA calls each makes per forward
(kept apart as sub-layers), where the text tokens of a joint sequence are, how to read the video
geometry and the timestep from the denoiser's forward arguments, how the pipeline lays out CFG
branches, and how to build dummy denoiser inputs for a layer-inventory probe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

# axes of a denoiser's 5-D latent input: diffusers' UNets and most transformers, CogVideoX-style,
# and channels last (Kandinsky 5)
LATENT_LAYOUTS = ("BCFHW", "BFCHW", "BFHWC")


@dataclass(frozen=True)
class Geometry:
    """Video geometry of one denoiser call, in latent units."""

    batch: int  # denoiser batch (CFG branches × videos)
    frames: int  # latent frames
    height: int  # latent height
    width: int  # latent width
    patch: int = 1  # spatial patch size of a transformer (1 for UNets)
    patch_t: int = 1  # temporal patch size

    @property
    def token_frames(self) -> int:
        return max(1, self.frames // max(1, self.patch_t))

    @property
    def token_hw(self) -> tuple[int, int]:
        return self.height // self.patch, self.width // self.patch


def unwrap_compiled(module):
    """The module a ``torch.compile`` wrapper (``OptimizedModule``) holds, else the module itself:
    its ``named_modules()`` carry the model's own names, not ``_orig_mod.``-prefixed ones."""
    inner = getattr(module, "_orig_mod", None)
    if isinstance(inner, torch.nn.Module) and type(module).__name__ == "OptimizedModule":
        return inner
    return module


def is_attention(module: torch.nn.Module) -> bool:
    """A diffusers attention module (the classic ``Attention`` or any ``AttentionModuleMixin``)."""
    try:
        from diffusers.models.attention import AttentionModuleMixin
    except ImportError:  # older diffusers
        AttentionModuleMixin = ()
    from diffusers.models.attention_processor import Attention

    if isinstance(module, (Attention,) + ((AttentionModuleMixin,) if AttentionModuleMixin else ())):
        return True
    # attention modules of their own (MochiAttention, ...): a processor and heads, diffusers' shape
    return (type(module).__name__.endswith("Attention") and hasattr(module, "processor")
            and hasattr(module, "heads") and type(module).__module__.startswith("diffusers."))


def block_rank(block: str) -> tuple[int, int]:
    head, _, idx = block.partition(".")
    order = {"text": -2, "in": -1, "down": 0, "mid": 1, "up": 2, "block": 3, "single": 4}
    return order.get(head, 5), int(idx) if idx.isdigit() else 0


def _arg(args, kwargs, names: tuple[str, ...], pos: int | None):
    for n in names:
        if kwargs.get(n) is not None:
            return kwargs[n]
    if pos is not None and len(args) > pos:
        return args[pos]
    return None


def config_patch(cfg) -> tuple[int, int]:
    """(spatial, temporal) patch size from a denoiser config (int, (t, h, w) tuple or absent)."""
    p = getattr(cfg, "patch_size", None) or 1
    pt = getattr(cfg, "patch_size_t", None)
    if isinstance(p, (list, tuple)):
        pt, p = (p[0], p[1]) if len(p) == 3 else (pt, p[0])
    return int(p), int(pt or 1)


@dataclass(frozen=True)
class Sublayer:
    """One SDPA call of a module that makes several per forward (e.g. Wan I2V's image and text keys)."""

    label: str


class Family:
    """Base family; subclasses are small declarations (see the package docstring)."""

    name = "generic"
    denoiser_attr = "unet"
    patch, patch_t = 1, 1
    separate_cfg_calls = False  # True: the pipeline calls the denoiser once per CFG branch (cond first)
    text_first: bool | None = True  # joint layers: text tokens before (True) or after (False) the video
    infers_kinds = False  # kinds come from token counts at run time (the generic family)
    per_item_calls = False  # the attention processor makes one SDPA call per batch item (Mochi)
    main_call_only = False  # capture the first denoiser call of a step; later ones are guidance passes (LTX-2)
    images_per_prompt = False  # image-to-video pipelines that take one conditioning image per prompt (I2VGenXL)
    decode_per_video = False  # the pipeline's VAE decode fails on several videos: the tracer decodes one at a time

    def decode_video(self, pipe, latents: torch.Tensor, record: dict) -> torch.Tensor:
        """One video's latents (batch 1) -> the pipeline's decoded video tensor, as its own decode
        step makes it (only for families with ``decode_per_video``)."""
        raise NotImplementedError(f"the {self.name} family has no per-video decode")
    latent_layout = "BCFHW"  # axes of the denoiser's 5-D latent input (one of LATENT_LAYOUTS)
    pixel_hw: tuple[int, int] | None = None  # the pipeline call's (height, width), set by the tracer
    vae_scale, time_scale = 8, 1

    def __init__(self, denoiser=None):
        if denoiser is not None:
            self.configure(denoiser)

    # -- architecture ---------------------------------------------------------------------------
    def configure(self, denoiser) -> None:
        """Read what geometry needs from the denoiser's config (patch sizes, latent channels)."""
        cfg = denoiser.config
        self.patch, self.patch_t = config_patch(cfg)
        self.in_channels = getattr(cfg, "in_channels", None) or getattr(cfg, "in_visual_dim", None)  # Kandinsky 5

    def denoiser(self, pipe):
        return unwrap_compiled(getattr(pipe, self.denoiser_attr))

    def denoisers(self, pipe) -> list[tuple[str, torch.nn.Module]]:
        """(name prefix, denoiser) of every denoiser the pipeline runs: the prefix is "" for one
        denoiser, else its attribute and a dot (``transformer.``, ``transformer_2.``). A denoiser
        wrapped by ``torch.compile`` is the module it wraps, with the model's own layer names."""
        if not hasattr(pipe, "components"):  # a denoiser passed directly
            return [("", unwrap_compiled(pipe))]
        found = [(a, getattr(pipe, a, None)) for a in self.denoiser_attrs()]
        found = [(a, unwrap_compiled(m)) for a, m in found if isinstance(m, torch.nn.Module)]
        if len(found) == 1:
            return [("", found[0][1])]
        return [(f"{a}.", m) for a, m in found]

    def denoiser_attrs(self) -> tuple[str, str]:
        """The pipeline attributes that may hold a denoiser (Wan 2.2's second expert as well)."""
        return self.denoiser_attr, f"{self.denoiser_attr}_2"

    def all_attention_layers(self, pipe_or_denoiser):
        """(prefix, module, name, kind, block) over every denoiser, in data-flow order per denoiser."""
        return [(prefix, mod, name, kind, block) for prefix, den in self.denoisers(pipe_or_denoiser)
                for name, mod, kind, block in self.attention_layers(den)]

    def named_modules(self, pipe) -> dict[str, torch.nn.Module]:
        """Every module of the denoiser(s) by the names the inventory uses."""
        return {prefix + n: m for prefix, den in self.denoisers(pipe) for n, m in den.named_modules()}

    def attention_layers(self, denoiser) -> list[tuple[str, torch.nn.Module, str, str]]:
        """(qualified name, module, kind, block) for every attention module, in data-flow order.

        named_modules() registers UNet up blocks before the mid block; sorting by block rank
        (down, mid, up, then transformer blocks) gives the order the data flows through.
        """
        out = []
        for name, mod in denoiser.named_modules():
            if name and is_attention(mod):
                out.append((name, mod, self.kind(name, mod), self.block(name)))
        return sorted(out, key=lambda t: block_rank(t[3]))

    def kind(self, name: str, module) -> str:
        return "cross" if getattr(module, "is_cross_attention", False) else "spatial"

    def not_capturable(self, name: str, module) -> str | None:
        """Why a layer has no attention map to capture (None: it has one). Softmax-free linear
        attention (SanaVideo's self-attention) never forms softmax(q kᵀ), so there is no entropy."""
        proc = type(getattr(module, "processor", None)).__name__
        if "LinearAttn" in proc:
            return f"softmax-free linear attention ({proc}): no attention map, so no entropy or energy of one"
        return None

    def calls(self, name: str, module) -> tuple[str, ...]:
        """Labels of the SDPA calls the module makes per forward, when it makes several; each
        becomes a sub-layer ``name.label``. () for the usual single call."""
        return ()

    def block(self, name: str) -> str:
        m = re.match(r"(down|up)_blocks\.(\d+)", name)
        if m:
            return f"{m.group(1)}.{m.group(2)}"
        if name.startswith("mid_block"):
            return "mid"
        m = re.match(r"single_transformer_blocks\.(\d+)", name)
        if m:
            return f"single.{m.group(1)}"
        m = re.match(r"(?:transformer_|temporal_transformer_)?blocks\.(\d+)", name)
        return f"block.{m.group(1)}" if m else name.split(".")[0]

    # -- one denoiser call ----------------------------------------------------------------------
    def latent(self, args, kwargs) -> torch.Tensor:
        return _arg(args, kwargs, ("sample", "hidden_states"), 0)

    def geometry(self, args, kwargs) -> Geometry:
        """The video geometry of one denoiser call, from its forward arguments: a 5-D latent
        (axes by ``latent_layout``, or found by the channel count), or a packed (B, N, C) latent
        with ``num_frames``/``height``/``width`` arguments (LTX-style)."""
        x = self.latent(args, kwargs)
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{self.name}: cannot find the latent video among the denoiser's arguments")
        if x.dim() == 5:
            layout = self.latent_layout
            ch = getattr(self, "in_channels", None)
            fits = [lay for lay in LATENT_LAYOUTS if x.shape[lay.index("C")] == ch]
            if fits and layout not in fits:  # the channel count says where the channels are
                hw = self.pixel_hw  # and where it fits two axes (a tiny latent), the frame's aspect
                fits = [lay for lay in fits if hw is None
                        or x.shape[lay.index("H")] * hw[1] == x.shape[lay.index("W")] * hw[0]] or fits
                layout = fits[0]
            b, f, h, w = (x.shape[layout.index(a)] for a in "BFHW")
            return Geometry(batch=b, frames=f, height=h, width=w, patch=self.patch, patch_t=self.patch_t)
        f, h, w = (kwargs.get(k) for k in ("num_frames", "height", "width"))
        if x.dim() == 3 and None not in (f, h, w):
            return Geometry(batch=x.shape[0], frames=int(f), height=int(h), width=int(w), patch=self.patch,
                            patch_t=self.patch_t)
        if x.dim() == 4:  # (B, C, H, W): a text-to-image pipeline's UNet or transformer
            raise ValueError(f"{self.name}: the denoiser's latent {tuple(x.shape)} is an image's (batch, channels, "
                             f"height, width), not a video's: attnlens captures video pipelines")
        raise ValueError(f"{self.name}: a latent of shape {tuple(x.shape)} is not a video this family can read")

    def timestep(self, args, kwargs) -> float | None:
        """The call's timestep (first batch item), for pipelines without ``callback_on_step_end``."""
        t = kwargs.get("timestep")
        if t is None and len(args) > 1 and not isinstance(args[1], dict):
            t = args[1]
        if t is None:
            return None
        if isinstance(t, torch.Tensor):
            return float(t.reshape(-1)[0].item()) if t.numel() else None
        return float(t)

    def denoising_steps(self, pipe, record: dict) -> int | None:
        """Denoising steps one pipeline call runs (the steps a run records), if known before it
        runs: ``num_inference_steps``, times the passes of a pipeline that runs its schedule more
        than once (AnimateDiff with FreeInit)."""
        steps = record.get("num_inference_steps")
        return steps if isinstance(steps, int) else None

    def cfg_branches(self, pipe, record: dict | None = None) -> int:
        """For pipelines with one denoiser call per branch: branches per step (2 with CFG).
        record: the pipeline call's arguments (for pipelines that decide CFG from them)."""
        for attr in ("do_classifier_free_guidance", "do_true_cfg"):
            v = getattr(pipe, attr, None)
            if isinstance(v, bool):
                return 2 if v else 1
        return guider_branches(getattr(pipe, "guider", None))

    def batch_slice(self, args: tuple, kwargs: dict, lo: int, batch: int) -> tuple[tuple, dict]:
        """The denoiser inputs of batch items ``lo:`` of a call with ``batch`` items: every tensor
        whose first dimension is the batch is sliced (also inside dicts, lists and tuples);
        everything else (scalar timesteps, rotary embeddings by name, flags) is passed unchanged."""

        def cut(x):
            if isinstance(x, torch.Tensor):
                return x[lo:] if x.dim() > 0 and x.shape[0] == batch else x
            if isinstance(x, dict):
                return {k: cut(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return type(x)(cut(v) for v in x)
            return x

        # positional embeddings are per token, not per batch item, even when a dimension happens
        # to equal the batch (Allegro's rotary grids have one row per latent frame)
        keep = ("rotary", "rope", "freqs", "pos_emb")
        return tuple(cut(a) for a in args), {k: (v if any(w in k for w in keep) else cut(v)) for k, v in kwargs.items()}

    def probe_inputs(self, denoiser, frames: int, height: int, width: int, text_tokens: int):
        """(args, kwargs) for one denoiser forward at this video size (layer inventory probe)."""
        raise NotImplementedError(f"the {self.name} family has no probe inputs; run a capture to see token counts")


def guidance_scale(pipe, record: dict | None) -> float | None:
    """The CFG scale of the pipeline call: the call's ``guidance_scale`` argument, else the
    pipeline's public ``guidance_scale`` property; None if neither gives a number."""
    g = (record or {}).get("guidance_scale")
    if not isinstance(g, (int, float)):
        try:
            g = getattr(pipe, "guidance_scale", None)
        except AttributeError:  # a property over state the call has not set yet
            g = None
    return float(g) if isinstance(g, (int, float)) else None


def guider_branches(guider) -> int:
    """Branches per step of a diffusers guider (ClassifierFreeGuidance: 2 while enabled and
    guidance_scale > 1); 1 without one. The one place that reads a guider's state."""
    if guider is None:
        return 1
    enabled = getattr(guider, "_enabled", True)
    return int(getattr(guider, "num_conditions", 1)) if enabled else 1


def output_sample(out) -> torch.Tensor:
    """The prediction tensor of a denoiser's output (a diffusers output object or a tuple)."""
    return out[0] if isinstance(out, tuple) else out.sample


def with_sample(out, sample: torch.Tensor):
    """The denoiser output ``out`` with its prediction replaced by ``sample``."""
    if isinstance(out, tuple):
        return (sample, *out[1:])
    out.sample = sample
    return out
