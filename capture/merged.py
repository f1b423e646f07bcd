"""The model's attention output and its exact statistics from one fused kernel call.

Capturing a layer costs the model's own SDPA call plus a second attention pass for the
statistics (``stats._fused``: log-sum-exp and ``A·K``). On large layers both passes are bound by
the same ``exp`` over every score, so the second one doubles the layer's cost. Here a single CPU
flash call with values ``[V | K]`` (q and k zero-padded to the same width, which leaves every
logit unchanged) gives ``A·V`` (the layer's output), ``A·K`` and the log-sum-exp at once.

The model's output must stay bit-identical to the call without capture. Whether the padded call
reproduces the model's call exactly depends on the CPU and on the GEMM kernels torch picks for
the shapes (measured: head size 4, 16, 24, 32, 40 and 64 are identical, head size 8 is not, on
one x86 machine). So every call signature (shapes, strides, dtype, scale, the SDPA backends
enabled) is checked once, on its first real call, against the model's own call; only signatures
that matched bit for bit use the merged call from then on. The order of a kernel's floating-point
operations is fixed by the shapes, not by the values, so one exact match per signature stands for
every later call.

Pure torch plus the SDPA call record from :mod:`capture.hooks`; knows nothing about layouts or stores.
"""

from __future__ import annotations

import logging

import torch

from .hooks import SDPACall
from .stats import RowStats

log = logging.getLogger(__name__)

_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)

# Where the merged call is faster than two calls, measured with benchmarks/bench_stats.py on a
# 2-core CPU ("sdpa+exact" against "merged", "sdpa+maps" against "merged+maps"). The padded call
# does twice the q·k products and widens A·V by the head size, so it pays only while the shared
# exp over every score outweighs that: statistics alone gain 10-20 % up to head size 40 and
# nothing at 64. With maps, the merged call's lse gives them in one more pass (stats.pooled_rows),
# which beats the model's call plus the chunked kernel's maps up to head size 32 (N = 256,
# batch 8: 7.0 against 8.1 ms at head size 16, 11.6 against 12.2 ms at 24, even at 40). Below 64
# keys per-call dispatch dominates and neither wins.
MIN_KEYS = 64
MAX_HEAD_DIM = 40
MAX_HEAD_DIM_MAPS = 32


def eligible(call: SDPACall, maps: bool = False) -> bool:
    """Whether the call goes through the merged kernel (before its bit-identity check): CPU
    float32, no mask, not causal, no dropout, no grouped heads, no autograd, and a size where it
    is faster (see MIN_KEYS); ``maps``: the capture also pools this call's maps."""
    b = call.bound
    q, k, v = b["query"], b["key"], b["value"]
    dim = max(q.shape[-1], v.shape[-1])
    return (_FLASH_CPU is not None and q.device.type == "cpu" and q.dtype == k.dtype == v.dtype == torch.float32
            and q.dim() == 4 and b["attn_mask"] is None and not b["is_causal"] and not b["dropout_p"]
            and not b["enable_gqa"] and k.shape[1] == q.shape[1] == v.shape[1] and k.shape[-2] >= MIN_KEYS
            and dim <= (MAX_HEAD_DIM_MAPS if maps else MAX_HEAD_DIM)
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)))


def _signature(call: SDPACall) -> tuple:
    b = call.bound
    q, k, v = b["query"], b["key"], b["value"]
    # the backends SDPA may choose from (torch.nn.attention.sdpa_kernel): a verdict holds for them only
    backends = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled())
    return (tuple(q.shape), q.stride(), tuple(k.shape), k.stride(), tuple(v.shape), v.stride(), q.dtype, call.scale,
            backends)


def merged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """(A·V as a (B,H,Nq,Dv) view, RowStats with entropy and lse of every row) from one call.

    q: (B,H,Nq,D); k: (B,H,Nk,D); v: (B,H,Nk,Dv). No mask. H = lse − scale · q · (A K)."""
    Dv, Nk = v.shape[-1], k.shape[-2]
    pad = torch.nn.functional.pad
    o, lse = _FLASH_CPU(pad(q, (0, Dv)), pad(k, (0, Dv)), torch.cat([v, k], dim=-1), 0.0, False, scale=scale)
    ent = torch.sub(lse, torch.linalg.vecdot(q, o[..., Dv:]), alpha=scale).clamp_min_(0.0)
    B, H, Nq = ent.shape
    n_keys = q.new_full((B, 1, Nq), float(Nk))
    return o[..., :Dv], RowStats(entropy=ent, n_keys=n_keys, lse=lse, n_keys_all=float(Nk))


class MergedCalls:
    """Per call signature: the verdict of its bit-identity check (None = not checked yet)."""

    def __init__(self):
        self.verdicts: dict[tuple, tuple | None] = {}  # signature -> output strides when identical, else None
        self.merged = 0  # calls served by the merged kernel
        self.checked = 0  # signatures checked

    def run(self, call: SDPACall, maps: bool = False) -> tuple[torch.Tensor, RowStats | None]:
        """The call's output (bit-identical to ``call.original()``) and, where the merged kernel
        served it, its row statistics (else None: the caller computes them its own way)."""
        if not eligible(call, maps):
            return call.original(), None
        sig = _signature(call)
        if sig in self.verdicts:
            strides = self.verdicts[sig]
            if strides is None:
                return call.original(), None
            out, rs = merged_attention(call.q, call.k, call.v, call.scale)
            self.merged += 1
            return torch.empty_strided(out.shape, strides, dtype=out.dtype).copy_(out), rs
        orig = call.original()
        out, rs = merged_attention(call.q, call.k, call.v, call.scale)
        same = orig.shape == out.shape and orig.dtype == out.dtype and torch.equal(orig, out)
        self.verdicts[sig] = orig.stride() if same else None
        self.checked += 1
        if not same:
            log.info("merged attention kernel differs from the model's call for %s; two calls there", sig[:2])
            return orig, None
        return orig, rs


# one per process: a signature's verdict holds for every trace and run made here
SHARED = MergedCalls()
