"""The optional metric tier (SPEC §6): metrics that need pretrained weights, loaded only from a local
directory (``--metric-weights DIR`` or $ATTNLENS_METRIC_WEIGHTS); nothing is ever downloaded.
A metric whose weights are not there reports itself unavailable, with the path it looked at.

Layout of the weights directory (every part optional)::

    clip/        a transformers CLIPModel and its tokenizer, saved with save_pretrained
                 -> clip_score: 100 · max(cos(frame, prompt), 0), per frame (Hessel et al. 2021)
    dino/        a transformers vision backbone (DINO / DINOv2 ViT) saved with save_pretrained
                 -> dino_consistency: per frame, mean of cos(CLS_f, CLS_0) and cos(CLS_f, CLS_f-1)
                    (VBench's subject consistency); frame 0 is omitted
    aesthetic/   clip/ (a CLIPModel as above) and head.safetensors: linear layers ``layers.N.weight``,
                 ``layers.N.bias`` applied in order, no activations, to the L2-normalised CLIP image
                 embedding (the LAION "improved aesthetic predictor" MLP)
                 -> aesthetic: per frame, its output (LAION's scale: 1-10)
    lpips/lpips.pt  a TorchScript LPIPS module, f(x, y) -> distance with x, y (N, 3, H, W) in [-1, 1]
                 (export once with ``torch.jit.script(lpips.LPIPS(net="alex")).save(...)``)
                 -> lpips: per frame, against the paired baseline

Images are resized to the model's input size with bilinear interpolation and normalised with
``image_mean``/``image_std`` from the folder's ``preprocessor_config.json`` when present (else
CLIP's / ImageNet's constants).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ENV = "ATTNLENS_METRIC_WEIGHTS"
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# metric -> (folder it needs, needs a prompt, needs a baseline)
METRICS = {"clip_score": ("clip", True, False), "dino_consistency": ("dino", False, False),
           "aesthetic": ("aesthetic", False, False), "lpips": ("lpips", False, True)}


@dataclass(frozen=True)
class Availability:
    metric: str
    available: bool
    path: Path
    reason: str = ""

    def line(self) -> str:
        return f"{self.metric}: {'available' if self.available else 'unavailable'} ({self.reason or self.path})"


def weights_dir(given=None) -> Path | None:
    d = given or os.environ.get(ENV)
    return Path(d).expanduser() if d else None


def availability(root=None) -> list[Availability]:
    """Which optional metrics can run, and where each looked."""
    base = weights_dir(root)
    out = []
    for m, (folder, _, _) in METRICS.items():
        if base is None:
            out.append(Availability(m, False, Path(folder), f"no weights directory: give --metric-weights DIR or "
                                                             f"set {ENV}; looked for DIR/{folder}"))
            continue
        p = base / folder
        need = {"clip": [p / "config.json"], "dino": [p / "config.json"],
                "aesthetic": [p / "clip" / "config.json", p / "head.safetensors"], "lpips": [p / "lpips.pt"]}[folder]
        missing = [str(x) for x in need if not x.is_file()]
        out.append(Availability(m, not missing, p, f"missing {missing[0]}" if missing else str(p)))
    return out


# -- loading (cached per process) -----------------------------------------------------------------
_CACHE: dict = {}


def _norm_consts(folder: Path, default):
    f = folder / "preprocessor_config.json"
    if f.is_file():
        cfg = json.loads(f.read_text())
        if "image_mean" in cfg and "image_std" in cfg:
            return tuple(cfg["image_mean"]), tuple(cfg["image_std"])
    return default


def _pixels(video: np.ndarray, size: int, mean, std):
    """(F, H, W, 3) uint8 -> (F, 3, size, size) float tensor, resized and normalised."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(video)).float().div(255).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


def _clip(folder: Path):
    key = ("clip", str(folder))
    if key not in _CACHE:
        from transformers import AutoTokenizer, CLIPModel

        model = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval()
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True) \
            if (folder / "tokenizer_config.json").is_file() else None
        _CACHE[key] = (model, tok, _norm_consts(folder, (CLIP_MEAN, CLIP_STD)))
    return _CACHE[key]


def _image_embeds(model, consts, video):
    import torch

    size = model.config.vision_config.image_size
    with torch.no_grad():
        out = model.get_image_features(pixel_values=_pixels(video, size, *consts))
    e = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(e, dim=-1)


def clip_score(video: np.ndarray, prompt: str, folder: Path) -> np.ndarray:
    import torch

    model, tok, consts = _clip(folder)
    if tok is None:
        raise FileNotFoundError(f"no tokenizer saved in {folder}")
    ids = tok([prompt], padding="max_length", truncation=True, max_length=model.config.text_config.max_position_embeddings,
              return_tensors="pt")
    with torch.no_grad():
        t = model.get_text_features(input_ids=ids["input_ids"], attention_mask=ids.get("attention_mask"))
    t = t if isinstance(t, torch.Tensor) else t.pooler_output
    t = torch.nn.functional.normalize(t, dim=-1)
    img = _image_embeds(model, consts, video)
    return (100 * (img @ t.T).squeeze(-1).clamp(min=0)).numpy().astype(np.float64)


