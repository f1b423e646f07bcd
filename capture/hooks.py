"""The interception mechanism: SDPA calls inside selected attention modules, and denoiser inputs.

One mechanism for every model: while a selected attention module runs its forward, every
``torch.nn.functional.scaled_dot_product_attention`` call it makes goes to a handler, which returns
the output to use. Two routes reach the handler:

- the attribute route: for the forward's duration ``torch.nn.functional.scaled_dot_product_attention``
  is a Python function that hands the call to the handler of the forward running in this thread
  (diffusers' processors and its attention dispatcher look the function up there on every call);
  every other op of the forward runs untouched;
- a ``TorchFunctionMode`` sees every torch call of the forward, whatever name the code calls SDPA
  by, but costs a Python round trip per op (20 or so per attention forward: measured 71 against
  17 ms per demo run for the attribute route, benchmarks/bench_interception.py).

A module's first forward runs with both and records which route each SDPA call came by; if every
one came by the attribute, later forwards use the attribute route alone, else the mode stays. So a
processor that holds its own reference to SDPA (``from torch.nn.functional import ...``) is still
intercepted. Other threads' calls and the handler's own calls go to torch's function. While the
attribute route is on, code that compares a function against ``F.scaled_dot_product_attention``
sees the router. Hooks are registered by name in diffusers' ``HookRegistry`` (a second
registration under the same name is an error) and removed by name. This and models/families/ are
the only modules that touch diffusers internals.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers.hooks import HookRegistry, ModelHook

log = logging.getLogger(__name__)

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
    forward: tuple | None = None  # (module, args, kwargs) of the attention module's forward making the call

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


_TORCH_SDPA = F.scaled_dot_product_attention  # torch's own function (the attribute route stands in for it)
_local = threading.local()  # .active: the innermost intercepted forward of this thread, or None
_patch_lock = threading.Lock()
_patch_users = 0  # intercepted forwards running (all threads): the router is in place while > 0


class _Interception:
    """One forward's SDPA calls: numbered in order and handed to the handler; ``by_mode`` counts
    those the attribute route did not see. The handler's own SDPA calls go to torch."""

    def __init__(self, handler: Callable[[SDPACall], torch.Tensor], forward: tuple | None = None):
        self.handler = handler
        self.forward = forward  # (module, args, kwargs) of the intercepted forward
        self.calls = 0
        self.by_mode = 0
        self.busy = False  # inside the handler

    def handle(self, args, kwargs) -> torch.Tensor:
        self.calls += 1
        self.busy = True
        try:
            return self.handler(SDPACall(_TORCH_SDPA, args, kwargs or {}, self.calls - 1, self.forward))
        finally:
            self.busy = False


def _sdpa_router(*args, **kwargs):
    """torch.nn.functional.scaled_dot_product_attention while an intercepted forward runs."""
    icp = getattr(_local, "active", None)
    if icp is None or icp.busy:
        return _TORCH_SDPA(*args, **kwargs)
    return icp.handle(args, kwargs)


def _route_on(icp: _Interception):
    """Start the attribute route for icp in this thread; returns what _route_off restores."""
    global _patch_users
    outer = getattr(_local, "active", None)
    with _patch_lock:
        if _patch_users == 0:
            F.scaled_dot_product_attention = _sdpa_router
        _patch_users += 1
    _local.active = icp
    return outer


def _route_off(outer) -> None:
    global _patch_users
    _local.active = outer
    with _patch_lock:
        _patch_users -= 1
        if _patch_users == 0 and F.scaled_dot_product_attention is _sdpa_router:
            F.scaled_dot_product_attention = _TORCH_SDPA


@contextlib.contextmanager
def _attribute_route(icp: _Interception):
    outer = _route_on(icp)
    try:
        yield
    finally:
        _route_off(outer)


class _SDPAMode(torch.overrides.TorchFunctionMode):
    """Sees every torch call of the forward and hands its SDPA calls to the handler (those the
    attribute route, when on as well, did not already hand over)."""

    def __init__(self, icp: _Interception):
        super().__init__()
        self.icp = icp

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is _TORCH_SDPA and not self.icp.busy:
            self.icp.by_mode += 1
            return self.icp.handle(args, kwargs)
        return func(*args, **(kwargs or {}))


