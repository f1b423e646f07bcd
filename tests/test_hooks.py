"""The SDPA interception (capture.hooks): every SDPA call of an intercepted forward reaches the
handler with its arguments, in order, whether the code looks SDPA up on torch.nn.functional (the
attribute route) or holds its own reference (the TorchFunctionMode, kept for such modules); the
output is the handler's; the handler's own SDPA calls, calls outside the forward and other threads'
calls are not intercepted; torch's function is back in place afterwards, also after an error."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch.nn.functional import scaled_dot_product_attention as bound_sdpa

from capture import hooks

REAL = torch._C._nn.scaled_dot_product_attention


class ByAttribute(torch.nn.Module):
    """Looks SDPA up on torch.nn.functional at every call, as diffusers' processors do; two calls."""

    def forward(self, q, k, v):
        a = F.scaled_dot_product_attention(q, k, v)
        return F.scaled_dot_product_attention(a, k, v, scale=0.5)


class ByReference(torch.nn.Module):
    """Holds the function it imported (``from torch.nn.functional import ...``): only the mode sees it."""

    def forward(self, q, k, v):
        return bound_sdpa(q, k, v) + 0


class Mixed(torch.nn.Module):
    def forward(self, q, k, v):
        return bound_sdpa(F.scaled_dot_product_attention(q, k, v), k, v)


def qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 2, 5, 4, generator=g) for _ in range(3)]


def hooked(module, seen, *, transform=None):
    def handler(name, call):
        seen.append((name, call.index, call.scale, call.q.clone()))
        out = call.original()
        # the handler's own SDPA calls go to torch, not back to the handler
        F.scaled_dot_product_attention(call.q, call.k, call.v)
        return transform(out) if transform else out

    hook = hooks.AttentionLayerHook("layer", handler)
    hooks.register(module, hook, hooks.LAYER_HOOK)
    return hook


@pytest.mark.parametrize("cls,attribute_only", [(ByAttribute, True), (ByReference, False), (Mixed, False)])
def test_every_sdpa_call_reaches_the_handler_on_every_forward(cls, attribute_only):
    """The first forward runs with both routes; only a module whose every SDPA call came by the
    attribute runs on the attribute route alone afterwards."""
    m = cls()
    q, k, v = qkv()
    ref = m(q, k, v)
    seen: list = []
    hook = hooked(m, seen, transform=lambda o: o * 2)
    n_calls = 1 if cls is ByReference else 2
    for rep in range(3):
        seen.clear()
        out = m(q, k, v)
        assert [s[1] for s in seen] == list(range(n_calls)), f"forward {rep}"
        assert hook.attribute_only is attribute_only
        assert F.scaled_dot_product_attention is REAL
        assert not torch.equal(out, ref)  # the handler's output was used
    if cls is ByAttribute:
        assert torch.equal(seen[0][3], q) and seen[1][2] == 0.5
    hooks.remove(m, hooks.LAYER_HOOK)
    assert torch.equal(m(q, k, v), ref)


def test_output_is_bit_identical_when_the_handler_returns_the_original_call():
    for cls in (ByAttribute, ByReference, Mixed):
        m = cls()
        q, k, v = qkv(3)
        ref = m(q, k, v)
        hooked(m, [])
        for _ in range(2):
            assert torch.equal(m(q, k, v), ref)


def test_an_error_in_the_handler_leaves_nothing_behind():
    m = ByAttribute()
    hook = hooks.AttentionLayerHook("layer", lambda name, call: (_ for _ in ()).throw(RuntimeError("boom")))
    hooks.register(m, hook, hooks.LAYER_HOOK)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="boom"):
            m(*qkv())
        assert F.scaled_dot_product_attention is REAL
    hooks.remove(m, hooks.LAYER_HOOK)
    m(*qkv())  # no mode left behind


def test_a_forward_without_sdpa_is_an_error_on_either_route():
    class NoSDPA(torch.nn.Module):
        def forward(self, q, k, v):
            return q @ k.transpose(-1, -2)

    m = NoSDPA()
    hooked(m, [])
    with pytest.raises(hooks.NoSDPAError, match="layer"):
        m(*qkv())


def test_concurrent_forwards_in_threads_each_see_their_own_calls():
    mods = [ByAttribute() for _ in range(4)]
    seen = [[] for _ in mods]
    for m, s in zip(mods, seen):
        hooked(m, s)
    q, k, v = qkv(1)
    ref = ByAttribute()(q, k, v)
    errors: list = []

    def work(i):
        try:
            for _ in range(25):
                assert torch.equal(mods[i](q, k, v), ref)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(mods))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(len(s) == 50 for s in seen)
    assert F.scaled_dot_product_attention is REAL


