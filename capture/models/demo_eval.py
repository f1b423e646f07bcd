"""Evaluate a demo-world text-to-video pipeline with the world's exact metrics.

    python -m capture.models.demo_eval --pipeline data/demo/model/pipeline --clips 120

Generates single-shape prompts of a split (held-out by default) × seeds, reads every clip with the
shipped classifier, and reports prompt-fidelity accuracy per attribute (colour, shape, motion of
the prompt's shape) and the Fréchet distance, in the classifier's feature space, between the
generated clips and real clips of the same prompts; for scale it also reports real vs real (two
disjoint sets of renders) and the same architecture with random weights vs real.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from . import world as W
from .world_classifier import HEADS, ClipClassifier, frechet_distance

DEFAULT_CLASSIFIER = Path(__file__).resolve().parents[2] / "data" / "demo" / "classifier"


def generate(pipe, prompts: list[str], seeds: list[int], *, frames=8, size=32, steps=25, guidance=7.5,
             batch=8) -> np.ndarray:
    """(N, frames, size, size, 3) uint8 clips, one per (prompt, seed) pair, in order."""
    from ..video import frames_to_uint8

    out = []
    for i in range(0, len(prompts), batch):
        ps, ss = prompts[i : i + batch], seeds[i : i + batch]
        gens = [torch.Generator().manual_seed(s) for s in ss]
        res = pipe(ps, num_frames=frames, height=size, width=size, num_inference_steps=steps,
                   guidance_scale=guidance, generator=gens, output_type="np").frames
        out += [frames_to_uint8(res[j : j + 1]) for j in range(len(ps))]
    return np.stack(out)


def evaluate(pipe, classifier: ClipClassifier, *, clips=120, split="heldout", seed=0, steps=25, guidance=7.5,
             random_pipe=None, progress=None) -> dict:
    rng = np.random.default_rng(seed)
    specs = [W.sample_spec(rng, split) for _ in range(clips)]
    seeds = [int(s) for s in rng.integers(0, 2**31, clips)]
    gen = generate(pipe, [s.prompt for s in specs], seeds, steps=steps, guidance=guidance)
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
        rand = generate(random_pipe, [s.prompt for s in specs], seeds, steps=steps, guidance=guidance)
        with torch.no_grad():
            report["frechet"]["random_weights_vs_real"] = frechet_distance(classifier.features(rand).numpy(),
                                                                           feats["real_a"])
        report["random_weights_accuracy"] = {
            k: float(np.mean([p == getattr(s.main, k) for p, s in zip(classifier.predict(rand)[k], specs)]))
            for k in HEADS}
    return report


def main(argv=None) -> int:
    from diffusers import AnimateDiffPipeline

    ap = argparse.ArgumentParser(description="Prompt fidelity and Fréchet distance of a demo-world model.")
    ap.add_argument("--pipeline", default="data/demo/model/pipeline")
    ap.add_argument("--classifier", default=str(DEFAULT_CLASSIFIER))
    ap.add_argument("--clips", type=int, default=120)
    ap.add_argument("--split", default="heldout", choices=["heldout", "train"])
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-random-baseline", action="store_true")
    ap.add_argument("--out", help="write the report JSON here too")
    args = ap.parse_args(argv)
    pipe = AnimateDiffPipeline.from_pretrained(args.pipeline, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    random_pipe = None
    if not args.no_random_baseline:
        from .demo_train import DemoConfig, build_components

        cfg_path = Path(args.pipeline).parent / "config.json"
        cfg = DemoConfig(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in json.loads(cfg_path.read_text())["config"].items()}) if cfg_path.is_file() \
            else DemoConfig()
        vae, unet, adapter, te, tok, sched = build_components(cfg, seed=12345)
        random_pipe = AnimateDiffPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, motion_adapter=adapter,
                                          scheduler=sched)
        random_pipe.set_progress_bar_config(disable=True)
    report = evaluate(pipe, ClipClassifier.load(Path(args.classifier)), clips=args.clips, split=args.split,
                      seed=args.seed, steps=args.steps, guidance=args.guidance, random_pipe=random_pipe)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