# The route each module's SDPA calls took, learnt by a first forward, kept for later hooks on the
# same module (a sweep's or a benchmark's next trace on the same pipeline) while its processor and
# forward are the same objects: module -> (processor, forward function, attribute_only), the
# processor by weak reference where it allows one (a replaced processor, e.g. one holding adapter
# weights, is not kept alive here). The route is a property of that code, as within one trace,
# where the first forward decides for the rest.
_ROUTES: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _route_key(module: torch.nn.Module, forward) -> tuple:
    return getattr(module, "processor", None), getattr(forward, "__func__", forward)


def _learn_route(module: torch.nn.Module, forward, attribute_only: bool) -> None:
    proc, fwd = _route_key(module, forward)
    try:
        ref = weakref.ref(proc) if proc is not None else None
    except TypeError:  # an object without weak references: held as it is
        ref = lambda p=proc: p  # noqa: E731
    _ROUTES[module] = (ref, fwd, attribute_only)


def known_route(module: torch.nn.Module, forward=None) -> bool | None:
    """True (attribute route alone) or False (the mode) as learnt by an earlier hook on this module
    with its current processor; None if not learnt (or the processor was replaced since)."""
    got = _ROUTES.get(module)
    if got is None:
        return None
    proc, fwd = _route_key(module, forward if forward is not None else module.forward)
    held = got[0]() if got[0] is not None else None
    return got[2] if held is proc and (forward is None or got[1] is fwd) else None


class AttentionLayerHook(ModelHook):
    """Runs the attention module's forward with SDPA intercepted; the module must reach SDPA."""

    def __init__(self, name: str, handler: Callable[[str, SDPACall], torch.Tensor]):
        super().__init__()
        self.name = name
        self.handler = handler
        self.attribute_only: bool | None = None  # None until a forward made SDPA calls

    def new_forward(self, module, *args, **kwargs):
        if self.attribute_only is None:
            self.attribute_only = known_route(module, self.fn_ref.original_forward)
        icp = _Interception(lambda call: self.handler(self.name, call), (module, args, kwargs))
        if self.attribute_only:  # every forward of every captured layer: no context-manager objects
            outer = _route_on(icp)
            try:
                out = self.fn_ref.original_forward(*args, **kwargs)
            finally:
                _route_off(outer)
        elif self.attribute_only is False:
            # the mode alone: it hands the handler every call, and runs the handler with itself
            # switched off (under both routes, the handler's own ops would pass through the mode)
            with _SDPAMode(icp):
                out = self.fn_ref.original_forward(*args, **kwargs)
        else:  # the first forward with SDPA calls: both routes, to learn which one its calls take
            with _attribute_route(icp), _SDPAMode(icp):
                out = self.fn_ref.original_forward(*args, **kwargs)
            if icp.calls:
                self.attribute_only = icp.by_mode == 0
                _learn_route(module, self.fn_ref.original_forward, self.attribute_only)
        if icp.calls == 0:
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
def eager_denoisers(pipe, attrs, denoisers):
    """Run compiled denoisers uncompiled within the block: a ``torch.compile`` graph runs the
    attention modules' forwards without their Python hooks (and ``OptimizedModule`` names them
    ``_orig_mod.…``), so nothing inside it could be captured or perturbed. The pipeline's
    attributes ``attrs`` that hold an ``OptimizedModule`` point at the module it wraps, and every
    module of ``denoisers`` compiled in place (``nn.Module.compile()``, as diffusers' regional
    compilation does) calls its plain forward; all is put back on exit. The video then matches
    the uncompiled model's bit for bit (a compiled graph's own numerics may differ from it)."""
    from .models.families.base import unwrap_compiled

    swapped, cleared = [], []
    for attr in attrs:
        mod = getattr(pipe, attr, None)
        if mod is not None and unwrap_compiled(mod) is not mod:
            swapped.append((attr, mod))
    for den in denoisers:
        for m in den.modules():
            if getattr(m, "_compiled_call_impl", None) is not None:
                cleared.append((m, m._compiled_call_impl))
    if swapped or cleared:
        log.warning("the denoiser is compiled with torch.compile (%s): it runs uncompiled while traced, since a "
                    "compiled graph hides its attention calls", ", ".join(
                        [f"pipe.{a}" for a, _ in swapped] + ([f"{len(cleared)} module(s) compiled in place"]
                                                             if cleared else [])))
    try:
        for attr, mod in swapped:
            setattr(pipe, attr, unwrap_compiled(mod))
        for m, _ in cleared:
            m._compiled_call_impl = None
        yield
    finally:
        for m, impl in cleared:
            m._compiled_call_impl = impl
        for attr, mod in swapped:
            setattr(pipe, attr, mod)


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
