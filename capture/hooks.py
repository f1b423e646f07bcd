"""The interception mechanism: SDPA calls inside selected attention modules, and denoiser inputs.

One mechanism for every model: while a selected attention module runs its forward, a
``TorchFunctionMode`` sees every ``torch.nn.functional.scaled_dot_product_attention`` call and hands
it to a handler, which returns the output to use. Hooks are registered by name in diffusers'
``HookRegistry`` (a second registration under the same name is an error) and removed by name.
This and models/families/ are the only modules that touch diffusers internals.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers.hooks import HookRegistry, ModelHook

LAYER_HOOK = "attnlens.attention"
DENOISER_HOOK = "attnlens.denoiser"
WRAP_HOOK = "attnlens.method"

_SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_SDPA_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}


class NoSDPAError(RuntimeError):
    pass


@dataclass
class SDPACall:
    """One scaled_dot_product_attention call, with the arguments by name and the original function."""

    func: Callable
    args: tuple
    kwargs: dict
    index: int = 0  # which SDPA call of the module's current forward (0 = first)

    def __post_init__(self):
        bound = dict(_SDPA_DEFAULTS)
        bound.update(zip(_SDPA_PARAMS, self.args))
        bound.update(self.kwargs)
        self.bound = bound

    @property
    def q(self) -> torch.Tensor:  # (B, H, Nq, D)
        return self.bound["query"]

    @property
    def k(self) -> torch.Tensor:  # (B, Hk, Nk, D)
        return self.bound["key"]

    @property
    def v(self) -> torch.Tensor:  # (B, Hk, Nk, Dv)
        return self.bound["value"]

    @property
    def scale(self) -> float:
        s = self.bound["scale"]
        return float(s) if s is not None else self.q.shape[-1] ** -0.5

    def mask(self) -> torch.Tensor | None:
        """attn_mask with is_causal folded in (bool, True = allowed) or as given."""
        m = self.bound["attn_mask"]
        if self.bound["is_causal"]:
            nq, nk = self.q.shape[-2], self.k.shape[-2]
            causal = torch.ones(nq, nk, dtype=torch.bool, device=self.q.device).tril()
            m = causal if m is None else (causal & m if m.dtype == torch.bool else m.masked_fill(~causal, float("-inf")))
        return m

    def kv_for_heads(self):
        """k, v with grouped-query heads expanded to the query heads."""
        k, v = self.k, self.v
        h = self.q.shape[1]
        if k.shape[1] != h:
            k = k.repeat_interleave(h // k.shape[1], dim=1)
            v = v.repeat_interleave(h // v.shape[1], dim=1)
        return k, v

    def original(self) -> torch.Tensor:
        """The call exactly as the model made it (bit-identical output)."""
        return self.func(*self.args, **self.kwargs)

    def with_scale(self, scale: float) -> torch.Tensor:
        kw = {n: self.bound[n] for n in _SDPA_PARAMS}
        kw["scale"] = scale
        return self.func(**kw)


class _SDPAMode(torch.overrides.TorchFunctionMode):
    def __init__(self, handler: Callable[[SDPACall], torch.Tensor]):
        super().__init__()
        self.handler = handler
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.calls += 1
            return self.handler(SDPACall(func, args, kwargs, self.calls - 1))
        return func(*args, **kwargs)


class AttentionLayerHook(ModelHook):
    """Runs the attention module's forward with SDPA intercepted; the module must reach SDPA."""

    def __init__(self, name: str, handler: Callable[[str, SDPACall], torch.Tensor]):
        super().__init__()
        self.name = name
        self.handler = handler

    def new_forward(self, module, *args, **kwargs):
        mode = _SDPAMode(lambda call: self.handler(self.name, call))
        with mode:
            out = self.fn_ref.original_forward(*args, **kwargs)
        if mode.calls == 0:
            proc = type(getattr(module, "processor", None)).__name__
            raise NoSDPAError(
                f"layer {self.name} never called torch.nn.functional.scaled_dot_product_attention "
                f"(processor {proc}); attnlens needs an SDPA-based attention processor"
            )
        return out


class DenoiserInputHook(ModelHook):
    """Reports the denoiser's forward arguments before each call (for the video geometry)."""

    def __init__(self, on_call: Callable[[tuple, dict], None]):
        super().__init__()
        self.on_call = on_call

    def pre_forward(self, module, *args, **kwargs):
        self.on_call(args, kwargs)
        return args, kwargs


class DenoiserWrapHook(ModelHook):
    """Runs ``wrap(forward, args, kwargs)`` in place of the denoiser's forward, for methods that
    change its output or make extra denoiser calls (IE-Adapt guidance); ``forward`` is the rest of
    the hook chain, so an active tracer still sees the call."""

    def __init__(self, wrap: Callable[[Callable, tuple, dict], object]):
        super().__init__()
        self.wrap = wrap

    def new_forward(self, module, *args, **kwargs):
        return self.wrap(self.fn_ref.original_forward, args, kwargs)


def register(module: torch.nn.Module, hook: ModelHook, name: str) -> None:
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)


def remove(module: torch.nn.Module, name: str) -> None:
    reg = getattr(module, "_diffusers_hook", None)
    if reg is not None:
        reg.remove_hook(name, recurse=False)


def has_hook(module: torch.nn.Module, name: str) -> bool:
    reg = getattr(module, "_diffusers_hook", None)
    return reg is not None and reg.get_hook(name) is not None


@contextlib.contextmanager
def native_attention_backend():
    """Force diffusers' native (SDPA) attention backend for dispatch-based processors (Wan, …)."""
    try:
        from diffusers.models.attention_dispatch import attention_backend
    except ImportError:  # diffusers without the dispatcher: processors call SDPA directly
        yield
        return
    with attention_backend("native"):
        yield
