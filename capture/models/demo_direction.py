"""Does a demo-world model's prediction depend on the motion word? A probe of its high-noise steps.

    python -m capture.models.demo_direction --pipeline data/demo/model [--fit 200]

Direction is decided in the first few denoising steps, when the clip is nearly pure noise: the
model's x0 prediction there should be the prompt's conditional mean, a blurred shape sliding the
way the prompt says. This probe measures, on real training-split clips noised to high timesteps,
the mean squared error of the model's implied x0 prediction (in VAE latents) with the clip's own
prompt and with the same prompt whose direction word is swapped (left <-> right, up <-> down).
A model that reads the direction word predicts worse with the swapped prompt (a positive gap).
For scale it reports the same gap for the oracle predictor: the Monte Carlo conditional mean of
each prompt's latents, which is what an ideal denoiser predicts from pure noise.

``--fit N`` also runs a learnability test: N optimizer steps fitting a copy of the model so that its
output from pure noise, for two prompts that differ only in the direction word, is each prompt's
exact conditional mean.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import world as W
from .presets import DEMO_DIR, dtype_kwargs, loading_bars

log = logging.getLogger(__name__)

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "still": "still"}


def swap_direction(spec: W.ClipSpec) -> W.ClipSpec:
    """The same clip spec with every object's direction reversed (still stays still)."""
    objects = tuple(W.Obj(o.colour, o.shape, OPPOSITE[o.motion], o.size) for o in spec.objects)
    return W.ClipSpec(objects, spec.background)


def moving_specs(rng: np.random.Generator, n: int, split: str = "train") -> list[W.ClipSpec]:
    """n single-object specs of ``split`` whose object moves."""
    out: list[W.ClipSpec] = []
    while len(out) < n:
        spec = W.sample_spec(rng, split)
        if spec.main.motion != "still" and len(spec.objects) == 1:
            out.append(spec)
    return out


@torch.no_grad()
def encode_clips(vae, clips: np.ndarray) -> torch.Tensor:
    """(N, F, H, W, 3) uint8 clips -> scaled latents (N, C, F, h, w), the denoiser's layout."""
    n, frames = clips.shape[:2]
    x = torch.from_numpy(clips).float().div(127.5).sub(1).permute(0, 1, 4, 2, 3).flatten(0, 1)
    z = vae.encode(x.to(next(vae.parameters()).dtype)).latent_dist.mean.float() * vae.config.scaling_factor
    return z.reshape(n, frames, *z.shape[1:]).permute(0, 2, 1, 3, 4)


def conditional_mean(vae, spec: W.ClipSpec, rng: np.random.Generator, renders: int = 48) -> torch.Tensor:
    """Monte Carlo E[z0 | prompt]: the mean latent of ``renders`` fresh clips of ``spec``."""
    clips = np.stack([W.render(spec, int(s)) for s in rng.integers(0, 2**31, renders)])
    return encode_clips(vae, clips).mean(0)


def implied_x0(scheduler, x_t: torch.Tensor, t: int, out: torch.Tensor) -> torch.Tensor:
    """The x0 a denoiser output implies, for the scheduler's prediction type (epsilon or v)."""
    a = scheduler.alphas_cumprod[t].to(x_t.dtype)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (x_t - (1 - a).sqrt() * out) / a.sqrt()
    if kind == "v_prediction":
        return a.sqrt() * x_t - (1 - a).sqrt() * out
    if kind == "sample":
        return out
    raise ValueError(f"unknown prediction type {kind!r}")


def _embed(pipe, prompts: list[str], frames: int) -> torch.Tensor:
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    return pipe.text_encoder(ids)[0].repeat_interleave(frames, dim=0)


def _real_clips(pipe, clips: int, seed: int):
    """``clips`` real training-split clips of moving shapes, their latents and noise of the same shape,
    all from one seeded generator (returned too, for further draws)."""
    rng = np.random.default_rng(seed)
    specs = moving_specs(rng, clips)
    real = np.stack([W.render(s, int(rng.integers(2**31))) for s in specs])
    z0 = encode_clips(pipe.vae, real)
    noise = torch.from_numpy(rng.standard_normal(z0.shape).astype(np.float32))
    return rng, specs, real, z0, noise


