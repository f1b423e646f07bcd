"""Cost of IE-Adapt guidance per video: denoiser calls, batch items and seconds, side by side in one run.

    python benchmarks/bench_ieadapt.py                 # demo model, 25 steps, 6 videos per mode
    python benchmarks/bench_ieadapt.py --videos 10 --model tiny-animatediff --steps 10

Modes: the plain pipeline (no capture), diffusers' AnimateDiffPAGPipeline on the same layers (no
capture; it batches [uncond, cond, perturbed] in one call), and through attnlens with attention
capture (statistics only): plain CFG, IE-Adapt guidance (one extra call on the conditional half
per step) and temperature mode. Denoiser calls and batch items are counted with a forward
pre-hook, plus the extra calls guidance reports (they run inside the hooked forward, so a torch
pre-hook does not see them); seconds are the median over the videos.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--prompt", default="a large red circle moving right on a plain background")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import tempfile

    import torch
    from diffusers import AnimateDiffPAGPipeline

    from capture.layers import inventory
    from capture.models.families import family_of
    from capture.models.presets import load_pipeline
    from capture.tracer import CaptureConfig
    from ieadapt.enhance import EnhanceConfig, enhance, pag_layers

    pipe, preset, d = load_pipeline(args.model)
    call = dict(num_inference_steps=args.steps, num_frames=d["frames"], guidance_scale=d["guidance"], output_type="np")
    for k in ("height", "width"):
        if d.get(k):
            call[k] = d[k]
    fam = family_of(pipe)
    layers = pag_layers([(l.name, l.kind) for l in inventory(pipe, fam)])
    counts = {"calls": 0, "items": 0}

    def count(module, a, kw):
        counts["calls"] += 1
        counts["items"] += int((kw.get("sample") if "sample" in kw else a[0]).shape[0])

    handle = pipe.unet.register_forward_pre_hook(count, with_kwargs=True)
    parts = {k: getattr(pipe, k) for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    pag = AnimateDiffPAGPipeline(**parts, motion_adapter=None, pag_applied_layers=layers)
    pag.set_progress_bar_config(disable=True)
    cap = CaptureConfig(maps=False)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        modes = [
            ("pipeline, no capture", lambda s: pipe(args.prompt, generator=torch.Generator().manual_seed(s), **call)),
            ("diffusers PAG, no capture",
             lambda s: pag(args.prompt, generator=torch.Generator().manual_seed(s), pag_scale=3.0, **call)),
            ("CFG, captured", lambda s: enhance(pipe, layers, EnhanceConfig(mode="cfg"), prompt=args.prompt, seed=s,
                                                call=call, root=root, capture=cap)),
            ("guidance I, captured",
             lambda s: enhance(pipe, layers, EnhanceConfig(mode="guidance", scale=3.0, perturb="I"), prompt=args.prompt,
                               seed=s, call=call, root=root, capture=cap)),
            ("temperature, captured",
             lambda s: enhance(pipe, layers, EnhanceConfig(mode="temperature", factor=0.8), prompt=args.prompt, seed=s,
                               call=call, root=root, capture=cap)),
        ]
        try:
            for i in range(args.videos + 1):  # round-robin over modes; video 0 warms up and is dropped
                for name, fn in modes:
                    counts.update(calls=0, items=0)
                    t0 = time.perf_counter()
                    res = fn(i)
                    dt = time.perf_counter() - t0
                    counts["calls"] += getattr(res, "extra_calls", 0)
                    counts["items"] += getattr(res, "extra_items", 0)
                    if i:
                        rows.append((name, dt, counts["calls"], counts["items"]))
        finally:
            handle.remove()
            from diffusers.models.attention_processor import AttnProcessor2_0

            for n, m in pipe.unet.named_modules():
                if n in layers:
                    m.set_processor(AttnProcessor2_0())
    print(f"model {args.model}, {args.steps} steps, {args.videos} videos per mode, {torch.get_num_threads()} threads; "
          f"guidance layers (PAG default): {len(layers)}")
    print(f"{'mode':<28} {'s/video':>8} {'vs row 1':>9} {'vs CFG captured':>16} {'denoiser calls':>15} {'batch items':>12}")
    med = {n: statistics.median(dt for m, dt, _, _ in rows if m == n) for n, _ in modes}
    first, cfg = med[modes[0][0]], med["CFG, captured"]
    for name, _ in modes:
        calls = {c for m, _, c, _ in rows if m == name}
        items = {it for m, _, _, it in rows if m == name}
        print(f"{name:<28} {med[name]:>8.3f} {med[name] / first:>8.2f}x {med[name] / cfg:>15.2f}x "
              f"{'/'.join(map(str, sorted(calls))):>15} {'/'.join(map(str, sorted(items))):>12}")
    print(f"per step: guidance makes {max(c for m, _, c, _ in rows if m.startswith('guidance')) / args.steps:.0f} "
          f"denoiser calls (CFG makes {max(c for m, _, c, _ in rows if m.startswith('CFG')) / args.steps:.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
