"""A small clip classifier for the demo world: colour, shape and motion of the (first) shape.

Used as the demo world's exact metric (§6): prompt-fidelity accuracy per attribute, and a
Fréchet distance between sets of clips in its feature space. A 3D CNN over (frames, 32, 32)
clips, trained on rendered single-shape clips of every (colour, shape, motion) combination: it is
a measuring instrument, so unlike the generative model it must know the held-out combinations
too (trained on the training split alone it learned shortcuts and got held-out shapes wrong).
Weights are stored as safetensors next to a JSON config.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import world as W

log = logging.getLogger(__name__)

HEADS = {"colour": list(W.COLOURS), "shape": list(W.SHAPES), "motion": list(W.MOTIONS)}
FEATURES = 64


class ClipClassifier(nn.Module):
    """(B, F, H, W, 3) uint8 or float in [0, 1] -> logits per attribute; features() for Fréchet."""

    def __init__(self, width: int = 24):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv3d(3, w, 3, padding=1), nn.GroupNorm(4, w), nn.SiLU(),
            nn.Conv3d(w, w, 3, padding=1), nn.GroupNorm(4, w), nn.SiLU(),
            nn.MaxPool3d((1, 2, 2)),
            nn.Conv3d(w, 2 * w, 3, padding=1), nn.GroupNorm(4, 2 * w), nn.SiLU(),
            nn.MaxPool3d((2, 2, 2)),
            nn.Conv3d(2 * w, FEATURES // 2, 3, padding=1), nn.GroupNorm(4, FEATURES // 2), nn.SiLU(),
        )
        self.heads = nn.ModuleDict({k: nn.Linear(FEATURES, len(v)) for k, v in HEADS.items()})
        self.config = {"width": width}

    @staticmethod
    def prepare(clips) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(clips))
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        return x.permute(0, 4, 1, 2, 3).contiguous()  # (B, 3, F, H, W)

    def features(self, clips) -> torch.Tensor:
        x = self.prepare(clips).to(next(self.parameters()).device)
        h = self.body(x)
        # mean and max over space-time: the mean keeps colour and motion, the max keeps the
        # strongest local shape response (mean pooling alone learned shape slowly)
        return torch.cat([h.mean(dim=(2, 3, 4)), h.amax(dim=(2, 3, 4))], dim=-1)  # (B, FEATURES)

    def forward(self, clips) -> dict[str, torch.Tensor]:
        f = self.features(clips)
        return {k: head(f) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, clips, batch: int = 64) -> dict[str, list[str]]:
        self.eval()
        out = {k: [] for k in HEADS}
        for i in range(0, len(clips), batch):
            logits = self(clips[i : i + batch])
            for k, v in logits.items():
                out[k] += [HEADS[k][j] for j in v.argmax(-1).tolist()]
        return out

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / "classifier.safetensors"))
        (directory / "classifier.json").write_text(json.dumps({**self.config, "heads": HEADS}, indent=1))

    @classmethod
    def load(cls, directory: Path) -> "ClipClassifier":
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg = json.loads((directory / "classifier.json").read_text())
        if cfg.get("heads") != HEADS:
            raise ValueError(f"{directory}: classifier was trained for other attribute values")
        model = cls(width=cfg["width"])
        model.load_state_dict(load_file(str(directory / "classifier.safetensors")))
        return model.eval()


def labelled_batch(rng: np.random.Generator, n: int, split: str | None = None, frames: int = 8, size: int = 32):
    """n single-shape clips (of `split`, or of any combination) with attribute labels (index tensors)."""
    specs = [W.sample_spec(rng, split or ("heldout" if rng.random() < 0.2 else "train")) for _ in range(n)]
    clips = np.stack([W.render(s, int(rng.integers(2**31)), frames, size) for s in specs])
    labels = {k: torch.tensor([v.index(getattr(s.main, k)) for s in specs]) for k, v in HEADS.items()}
    return clips, labels


def train(steps: int = 1500, batch: int = 32, seed: int = 0, lr: float = 2e-3, progress=None) -> ClipClassifier:
    """Train on freshly rendered single-shape clips of all combinations (no clip seen twice)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ClipClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    lossf = nn.CrossEntropyLoss()
    model.train()
    for step in range(steps):
        clips, labels = labelled_batch(rng, batch)
        logits = model(clips)
        loss = sum(lossf(logits[k], labels[k]) for k in HEADS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step, float(loss.detach()))
    return model.eval()


def accuracy(model: ClipClassifier, clips, specs) -> dict[str, float]:
    """Share of clips whose predicted attribute equals the spec's (first shape), per attribute."""
    pred = model.predict(clips)
    return {k: float(np.mean([p == getattr(s.main, k) for p, s in zip(pred[k], specs)])) for k in HEADS}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows are samples).

    tr(sqrtm(S1 S2)) is computed as the sum of square roots of the eigenvalues of the symmetric
    matrix sqrt(S1) S2 sqrt(S1), which has the same spectrum (numpy only, no scipy). NaN when either
    set has fewer than two samples (no covariance to fit)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def main(argv=None) -> int:
    """python -m capture.models.world_classifier --out data/demo/classifier [--steps N] [--seed S]"""
    from ..console import quiet_libraries

    quiet_libraries()
    import argparse

    from tqdm.auto import tqdm

    ap = argparse.ArgumentParser(description="Train the demo-world clip classifier and report its accuracy.")
    ap.add_argument("--out", default="build/classifier", help="where to write it (the shipped one is data/demo/classifier)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-clips", type=int, default=400)
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    bar = tqdm(total=args.steps, unit="step", disable=args.quiet)

    def progress(step, loss):
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")

    model = train(args.steps, args.batch, args.seed, progress=progress)
    bar.close()
    model.save(Path(args.out))
    rng = np.random.default_rng(args.seed + 10_000)  # fresh clips, never seen in training
    report = {}
    for split in ("train", "heldout"):
        specs = [W.sample_spec(rng, split) for _ in range(args.eval_clips)]
        clips = np.stack([W.render(s, int(rng.integers(2**31))) for s in specs])
        report[split] = accuracy(model, clips, specs)
    (Path(args.out) / "accuracy.json").write_text(json.dumps(
        {"steps": args.steps, "batch": args.batch, "seed": args.seed, "eval_clips_per_split": args.eval_clips,
         "accuracy": report}, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