@torch.no_grad()
def direction_gap(pipe, *, clips: int = 32, timesteps=(960, 880, 800, 600), seed: int = 99, renders: int = 48,
                  oracle: bool = True, on_step=None) -> list[dict]:
    """Per timestep: x0 MSE with the clip's prompt, with the direction-swapped prompt, and the
    relative gap (swapped - own) / own; the same for the oracle conditional mean when ``oracle``.
    ``on_step()`` after each timestep and after each oracle mean."""
    tick = on_step or (lambda: None)
    rng, specs, _, z0, noise = _real_clips(pipe, clips, seed)
    frames = z0.shape[2]
    own = _embed(pipe, [s.prompt for s in specs], frames)
    swapped = _embed(pipe, [swap_direction(s).prompt for s in specs], frames)
    rows = []
    for t in timesteps:
        tt = torch.full((len(specs),), int(t))
        x_t = pipe.scheduler.add_noise(z0, noise, tt)
        mse = [float(((implied_x0(pipe.scheduler, x_t, int(t), pipe.unet(x_t, tt, encoder_hidden_states=e).sample)
                       - z0) ** 2).mean()) for e in (own, swapped)]
        rows.append({"predictor": "model", "t": int(t), "mse_own": mse[0], "mse_swapped": mse[1],
                     "gap": (mse[1] - mse[0]) / mse[0]})
        tick()
    if oracle:
        m_own, m_swap = [], []
        for s in specs:  # same draw order as before: every own-prompt mean, then every swapped one
            m_own.append(conditional_mean(pipe.vae, s, rng, renders))
            tick()
        for s in specs:
            m_swap.append(conditional_mean(pipe.vae, swap_direction(s), rng, renders))
            tick()
        m_own, m_swap = torch.stack(m_own), torch.stack(m_swap)
        mse = [float(((m - z0) ** 2).mean()) for m in (m_own, m_swap)]
        rows.append({"predictor": "oracle conditional mean", "t": None, "mse_own": mse[0], "mse_swapped": mse[1],
                     "gap": (mse[1] - mse[0]) / mse[0]})
    return rows


@torch.no_grad()
def resample_from_step(pipe, classifier, *, clips: int = 32, starts=(0, 4, 8), steps: int = 25, guidance: float = 7.5,
                       seed: int = 5, on_step=None) -> list[dict]:
    """Noise real moving clips to DDIM step ``start`` of ``steps`` and sample the rest with classifier-free
    guidance, once with each clip's prompt and once with the direction reversed; the classifier then
    reads the direction. Per start: the fraction that keeps the clip's direction under its own prompt,
    under the reversed prompt, and the fraction that follows the reversed prompt."""
    _, specs, _, z0, noise = _real_clips(pipe, clips, seed)
    frames = z0.shape[2]
    truth = [s.main.motion for s in specs]
    uncond = _embed(pipe, [""] * len(specs), frames)
    sched = copy.deepcopy(pipe.scheduler)
    from ..video import frames_to_uint8

    rows = []
    for start in starts:
        sched.set_timesteps(steps)
        t0 = sched.timesteps[start]
        read = {}
        prompts_by_name = {"own": [s.prompt for s in specs], "reversed": [swap_direction(s).prompt for s in specs]}
        for name, prompts in prompts_by_name.items():
            cond = _embed(pipe, prompts, frames)
            x = sched.add_noise(z0, noise, t0.repeat(len(specs)))
            for t in sched.timesteps[start:]:
                out = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
                e_u, e_c = out.chunk(2)
                x = sched.step(e_u + guidance * (e_c - e_u), t, x).prev_sample
                if on_step is not None:
                    on_step()
            video = pipe.video_processor.postprocess_video(pipe.decode_latents(x), output_type="np")
            read[name] = classifier.predict(np.stack([frames_to_uint8(v[None]) for v in video]))["motion"]
        def share(pred, want):
            return float(np.mean([p == w for p, w in zip(pred, want)]))

        rows.append({"start": int(start), "t": int(t0), "own_keeps_clip": share(read["own"], truth),
                     "reversed_keeps_clip": share(read["reversed"], truth),
                     "reversed_follows_prompt": share(read["reversed"], [OPPOSITE[q] for q in truth])})
    return rows


