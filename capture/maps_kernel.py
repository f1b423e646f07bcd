"""A compiled CPU kernel for the maps pass: ``Σ_h 2^(qa_h · ka_h)`` in one loop over the scores.

``stats.pooled_rows`` turns each row's log-sum-exp into maps with four passes over a chunk of
scores (matmul, exp2, mean over heads, pooling). On large layers of small heads those passes are
most of what maps cost: at 16×256×256 (1024 tokens, head size 4) 122 ms per call against the
model's own 106 ms. Here torch.compile (inductor) fuses the first three into one vectorized loop
that never writes a score: each key's logit is a dot product over the head size, its exp2 is
added straight into the sum over heads, and only the head-summed rows (rows × keys) are written;
on a regular grid the pooling is part of the same graph (74 against 112 ms per call,
benchmarks/bench_stats.py).

Static shapes: the chunk is one batch item of ``rows_for(...)`` query rows (a shorter last chunk
is padded), so each layer shape (heads, head size, keys, rows) compiles once. Compiling needs a C++
compiler and costs seconds: on a 2-core CPU about 15 s for the first kernel in a process with an
empty inductor cache, 3 s once the cache in the temp dir has it. That is more than one short
capture saves (0.45 s per 16×256×256 run of 4 steps), so by default the kernel is compiled only
once the eager passes it replaces have taken ``COMPILE_AFTER_S`` seconds in this process (a long
capture, a sweep, a server that captures repeatedly). ``ATTNLENS_COMPILE=1`` compiles from the
first call, ``0`` never. Whatever fails, compiling or an answer that disagrees with the eager
computation on the first chunk of a layout, turns the kernel off for the process with one log
line, and the eager passes serve: speed is at stake, never a value.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

import torch

log = logging.getLogger(__name__)

ENV = "ATTNLENS_COMPILE"
# Query rows per compiled call (one batch item): as many as write this many bytes of head-averaged
# rows (4 MiB: 1024 rows of 1024 keys). Each call costs about 0.1 ms of dynamo's guards and
# wrapper, 16 ms of a 90 ms layer call at 256 rows per call (measured with cProfile at 16x256x256).
ROWS_BYTES = 4 * 2**20
# The compiled loop computes each logit as a dot product over the head size (no GEMM), which pays
# while the exp dominates: up to this head size, from this many keys (at 256 keys it was no faster,
# 10.4 against 10.3 ms at 32x8 heads of size 8; at 64 keys 3x slower, its per-call cost).
MAX_DIM = 32
MIN_KEYS = 512

# a layer's kernel holds its chunk in cache: heads × (head size + 1) × keys floats of k are read
# for every row (measured: 4096 keys of 8 heads of size 8, 1.2 MB, ran 3x slower than eager)
MAX_K_BYTES = 512 * 2**10
CHECK_ROWS = 8

_LOCK = threading.Lock()
# compile by default once the eager passes it replaces took this long in the process (see above)
COMPILE_AFTER_S = 10.0


def _fresh_state(fns: dict | None = None) -> dict:
    """mode: "off"/"on"/"auto" (None: not read yet); ready: auto mode has switched on; eager_s:
    seconds of eager passes counted so far; fns: compiled functions by layout; checked: layouts
    whose first chunk agreed with the eager computation."""
    return {"mode": None, "ready": False, "eager_s": 0.0, "fns": {} if fns is None else fns, "checked": set()}


_state: dict = _fresh_state()


def _kernel(grid, inv_heads: float):
    """The chunk's function for one key layout: (1, H, R, D) x (1, H, D, N) -> (R, cells) of the
    head-averaged rows of A pooled over each cell's keys, the cells of ``grid`` (see
    stats._pool_keys), or (R, N) unpooled rows without a grid."""
    def chunk(qa: torch.Tensor, ka: torch.Tensor) -> torch.Tensor:
        a = (qa.unsqueeze(-1) * ka.unsqueeze(-3)).sum(-2).exp2().sum(1)[0] * inv_heads  # (R, N)
        if grid is None:
            return a
        f, h, w, gy, gx, offset = grid
        v = a[:, offset : offset + f * h * w].reshape(-1, f, gy, h // gy, gx, w // gx)
        return v.sum(dim=(3, 5)).reshape(-1, f * gy * gx)

    # a fresh code object per layout: dynamo keeps its compiled entries on the code object, so
    # each layout has its own (a shared one stops compiling after dynamo's recompile limit)
    chunk.__code__ = chunk.__code__.replace()
    return chunk


def _mode() -> str:
    """"off", "on" or "auto", from ATTNLENS_COMPILE (read once per process) or an earlier failure."""
    if _state["mode"] is None:
        v = os.environ.get(ENV, "").strip().lower()
        _state["mode"] = ("off" if v in ("0", "false", "no", "off") else
                          "on" if v in ("1", "true", "yes", "on", "always") else "auto")
        if v not in ("", "auto", "0", "false", "no", "off", "1", "true", "yes", "on", "always"):
            log.warning("%s=%s is not one of 1, 0 or auto; using auto (compile after %.0f s of eager maps)",
                        ENV, os.environ[ENV], COMPILE_AFTER_S)
    return _state["mode"]


def enabled() -> bool:
    """Whether the compiled kernel may serve in this process (not turned off by ATTNLENS_COMPILE
    or by an earlier failure)."""
    return _mode() != "off"


def applies(q: torch.Tensor, n_keys: int, map_heads_mean: bool) -> bool:
    """Whether this problem is one for the compiled kernel (if it is on and ready, see ready)."""
    B, H, _, D = q.shape
    return (map_heads_mean and q.device.type == "cpu" and D <= MAX_DIM and n_keys >= MIN_KEYS
            and H * (D + 1) * n_keys * 4 <= MAX_K_BYTES and enabled())


def ready() -> bool:
    """Whether to compile (or use the compiled kernel) now: ATTNLENS_COMPILE=1, or the eager
    passes on problems it applies to have taken COMPILE_AFTER_S in this process."""
    mode = _mode()
    if mode == "on" or _state["ready"]:
        return mode != "off"
    if mode == "auto" and _state["eager_s"] >= COMPILE_AFTER_S:
        _state["ready"] = True
        log.info("the maps passes took %.1f s in this process: compiling the maps kernel (one-time cost; "
                 "%s=1 compiles from the start, 0 never)", _state["eager_s"], ENV)
        return True
    return False


@contextlib.contextmanager
def forced(mode: str):
    """Within the block the kernel is "on" (compiled from the first call) or "off" (the eager
    passes), whatever ATTNLENS_COMPILE says: for before/after measurements in one process."""
    if mode not in ("on", "off"):
        raise ValueError(f"mode must be 'on' or 'off', not {mode!r}")
    was = _mode()
    _state["mode"] = mode
    try:
        yield
    finally:
        if _state["mode"] == mode:  # a failure inside turned it off: that stays
            _state["mode"] = was


def spent(seconds: float) -> None:
    """Count seconds of eager maps passes on a problem the kernel applies to (see ready)."""
    _state["eager_s"] += seconds


def rows_for(n_rows: int, n_keys: int) -> int:
    """Query rows per compiled call for a layer of n_rows queries and n_keys keys."""
    return max(1, min(n_rows, ROWS_BYTES // (4 * n_keys)))


def _turn_off(why: str) -> None:
    _state["mode"] = "off"
    log.warning("compiled maps kernel off for this process (%s); maps use the eager passes", why)


def pooled_chunk(qa: torch.Tensor, ka: torch.Tensor, grid, rows: int) -> torch.Tensor | None:
    """Head-averaged rows of A = 2^(qa·ka) for one batch item: qa (1, H, r ≤ rows, D) with the
    log2-scaled logits' columns (see stats.pooled_rows), ka (1, H, D, N) contiguous, float32.
    Returns (r, cells) pooled by ``grid`` (None: (r, N), unpooled), or None when the compiled
    kernel is off (the caller computes the eager way)."""
    if not enabled():
        return None
    H, r = qa.shape[1], qa.shape[-2]
    if r < rows:  # one shape per layer: pad the last chunk with zero rows (cut below)
        qa = torch.nn.functional.pad(qa, (0, 0, 0, rows - r))
    key = (H, qa.shape[-1], ka.shape[-1], rows, grid)
    try:
        with _LOCK:
            fn = _state["fns"].get(key)
            if fn is None:
                log.info("compiling the maps kernel for %d heads of size %d over %d keys", H, key[1] - 1, key[2])
                fn = _state["fns"][key] = torch.compile(_kernel(grid, 1.0 / H), dynamic=False, fullgraph=True)
        got = fn(qa.contiguous(), ka)[:r]
    except Exception as e:  # noqa: BLE001 - no compiler, an unsupported platform, a dynamo error
        _turn_off(f"{type(e).__name__}: {e}".splitlines()[0][:200])
        return None
    if key not in _state["checked"]:  # the first chunk of each layout, against the eager passes
        n = min(r, CHECK_ROWS)  # rows are independent: a few of them check the compiled code
        want = _kernel(grid, 1.0 / H)(qa[..., :n, :], ka)
        got_n = got[:n]
        if not torch.allclose(got_n, want, rtol=1e-5, atol=1e-30):
            _turn_off(f"it disagreed with the eager computation by {(got_n - want).abs().max().item():.3g}")
            return None
        _state["checked"].add(key)
    return got
