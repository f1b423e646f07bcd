"""Evaluate a demo-world text-to-video pipeline with the world's exact metrics.

    python -m capture.models.demo_eval --pipeline data/demo/model --clips 120

Generates single-shape prompts of a split (held-out by default) × seeds, reads every clip with the
shipped classifier, and reports prompt-fidelity accuracy per attribute (colour, shape, motion of
the prompt's shape) and the Fréchet distance, in the classifier's feature space, between the
generated clips and real clips of the same prompts; for scale it also reports real vs real (two
disjoint sets of renders) and the same architecture with random weights vs real.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from . import world as W
from .presets import DEMO_DIR, dtype_kwargs, loading_bars
from .world_classifier import HEADS, ClipClassifier, frechet_distance

DEFAULT_CLASSIFIER = Path(__file__).resolve().parents[2] / "data" / "demo" / "classifier"


def generate(pipe, prompts: list[str], seeds: list[int], *, frames=8, size=32, steps=25, guidance=7.5,
             batch=8, progress=None) -> np.ndarray:
    """(N, frames, size, size, 3) uint8 clips, one per (prompt, seed) pair, in order; ``progress(n)``
    after every n clips."""
    from ..video import frames_to_uint8

    out = []
    for i in range(0, len(prompts), batch):
        ps, ss = prompts[i : i + batch], seeds[i : i + batch]
        gens = [torch.Generator().manual_seed(s) for s in ss]
        res = pipe(ps, num_frames=frames, height=size, width=size, num_inference_steps=steps,
                   guidance_scale=guidance, generator=gens, output_type="np").frames
        out += [frames_to_uint8(res[j : j + 1]) for j in range(len(ps))]
        if progress is not None:
            progress(len(ps))
    return np.stack(out)


def evaluate(pipe, classifier: ClipClassifier, *, clips=120, split="heldout", seed=0, steps=25, guidance=7.5,
             random_pipe=None, progress=None) -> dict:
    rng = np.random.default_rng(seed)
    specs = [W.sample_spec(rng, split) for _ in range(clips)]
    seeds = [int(s) for s in rng.integers(0, 2**31, clips)]
    gen = generate(pipe, [s.prompt for s in specs], seeds, steps=steps, guidance=guidance, progress=progress)
    real_a = np.stack([W.render(s, int(rng.integers(2**31))) for s in specs])
    real_b = np.stack([W.render(s, int(rng.integers(2**31))) for s in specs])
    pred = classifier.predict(gen)
    acc = {k: float(np.mean([p == getattr(s.main, k) for p, s in zip(pred[k], specs)])) for k in HEADS}
    with torch.no_grad():
        feats = {name: classifier.features(x).numpy() for name, x in (("gen", gen), ("real_a", real_a), ("real_b", real_b))}
    report = {
        "split": split, "clips": clips, "steps": steps, "guidance": guidance, "seed": seed,
        "accuracy": acc,
        "frechet": {"generated_vs_real": frechet_distance(feats["gen"], feats["real_a"]),
                    "real_vs_real": frechet_distance(feats["real_b"], feats["real_a"])},
    }
    if random_pipe is not None:
        rand = generate(random_pipe, [s.prompt for s in specs], seeds, steps=steps, guidance=guidance,
                        progress=progress)
        with torch.no_grad():
            report["frechet"]["random_weights_vs_real"] = frechet_distance(classifier.features(rand).numpy(),
                                                                           feats["real_a"])
        report["random_weights_accuracy"] = {
            k: float(np.mean([p == getattr(s.main, k) for p, s in zip(classifier.predict(rand)[k], specs)]))
            for k in HEADS}
    return report


@torch.no_grad()
def vae_report(vae, classifier: ClipClassifier, *, clips: int = 64, split: str = "heldout", seed: int = 0) -> dict:
    """How well the VAE alone round-trips real clips: PSNR and the classifier's accuracy on the
    reconstructions (an upper bound for what the denoiser can reach through this VAE)."""
    rng = np.random.default_rng(seed)
    specs = [W.sample_spec(rng, split) for _ in range(clips)]
    real = np.stack([W.render(s, int(rng.integers(2**31))) for s in specs])
    x = torch.from_numpy(real).float().div(127.5).sub(1).permute(0, 1, 4, 2, 3).flatten(0, 1)
    dtype = next(vae.parameters()).dtype
    rec = torch.cat([vae.decode(vae.encode(x[i : i + 64].to(dtype)).latent_dist.mean).sample.float()
                     for i in range(0, len(x), 64)])
    rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    rec = rec.reshape(real.shape).numpy()
    mse = np.mean((rec.astype(np.float64) - real) ** 2)
    pred = classifier.predict(rec)
    acc = {k: float(np.mean([p == getattr(s.main, k) for p, s in zip(pred[k], specs)])) for k in HEADS}
    return {"clips": clips, "psnr_db": float(10 * np.log10(255.0**2 / mse)), "classifier_accuracy": acc}


def _config(path: Path):
    from .demo_train import DemoConfig

    meta = json.loads(path.read_text())["config"]
    return DemoConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta.items()})


def pipeline_from_checkpoint(run_dir: Path, ema: bool = True):
    """An AnimateDiffPipeline from a training run's latest checkpoint (to watch a run in progress)."""
    from diffusers import AnimateDiffPipeline
    from safetensors.torch import load_file

    from .demo_train import build_components, latent_scale

    meta = json.loads((run_dir / "config.json").read_text())
    cfg = _config(run_dir / "config.json")
    vae, unet, adapter, te, tok, sched = build_components(cfg, seed=meta["seed"])
    ck = run_dir / "checkpoint"
    vt = load_file(str(ck / "vae.safetensors"))
    vae.load_state_dict({k[6:]: v for k, v in vt.items() if k.startswith("model.")})
    vae.register_to_config(scaling_factor=latent_scale(vae, cfg, meta["seed"]))
    if (ck / "unet.safetensors").is_file():
        ut = load_file(str(ck / "unet.safetensors"))
        prefix = "model.ema." if ema else "model.live."
        unet.load_state_dict({k[len(prefix) + 5:]: v for k, v in ut.items() if k.startswith(prefix + "unet.")})
        te.load_state_dict({k[len(prefix) + 5:]: v for k, v in ut.items() if k.startswith(prefix + "text.")})
    pipe = AnimateDiffPipeline(vae=vae.eval(), text_encoder=te.eval(), tokenizer=tok, unet=unet.eval(),
                               motion_adapter=None, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main(argv=None) -> int:
    from ..console import quiet_libraries

    quiet_libraries()
    from diffusers import AnimateDiffPipeline

    ap = argparse.ArgumentParser(description="Prompt fidelity and Fréchet distance of a demo-world model.")
    ap.add_argument("--pipeline", default=str(DEMO_DIR), help="a saved demo-world pipeline (default: the shipped one)")
    ap.add_argument("--checkpoint", help="evaluate a training run's latest checkpoint (its --out directory)")
    ap.add_argument("--vae-only", action="store_true", help="only the VAE round trip (PSNR, classifier accuracy)")
    ap.add_argument("--classifier", default=str(DEFAULT_CLASSIFIER))
    ap.add_argument("--clips", type=int, default=120)
    ap.add_argument("--split", default="heldout", choices=["heldout", "train"])
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-random-baseline", action="store_true")
    ap.add_argument("--out", help="write the report JSON here too")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    classifier = ClipClassifier.load(Path(args.classifier))
    if args.checkpoint:
        pipe = pipeline_from_checkpoint(Path(args.checkpoint))
    else:
        if not (Path(args.pipeline) / "model_index.json").is_file():
            print(f"error: {args.pipeline} is not a saved diffusers pipeline (no model_index.json)", file=sys.stderr)
            return 2
        with loading_bars(False):
            pipe = AnimateDiffPipeline.from_pretrained(args.pipeline, local_files_only=True,
                                                       **dtype_kwargs(torch.float32))
        pipe.set_progress_bar_config(disable=True)
    if args.vae_only:
        print(json.dumps(vae_report(pipe.vae, classifier, split=args.split, seed=args.seed), indent=1))
        return 0
    random_pipe = None
    if not args.no_random_baseline:
        from .demo_train import DemoConfig, build_components

        meta = Path(args.checkpoint) / "config.json" if args.checkpoint else Path(args.pipeline) / "training.json"
        cfg = _config(meta) if meta.is_file() else DemoConfig()
        vae, unet, adapter, te, tok, sched = build_components(cfg, seed=12345)
        random_pipe = AnimateDiffPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, motion_adapter=adapter,
                                          scheduler=sched)
        random_pipe.set_progress_bar_config(disable=True)
    from tqdm.auto import tqdm

    total = args.clips * (1 if random_pipe is None else 2)  # the random-weight baseline generates as many
    with tqdm(total=total, unit="clip", desc="generating", disable=args.quiet, file=sys.stderr) as bar:
        report = evaluate(pipe, classifier, clips=args.clips, split=args.split, seed=args.seed, steps=args.steps,
                          guidance=args.guidance, random_pipe=random_pipe, progress=bar.update)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