def fit_two_prompts(pipe, steps: int = 200, *, lr: float = 1e-3, t: int = 960, renders: int = 48, seed: int = 0,
                    spec: W.ClipSpec | None = None, every: int = 25, on_step=None, twin: bool = True) -> list[dict]:
    """Fit a copy of the denoiser (and text encoder) so that, from pure noise at timestep ``t``, its
    output is each prompt's conditional mean, for one spec and its direction-swapped twin.
    Returns the learning curve: x0 MSE with the right prompt and with the swapped one, on fixed
    evaluation noise. The floor for a model that ignores the direction word is ``floor``.
    ``on_step()`` is called after each optimizer step (a progress bar's update). ``twin=False`` is
    the control: the spec alone (floor 0), which shows the frame-dependent mean itself is learnable."""
    rng = np.random.default_rng(seed)
    spec = spec or W.ClipSpec((W.Obj("red", "circle", "left"),), "plain")
    pair = [spec, swap_direction(spec)] if twin else [spec, spec]
    means = torch.stack([conditional_mean(pipe.vae, s, rng, renders) for s in pair])
    floor = float(((means - means.mean(0, keepdim=True)) ** 2).mean())
    unet, text = copy.deepcopy(pipe.unet).float().train(), copy.deepcopy(pipe.text_encoder).float().train()
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ids = pipe.tokenizer([s.prompt for s in pair], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    frames = means.shape[2]
    gen = torch.Generator().manual_seed(seed)
    eval_noise = torch.randn((8,) + tuple(means.shape[1:]), generator=gen)

    def predict(noise, which, prompt_ids):
        # no signal in the input: only the prompt can tell the directions apart. The output is read
        # as x0 directly (from pure noise x0 is all there is to predict), which keeps the fit equally
        # well conditioned for epsilon models, whose implied x0 would amplify errors 1/sqrt(alpha_bar)-fold
        e = text(prompt_ids)[0].repeat_interleave(frames, dim=0)
        return unet(noise, torch.full((len(which),), t), encoder_hidden_states=e).sample

    curve = []
    which = torch.arange(8) % 2
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            with torch.no_grad():
                right = float(((predict(eval_noise, which, ids[which]) - means[which]) ** 2).mean())
                wrong = float(((predict(eval_noise, which, ids[1 - which]) - means[which]) ** 2).mean())
            curve.append({"step": step, "mse_own": right, "mse_swapped": wrong, "floor": floor})
            log.info("fit step %d: own %.4f swapped %.4f (direction-blind floor %.4f)", step, right, wrong, floor)
        if step == steps:
            break
        pick = torch.from_numpy(rng.integers(0, 2, 16))
        noise = torch.randn((16,) + tuple(means.shape[1:]), generator=gen)
        loss = F.mse_loss(predict(noise, pick, ids[pick]), means[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if on_step is not None:
            on_step()
    return curve


def main(argv=None) -> int:
    from ..console import quiet_libraries

    quiet_libraries()
    from diffusers import AnimateDiffPipeline

    ap = argparse.ArgumentParser(description="Does a demo-world model's high-noise prediction follow the motion word?")
    ap.add_argument("--pipeline", default=str(DEMO_DIR), help="a saved demo-world pipeline (default: the shipped one)")
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--fit", type=int, default=0, metavar="STEPS", help="also run the two-prompt learnability test")
    ap.add_argument("--resample", action="store_true",
                    help="also sample real clips from DDIM steps 0, 4 and 8 with their own and the reversed prompt")
    ap.add_argument("--control", action="store_true", help="fit one prompt instead of a direction-swapped pair")
    ap.add_argument("--renders", type=int, default=48,
                    help="fresh clips per prompt behind each Monte Carlo conditional mean (the oracle and the fit)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    problem = None
    if not (Path(args.pipeline) / "model_index.json").is_file():
        problem = f"{args.pipeline} is not a saved diffusers pipeline (no model_index.json)"
    elif args.clips < 1 or args.fit < 0 or args.renders < 1:
        problem = "--clips and --renders must be at least 1 and --fit at least 0"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        with loading_bars(False):
            pipe = AnimateDiffPipeline.from_pretrained(args.pipeline, local_files_only=True,
                                                       **dtype_kwargs(torch.float32))
    except (OSError, ValueError) as e:
        print(f"error: cannot load {args.pipeline}: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    from tqdm.auto import tqdm

    def bar(total, desc):
        return tqdm(total=total, desc=desc, unit="step", disable=args.quiet, file=sys.stderr, leave=False)

    timesteps = (960, 880, 800, 600)  # direction_gap's defaults
    with bar(len(timesteps) + 2 * args.clips, "direction gap") as b:
        gap = direction_gap(pipe, clips=args.clips, timesteps=timesteps, renders=args.renders, on_step=b.update)
    print(f"{'predictor':26s} {'t':>4s} {'x0 MSE, own prompt':>19s} {'swapped direction':>18s} {'gap':>7s}")
    for r in gap:
        t = "" if r["t"] is None else str(r["t"])
        print(f"{r['predictor']:26s} {t:>4s} {r['mse_own']:19.4f} {r['mse_swapped']:18.4f} {100 * r['gap']:+6.1f}%")
    if args.resample:
        from .demo_eval import DEFAULT_CLASSIFIER
        from .world_classifier import ClipClassifier

        starts, steps = (0, 4, 8), 25  # resample_from_step's defaults
        with bar(2 * sum(steps - s for s in starts), "resample") as b:
            rows = resample_from_step(pipe, ClipClassifier.load(DEFAULT_CLASSIFIER), clips=args.clips, starts=starts,
                                      steps=steps, on_step=b.update)
        print(f"\n{'start':>10s} {'own prompt: keeps clip':>23s} {'reversed: keeps clip':>21s}"
              f" {'reversed: follows prompt':>25s}")
        for r in rows:
            print(f"{r['start']:4d} t={r['t']:<4d} {100 * r['own_keeps_clip']:22.0f}%"
                  f" {100 * r['reversed_keeps_clip']:20.0f}% {100 * r['reversed_follows_prompt']:24.0f}%")
    if args.fit:
        what = "'red circle moving left' alone" if args.control else "'red circle moving left' vs 'moving right'"
        print(f"\nfitting {what} from pure noise, {args.fit} steps")
        with bar(args.fit, "fit") as b:
            curve = fit_two_prompts(pipe, args.fit, renders=args.renders, on_step=b.update, twin=not args.control)
        floor = "two renders' Monte Carlo noise" if args.control else "direction-blind"
        print(f"{'step':>5s} {'own prompt':>11s} {'swapped':>9s}   floor ({floor}) {curve[0]['floor']:.4f}")
        for r in curve:
            print(f"{r['step']:5d} {r['mse_own']:11.4f} {r['mse_swapped']:9.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