def _dino(folder: Path):
    key = ("dino", str(folder))
    if key not in _CACHE:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
        _CACHE[key] = (model, _norm_consts(folder, (IMAGENET_MEAN, IMAGENET_STD)))
    return _CACHE[key]


def dino_consistency(video: np.ndarray, folder: Path) -> np.ndarray:
    import torch

    model, consts = _dino(folder)
    size = model.config.image_size
    with torch.no_grad():
        cls = model(pixel_values=_pixels(video, size, *consts)).last_hidden_state[:, 0]
    f = torch.nn.functional.normalize(cls, dim=-1)
    to_first = (f[1:] * f[:1]).sum(-1)
    to_prev = (f[1:] * f[:-1]).sum(-1)
    return ((to_first + to_prev) / 2).numpy().astype(np.float64)


def _aesthetic(folder: Path):
    key = ("aesthetic", str(folder))
    if key not in _CACHE:
        from safetensors.torch import load_file

        t = load_file(str(folder / "head.safetensors"))
        n = sorted({int(k.split(".")[1]) for k in t if k.startswith("layers.")})
        layers = [(t[f"layers.{i}.weight"], t[f"layers.{i}.bias"]) for i in n]
        _CACHE[key] = (_clip(folder / "clip"), layers)
    return _CACHE[key]


def aesthetic(video: np.ndarray, folder: Path) -> np.ndarray:
    import torch

    (model, _, consts), layers = _aesthetic(folder)
    x = _image_embeds(model, consts, video)
    with torch.no_grad():
        for w, b in layers:
            x = x @ w.T.to(x.dtype) + b.to(x.dtype)
    return x.squeeze(-1).numpy().astype(np.float64)


def lpips(video: np.ndarray, baseline: np.ndarray, folder: Path) -> np.ndarray:
    import torch

    key = ("lpips", str(folder))
    if key not in _CACHE:
        _CACHE[key] = torch.jit.load(str(folder / "lpips.pt"), map_location="cpu").eval()
    net = _CACHE[key]

    def scaled(v):
        return torch.from_numpy(np.ascontiguousarray(v)).float().div(127.5).sub(1).permute(0, 3, 1, 2)

    with torch.no_grad():
        d = net(scaled(video), scaled(baseline))
    return d.reshape(len(video), -1).mean(-1).numpy().astype(np.float64)


def compute(video: np.ndarray, *, prompt: str | None = None, baseline: np.ndarray | None = None,
            root=None, only=None) -> tuple[dict[str, np.ndarray], list[Availability]]:
    """Every available optional metric of a uint8 video (per-frame arrays), and the availability
    list (skipped metrics say why: missing weights, or no prompt/baseline for this run)."""
    results, report = {}, []
    for a in availability(root):
        if only is not None and a.metric not in only:
            continue
        _, needs_prompt, needs_base = METRICS[a.metric]
        if a.available and needs_prompt and not prompt:
            a = Availability(a.metric, False, a.path, "the run has no prompt")
        if a.available and needs_base and baseline is None:
            a = Availability(a.metric, False, a.path, "needs a paired baseline run")
        report.append(a)
        if not a.available:
            continue
        fn = {"clip_score": lambda: clip_score(video, prompt, a.path),
              "dino_consistency": lambda: dino_consistency(video, a.path),
              "aesthetic": lambda: aesthetic(video, a.path),
              "lpips": lambda: lpips(video, baseline, a.path)}[a.metric]
        results[a.metric] = fn()
    return results, report


def to_rows(results: dict[str, np.ndarray], baseline: str | None = None):
    """Long-form rows like capture.metrics.to_rows: per frame (dino_consistency from frame 1) and
    the mean under '<name>_mean'; lpips rows carry the baseline run."""
    import pandas as pd

    rows = []
    for name, v in results.items():
        offset = 1 if name == "dino_consistency" else 0
        base = (baseline or "") if name == "lpips" else ""
        rows += [(name, float(x), i + offset, base) for i, x in enumerate(v)]
        rows.append((f"{name}_mean", float(np.mean(v)), None, base))
    return pd.DataFrame(rows, columns=["metric", "value", "frame", "baseline"])


def measure_run(run_dir, baseline_dir=None, root=None) -> list[Availability]:
    """Store every available optional metric of a run (lpips against ``baseline_dir``); returns
    the availability report (also logged for unavailable ones)."""
    from .catalog import write_run_metrics
    from .metrics import run_video
    from .store import read_attrs

    run_dir = Path(run_dir)
    prompt = read_attrs(run_dir / "trace.zarr").get("prompt")
    base = run_video(baseline_dir) if baseline_dir is not None else None
    results, report = compute(run_video(run_dir), prompt=prompt, baseline=base, root=root)
    for a in report:
        if not a.available:
            log.info("%s for %s: %s", a.metric, run_dir.name, a.reason)
    if results:
        write_run_metrics(run_dir, to_rows(results, Path(baseline_dir).name if baseline_dir is not None else None))
    return report
