"""What the demo model's attention traces show: capture a handful of prompts and summarize.

    python -m capture.models.demo_traces --root build/demo-traces [--out report.md]

Captures the demo model (every attention layer: spatial, cross, temporal) on held-out prompts x
seeds, plus the same architecture with random weights for contrast, then reports from the
catalog: normalized entropy per layer kind over the denoising steps, how far layers differ from
each other compared with how much one layer varies across prompts and seeds, and how stable the
layer ranking is from run to run (mean Spearman correlation between runs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import world as W

PROMPTS = 6
SEEDS = (0, 1)


def capture_runs(pipe, root, prompts, seeds, *, model: str, defaults: dict, on_step=None) -> list[str]:
    import torch

    from ..tracer import trace

    with trace(pipe, root=root, layers="all", model=model, on_step=on_step) as tr:
        for p in prompts:
            for s in seeds:
                pipe(p, num_frames=defaults["frames"], height=defaults["height"], width=defaults["width"],
                     num_inference_steps=defaults["steps"], guidance_scale=defaults["guidance"],
                     generator=torch.Generator().manual_seed(s), output_type="np")
        return list(tr.run_ids)


def summarize(cat, runs: list[str]) -> dict:
    """Tables from the catalog for a set of runs (cond branch, part 'all', heads averaged)."""
    lst = ", ".join(f"'{r}'" for r in runs)
    per = cat.query(f"""
        SELECT run, layer_name, kind, step, avg(entropy_norm) AS h
        FROM stats WHERE run IN ({lst}) AND branch = 'cond' AND part = 'all' GROUP BY ALL""")
    by_kind_step = per.groupby(["kind", "step"])["h"].mean().unstack("step")
    layer_run = per.groupby(["layer_name", "kind", "run"])["h"].mean().reset_index()
    rows = []
    for kind, g in layer_run.groupby("kind"):
        m = g.pivot(index="layer_name", columns="run", values="h")
        between = float(m.mean(axis=1).std(ddof=1)) if len(m) > 1 else float("nan")
        within = float(m.std(axis=1, ddof=1).mean())
        ranks = m.rank()
        rho = [float(np.corrcoef(ranks[a], ranks[b])[0, 1]) for a, b in itertools.combinations(m.columns, 2)]
        rows.append(dict(kind=kind, layers=len(m), mean=float(m.values.mean()), min_layer=float(m.mean(axis=1).min()),
                         max_layer=float(m.mean(axis=1).max()), between_layer_std=between,
                         within_layer_std=within, ratio=between / within if within > 0 else float("inf"),
                         rank_spearman=float(np.nanmean(rho)) if rho else float("nan")))
    spread = pd.DataFrame(rows).set_index("kind")
    layer_means = layer_run.groupby(["layer_name", "kind"])["h"].mean().reset_index()
    return {"by_kind_step": by_kind_step, "spread": spread, "layer_means": layer_means}


def _md(df: pd.DataFrame, fmt="{:.3f}") -> str:
    cols = [str(c) for c in df.columns]
    out = ["| " + " | ".join([df.index.name or ""] + cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for idx, row in df.iterrows():
        cells = [fmt.format(v) if isinstance(v, (float, np.floating)) else str(v) for v in row]
        out.append("| " + " | ".join([str(idx)] + cells) + " |")
    return "\n".join(out)


def report(trained: dict, random: dict | None, runs: dict) -> str:
    steps = list(trained["by_kind_step"].columns)
    show = sorted(set(steps[:: max(1, len(steps) // 6)]) | {steps[-1]})
    lines = ["### Normalized entropy per layer kind over the denoising steps (trained model)", "",
             "Mean over layers of a kind, heads, prompts and seeds; conditional branch; 0 = one key, "
             "1 = uniform over all keys.", "", _md(trained["by_kind_step"][show].rename_axis("kind")), ""]
    if random is not None:
        lines += ["Same architecture, random weights:", "", _md(random["by_kind_step"][show].rename_axis("kind")), ""]
    lines += ["### Do layers differ?", "",
              "Per kind: the spread of per-layer mean entropy across layers (between-layer std) against "
              "the spread of one layer across prompts and seeds (within-layer std), and the mean Spearman "
              "correlation of the layer ranking between every pair of runs.", "",
              _md(trained["spread"]), ""]
    if random is not None:
        lines += ["Random weights:", "", _md(random["spread"]), ""]
    lm = trained["layer_means"].sort_values("h")
    lines += ["Lowest and highest entropy layers (trained, mean over runs and steps):", "",
              _md(pd.concat([lm.head(4), lm.tail(4)]).set_index("layer_name").rename(columns={"h": "entropy_norm"})),
              "", f"Runs: {json.dumps(runs)}", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    from ..console import quiet_libraries

    quiet_libraries()
    from .presets import load_pipeline

    ap = argparse.ArgumentParser(description="Capture the demo model and summarize its attention traces.")
    ap.add_argument("--root", default="build/demo-traces")
    ap.add_argument("--out", help="write the Markdown report here (default: print)")
    ap.add_argument("--prompts", type=int, default=PROMPTS)
    ap.add_argument("--no-random", action="store_true", help="skip the random-weight contrast")
    ap.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    from tqdm.auto import tqdm

    from ..catalog import Catalog

    rng = np.random.default_rng(2026)
    prompts = [W.sample_spec(rng, "heldout").prompt for _ in range(args.prompts)]
    pipe, _, defaults = load_pipeline("demo", quiet=args.quiet)
    if args.steps is not None:
        if args.steps < 1:
            print("error: --steps must be at least 1", file=sys.stderr)
            return 2
        defaults = {**defaults, "steps": args.steps}
    per_model = len(prompts) * len(SEEDS) * defaults["steps"]
    bar = tqdm(total=per_model * (1 if args.no_random else 2), unit="step", desc="capturing", disable=args.quiet,
               file=sys.stderr)
    tick = lambda i, t: bar.update(1)  # noqa: E731
    runs = {"trained": capture_runs(pipe, args.root, prompts, SEEDS, model="demo", defaults=defaults, on_step=tick)}
    if not args.no_random:
        from diffusers import AnimateDiffPipeline

        from .demo_eval import _config
        from .demo_train import DemoConfig, build_components
        from .presets import DEMO_DIR

        meta = DEMO_DIR / "training.json"
        cfg = _config(meta) if meta.is_file() else DemoConfig()
        vae, unet, adapter, te, tok, sched = build_components(cfg, seed=12345)
        rpipe = AnimateDiffPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, motion_adapter=None,
                                    scheduler=sched)
        rpipe.set_progress_bar_config(disable=True)
        runs["random"] = capture_runs(rpipe, args.root, prompts, SEEDS, model="demo-random-weights",
                                      defaults=defaults, on_step=tick)
    bar.close()
    cat = Catalog(args.root)
    text = report(summarize(cat, runs["trained"]), summarize(cat, runs["random"]) if "random" in runs else None,
                  runs)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
