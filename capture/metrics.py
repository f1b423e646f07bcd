"""Weight-free video metrics (SPEC §6), numpy only: always available, offline.

Videos are (frames, height, width, channels) uint8 arrays (or floats with ``data_range`` given).

- ``psnr``: per frame, against a paired reference video.
- ``ssim``: per frame, against a paired reference (Wang et al. 2004: Gaussian window sigma 1.5,
  K1 0.01, K2 0.03, population covariances; the mean over channels and over the image with the
  window's half-width cropped from the borders, as scikit-image computes it).
- ``temporal_flicker``: VBench's temporal flickering score, (255 - mean over consecutive frame
  pairs of the mean absolute difference) / 255: 1 for a still video.
- ``motion_amount``: mean absolute difference of consecutive frames, in [0, 1] of the range.
- ``sharpness``: per frame, variance of the 4-neighbour Laplacian of the luma, in (range units)².

Must not import torch.
"""

from __future__ import annotations

import numpy as np

_LUMA = np.array([0.299, 0.587, 0.114])


def _as_video(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v)
    if v.ndim == 3:
        v = v[..., None]
    if v.ndim != 4:
        raise ValueError(f"a video is (frames, height, width[, channels]), not shape {v.shape}")
    return v


def _range(v: np.ndarray, data_range: float | None) -> float:
    if data_range is not None:
        return float(data_range)
    if v.dtype == np.uint8:
        return 255.0
    raise ValueError("float videos need data_range (e.g. 1.0 for [0, 1] frames)")


def _paired(a, b):
    a, b = _as_video(a), _as_video(b)
    if a.shape != b.shape:
        raise ValueError(f"paired videos differ in shape: {a.shape} vs {b.shape}")
    return a, b


def psnr(video: np.ndarray, reference: np.ndarray, data_range: float | None = None) -> np.ndarray:
    """Per-frame PSNR in dB (inf for identical frames)."""
    a, b = _paired(video, reference)
    r = _range(b, data_range)
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return 10 * np.log10(r * r / mse)


def _gauss_filter(x: np.ndarray, sigma: float, truncate: float = 3.5) -> np.ndarray:
    """Separable Gaussian filter over the last two axes, symmetric ('reflect' in scipy) borders."""
    radius = int(truncate * sigma + 0.5)
    t = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    pad = [(0, 0)] * (x.ndim - 2) + [(radius, radius), (radius, radius)]
    xp = np.pad(x, pad, mode="symmetric")
    h, w = x.shape[-2:]
    out = sum(k[i] * xp[..., i : i + h, :] for i in range(k.size))
    return sum(k[i] * out[..., :, i : i + w] for i in range(k.size))


def ssim(video: np.ndarray, reference: np.ndarray, data_range: float | None = None, sigma: float = 1.5) -> np.ndarray:
    """Per-frame mean SSIM (over channels and pixels away from the borders)."""
    a, b = _paired(video, reference)
    r = _range(b, data_range)
    x = np.moveaxis(a.astype(np.float64), -1, 1)  # (F, C, H, W)
    y = np.moveaxis(b.astype(np.float64), -1, 1)
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    mx, my = _gauss_filter(x, sigma), _gauss_filter(y, sigma)
    vx = _gauss_filter(x * x, sigma) - mx * mx
    vy = _gauss_filter(y * y, sigma) - my * my
    cxy = _gauss_filter(x * y, sigma) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    win = 2 * int(3.5 * sigma + 0.5) + 1
    pad = (win - 1) // 2
    return s[..., pad : s.shape[-2] - pad, pad : s.shape[-1] - pad].mean(axis=(1, 2, 3))


def _pair_mae(v: np.ndarray) -> np.ndarray:
    v = _as_video(v).astype(np.float64)
    if v.shape[0] < 2:
        raise ValueError("temporal metrics need at least two frames")
    return np.abs(v[1:] - v[:-1]).mean(axis=(1, 2, 3))


def temporal_flicker(video: np.ndarray, data_range: float | None = None) -> float:
    """VBench temporal flickering: (range − mean consecutive-frame MAE) / range, in [0, 1]."""
    r = _range(np.asarray(video), data_range)
    return float((r - _pair_mae(video).mean()) / r)


def motion_amount(video: np.ndarray, data_range: float | None = None) -> np.ndarray:
    """Per consecutive frame pair: mean absolute difference / range (0 = still)."""
    r = _range(np.asarray(video), data_range)
    return _pair_mae(video) / r


def sharpness(video: np.ndarray, data_range: float | None = None) -> np.ndarray:
    """Per frame: variance of the Laplacian of the luma (borders excluded), range scaled to 1."""
    v = _as_video(video)
    r = _range(v, data_range)
    x = v.astype(np.float64) / r
    y = x @ _LUMA if v.shape[-1] == 3 else x.mean(axis=-1)
    lap = y[:, :-2, 1:-1] + y[:, 2:, 1:-1] + y[:, 1:-1, :-2] + y[:, 1:-1, 2:] - 4 * y[:, 1:-1, 1:-1]
    return lap.reshape(len(lap), -1).var(axis=1)


def weight_free(video: np.ndarray, baseline: np.ndarray | None = None) -> dict[str, np.ndarray | float]:
    """Every weight-free metric of a uint8 video; the paired ones when a baseline is given.
    Per-frame arrays under '<name>', their means under '<name>_mean'."""
    out: dict[str, np.ndarray | float] = {"temporal_flicker": temporal_flicker(video)}
    per_frame = {"motion_amount": motion_amount(video), "sharpness": sharpness(video)}
    if baseline is not None:
        per_frame["psnr"] = psnr(video, baseline)
        per_frame["ssim"] = ssim(video, baseline)
    for k, v in per_frame.items():
        out[k] = v
        out[f"{k}_mean"] = float(np.mean(v))
    return out


def to_rows(result: dict, baseline: str | None = None):
    """Long-form rows (metric, value, frame, baseline) of a ``weight_free`` result; per-frame arrays
    give one row per frame (of the pair's later frame for temporal metrics), means one NULL-frame row."""
    import pandas as pd

    rows = []
    for name, v in result.items():
        if np.ndim(v) == 0:
            rows.append((name, float(v), None))
        else:
            offset = 1 if name == "motion_amount" else 0
            rows += [(name, float(x), i + offset) for i, x in enumerate(np.asarray(v))]
    df = pd.DataFrame(rows, columns=["metric", "value", "frame"])
    paired = df["metric"].str.startswith(("psnr", "ssim"))
    df["baseline"] = np.where(paired, baseline or "", "")
    return df


def run_video(run_dir) -> np.ndarray:
    """The generated frames stored with a run, (frames, height, width, 3) uint8."""
    from . import dims
    from .store import StoreError, open_run

    ds = open_run(run_dir)
    if dims.VIDEO not in ds:
        raise StoreError(f"run {ds.attrs.get('run_id', run_dir)} has no stored video")
    return np.asarray(ds[dims.VIDEO].values)


def measure_run(run_dir, baseline_dir=None):
    """Compute the weight-free metrics of a stored run (paired ones against ``baseline_dir``) and
    store them in its metrics table; returns the rows."""
    from pathlib import Path

    from .catalog import write_run_metrics

    video = run_video(run_dir)
    base = run_video(baseline_dir) if baseline_dir is not None else None
    rows = to_rows(weight_free(video, base), Path(baseline_dir).name if baseline_dir is not None else None)
    write_run_metrics(Path(run_dir), rows)
    return rows
