"""The independent float64 reference the family tests (and benchmarks/families_table.py) hold
capture's statistics to: an explicit softmax over the very SDPA inputs the tracer saw."""

from __future__ import annotations

import numpy as np
import torch

from capture import dims


def explicit_stats(q, k, mask, scale, n_branch, rows=slice(None)):
    """float64 entropy and normalized entropy per (branch, head), mean over items and ``rows``."""
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    if mask is not None:
        m = mask if mask.dim() == 4 else mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
        s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m.double()
    a = torch.softmax(s, -1)
    h = -(a * torch.where(a > 0, a.log(), 0.0)).sum(-1)  # (B, H, N)
    allowed = (torch.isfinite(s) & (s > -1e3)).sum(-1).double()  # padding biases (e.g. -10000) are masked
    h = torch.where(allowed > 0, h, float("nan"))  # a fully masked row has no distribution: not counted
    hn = torch.where(allowed > 1, h / allowed.log(), 0.0)  # one allowed key: H = 0, normalized 0
    h, hn = h[..., rows], hn[..., rows]
    per = q.shape[0] // n_branch
    return (torch.stack([h[b * per:(b + 1) * per].transpose(0, 1).flatten(1).nanmean(1) for b in range(n_branch)]),
            torch.stack([hn[b * per:(b + 1) * per].transpose(0, 1).flatten(1).nanmean(1) for b in range(n_branch)]))


def check_call(ds, names, layer, q, k, mask, scale, branches, family, text_first_of=None):
    """The stored step-0 statistics of ``layer`` in ``branches`` against the explicit softmax.
    text_first_of: layer -> whether its text tokens come first, where a run inferred it."""
    kind = str(ds[dims.LAYER_KIND].values[names.index(layer)])
    rows = slice(None)
    if kind == "joint":  # statistics of the video rows; text tokens sit in front or behind
        geo = ds.attrs["geometry"]
        n_vid = (geo["frames"] // geo["patch_t"]) * (geo["height"] // geo["patch"]) * (geo["width"] // geo["patch"])
        text_first = (text_first_of or {}).get(layer, family.text_first is not False)
        rows = slice(q.shape[-2] - n_vid, None) if text_first else slice(0, n_vid)
    h, hn = explicit_stats(q, k, mask, scale, len(branches), rows)
    sel = dict(step=0, layer=names.index(layer), branch=branches)
    got = ds[dims.ENTROPY].sel(part="all").isel(**sel).values[:, :q.shape[1]]
    got_n = ds[dims.ENTROPY_NORM].sel(part="all").isel(**sel).values[:, :q.shape[1]]
    # relative 1e-5; 1e-6 nats absolute for maps that are exactly one-hot (one key: H = 0)
    np.testing.assert_allclose(got, h.numpy(), rtol=1e-5, atol=1e-6, err_msg=layer)
    np.testing.assert_allclose(got_n, hn.numpy(), rtol=1e-5, atol=1e-6, err_msg=layer)
    ok = np.isfinite(h.numpy()) & (np.abs(h.numpy()) > 1e-6)
    return float(np.max(np.abs(got[ok] - h.numpy()[ok]) / np.abs(h.numpy()[ok]), initial=0.0))




def record_step0(tr) -> dict:
    """Make the tracer ``tr`` keep the SDPA inputs of every captured call at step 0 (per layer, in
    call order), as it sees them; returns the dict that fills during generation."""
    seen: dict = {}
    orig = tr._on_sdpa

    def spy(layer, c):
        if tr.step == 0 and tr.call_branch is not None:  # not the pipeline's own extra passes (LTX-2)
            k, _ = c.kv_for_heads()
            m = c.mask()
            seen.setdefault(layer, []).append((c.q.clone(), k.clone(), None if m is None else m.clone(), c.scale))
        return orig(layer, c)

    tr._on_sdpa = spy
    return seen


def check_run(ds, seen: dict, family, text_first_of=None) -> float:
    """Every recorded call against the stored step-0 statistics; the largest relative error."""
    names = ds[dims.LAYER_NAME].values.tolist()
    nb = ds.sizes["branch"]
    separate, per_item = family.separate_cfg_calls, family.per_item_calls
    worst = 0.0
    for layer, calls in seen.items():
        assert len(calls) == (nb if separate or per_item else 1), layer
        for i, (q, k, mask, scale) in enumerate(calls):
            # separate calls come cond first; branches are stored (uncond, cond); per-item calls
            # follow the batch ([uncond; cond], one video here)
            branches = [nb - 1 - i] if separate else [i] if per_item else list(range(nb))
            worst = max(worst, check_call(ds, names, layer, q, k, mask, scale, branches, family, text_first_of))
    return worst