def test_sdpa_outside_an_intercepted_forward_is_untouched():
    m = ByAttribute()
    seen: list = []
    hooked(m, seen)
    q, k, v = qkv(2)
    m(q, k, v)
    n = len(seen)
    F.scaled_dot_product_attention(q, k, v)
    assert len(seen) == n


def test_a_diffusers_attention_module_runs_on_the_attribute_route():
    """diffusers' SDPA processor looks the function up on torch.nn.functional: after its first
    forward no TorchFunctionMode is needed, and the output stays bit-identical."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8, processor=AttnProcessor2_0())
    x = torch.randn(2, 5, 16)
    ref = attn(x)
    seen: list = []
    hook = hooked(attn, seen)
    for _ in range(2):
        assert torch.equal(attn(x), ref)
    assert hook.attribute_only is True and len(seen) == 2


def test_an_interception_in_one_thread_leaves_another_threads_sdpa_alone():
    """While one thread's forward is intercepted, torch.nn.functional's SDPA is the router for
    every thread: another thread's calls go straight to torch, not to the first thread's handler."""
    started, release = threading.Event(), threading.Event()
    seen: list = []

    def handler(name, call):
        started.set()
        release.wait(5)
        seen.append(name)
        return call.original()

    m = ByAttribute()
    hooks.register(m, hooks.AttentionLayerHook("layer", handler), hooks.LAYER_HOOK)
    q, k, v = qkv(4)
    t = threading.Thread(target=lambda: m(q, k, v))
    t.start()
    try:
        assert started.wait(5)
        assert F.scaled_dot_product_attention is not REAL  # the router is in place meanwhile
        assert torch.equal(F.scaled_dot_product_attention(q, k, v), REAL(q, k, v))
    finally:
        release.set()
        t.join()
    assert seen == ["layer", "layer"]
    assert F.scaled_dot_product_attention is REAL



@pytest.mark.parametrize("cls,attribute_only", [(ByAttribute, True), (ByReference, False), (Mixed, False)])
def test_a_later_hook_on_the_same_module_and_processor_keeps_the_learnt_route(cls, attribute_only, monkeypatch):
    """A second trace on the same pipeline (a sweep, a benchmark's repetitions) does not pay the
    first forward's mode again for a module whose route is known; every call still reaches it."""
    entered = []

    class Counting(hooks._SDPAMode):
        def __enter__(self):
            entered.append(1)
            return super().__enter__()

    monkeypatch.setattr(hooks, "_SDPAMode", Counting)
    m = cls()
    q, k, v = qkv()
    n_calls = 1 if cls is ByReference else 2
    for trace in range(2):
        seen: list = []
        entered.clear()
        hook = hooked(m, seen)
        for _ in range(2):
            m(q, k, v)
        hooks.remove(m, hooks.LAYER_HOOK)
        assert hook.attribute_only is attribute_only and len(seen) == 2 * n_calls
        # the first trace learns the route with the mode on its first forward; the second knows it
        want_modes = (1 if attribute_only else 2) if trace == 0 else (0 if attribute_only else 2)
        assert len(entered) == want_modes, f"trace {trace}"


def test_a_new_processor_is_learnt_again():
    """The learnt route belongs to the module's processor: replacing it (set_processor) makes the
    next hook's first forward run both routes again."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    attn = Attention(query_dim=16, heads=2, dim_head=8, processor=AttnProcessor2_0())
    x = torch.randn(2, 5, 16)
    hook = hooked(attn, [])
    attn(x)
    hooks.remove(attn, hooks.LAYER_HOOK)
    assert hooks.known_route(attn) is True
    attn.set_processor(AttnProcessor2_0())
    assert hooks.known_route(attn) is None
    hook = hooked(attn, [])
    assert hook.attribute_only is None
    attn(x)
    assert hook.attribute_only is True and hooks.known_route(attn) is True
    hooks.remove(attn, hooks.LAYER_HOOK)


def test_a_replaced_processor_is_not_kept_alive_by_the_learnt_route():
    import gc
    import weakref

    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    attn = Attention(query_dim=16, heads=2, dim_head=8, processor=AttnProcessor2_0())
    first = weakref.ref(attn.processor)
    hooked(attn, [])
    attn(torch.randn(2, 5, 16))
    hooks.remove(attn, hooks.LAYER_HOOK)
    attn.set_processor(AttnProcessor2_0())
    gc.collect()
    assert first() is None and hooks.known_route(attn) is None
