"""Training script for the demo text-to-video model (AnimateDiff architecture on the demo world).

    python -m capture.models.demo_train --out DIR [--vae-steps N --unet-steps N --decoder-steps N]

Three stages, all on clips rendered on the fly from the training split of the world (world.py):
1. an AutoencoderKL (4x spatial compression: 32 px frames -> 8x8 latents) trained on frames;
2. a UNetMotionModel (UNet2DConditionModel + MotionAdapter: spatial self-, cross- and temporal
   attention) trained to predict noise (min-SNR-5 weighting), jointly with a small CLIP text
   encoder over a tokenizer whose grammar words are single tokens, with 10 % prompt dropout for
   CFG; an exponential moving average of both is what gets saved.
After stage 1 the VAE's scaling factor is set to 1 / (std of its latents), so the denoiser sees
unit-variance latents.
3. the VAE decoder alone, encoder frozen (so the denoiser's latent space does not move), with an
   added edge term that keeps small shapes' corners sharp.

Reproducible from --seed; resumable: every --save-every steps the stage's weights, AdamW state
and RNG states go to <out>/checkpoint (safetensors + JSON; no pickle), and a rerun continues
from there. The loss curve is appended to <out>/loss.csv. The finished pipeline is written with
save_pretrained to <out>/pipeline, in float16 (load it with ``dtype=torch.float32``).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import world as W
from .presets import dtype_kwargs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    frames: int = 8
    size: int = 32
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (32, 64, 64)  # 3 blocks: 4x downsampling
    unet_channels: tuple[int, ...] = (64, 128)
    text_dim: int = 64
    text_tokens: int = 32
    heads: int = 4
    motion_heads: int = 4
    train_timesteps: int = 1000


def build_components(cfg: DemoConfig, seed: int):
    """Untrained (random, seeded) components with the AnimateDiff architecture."""
    from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tokenizer import word_clip_tokenizer

    tokenizer = word_clip_tokenizer(W.vocabulary(), cfg.text_tokens)
    torch.manual_seed(seed)
    n = len(cfg.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels, layers_per_block=1, norm_num_groups=16, sample_size=cfg.size,
    )
    unet2d = UNet2DConditionModel(
        sample_size=cfg.size // 2 ** (n - 1), in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        block_out_channels=cfg.unet_channels, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * len(cfg.unet_channels),
        up_block_types=("CrossAttnUpBlock2D",) * len(cfg.unet_channels),
        cross_attention_dim=cfg.text_dim, attention_head_dim=cfg.unet_channels[0] // cfg.heads, norm_num_groups=16,
    )
    adapter = MotionAdapter(block_out_channels=cfg.unet_channels, motion_layers_per_block=1,
                            motion_num_attention_heads=cfg.motion_heads, motion_norm_num_groups=16,
                            motion_max_seq_length=32, use_motion_mid_block=True)
    unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_dim, intermediate_size=2 * cfg.text_dim, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=cfg.text_tokens, bos_token_id=512, eos_token_id=513,
        pad_token_id=513)).eval()
    scheduler = DDIMScheduler(num_train_timesteps=cfg.train_timesteps, beta_schedule="linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False, steps_offset=1)
    return vae, unet, adapter, text_encoder, tokenizer, scheduler


def _clips(rng, n, cfg: DemoConfig):
    specs = [W.sample_spec(rng, "train", two_objects_p=0.1) for _ in range(n)]
    clips = np.stack([W.render(s, int(rng.integers(2**31)), cfg.frames, cfg.size) for s in specs])
    x = torch.from_numpy(clips).float().div_(127.5).sub_(1.0)  # (B, F, H, W, 3) in [-1, 1]
    return x.permute(0, 1, 4, 2, 3), [s.prompt for s in specs]  # (B, F, 3, H, W)


# -- checkpoints: safetensors for tensors, JSON for the rest ---------------------------------------
def _save_checkpoint(path: Path, stage: str, step: int, model, opt, rng, extra: dict) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    tensors[f"opt.{names[id(p)]}.{key}"] = st[key].contiguous()
            if "step" in st:
                tensors[f"opt.{names[id(p)]}.step"] = torch.as_tensor(st["step"]).reshape(1).float()
    tmp = path / f"{stage}.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(path / f"{stage}.safetensors")
    state = {"stage": stage, "step": step, "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state().tolist(),
             **extra}
    (path / f"{stage}.json.tmp").write_text(json.dumps(state))
    (path / f"{stage}.json.tmp").replace(path / f"{stage}.json")


def _load_checkpoint(path: Path, stage: str, model, opt, rng) -> int:
    """Restore a stage's checkpoint if there is one; returns the step to continue from."""
    from safetensors.torch import load_file

    meta = path / f"{stage}.json"
    if not meta.is_file():
        return 0
    state = json.loads(meta.read_text())
    tensors = load_file(str(path / f"{stage}.safetensors"))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    params = dict(model.named_parameters())
    for name, p in params.items():
        if f"opt.{name}.exp_avg" in tensors:
            opt.state[p] = {"exp_avg": tensors[f"opt.{name}.exp_avg"].to(p.device),
                            "exp_avg_sq": tensors[f"opt.{name}.exp_avg_sq"].to(p.device),
                            "step": tensors[f"opt.{name}.step"].reshape(())}
    rng.bit_generator.state = state["numpy_rng"]
    torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    return int(state["step"])


class _LossLog:
    def __init__(self, path: Path):
        self.path = path
        new = not path.is_file()
        self.f = path.open("a", newline="")
        self.w = csv.writer(self.f)
        if new:
            self.w.writerow(["stage", "step", "loss", "seconds"])
        self.t0 = time.time()

    def add(self, stage, step, loss):
        self.w.writerow([stage, step, f"{loss:.6f}", f"{time.time() - self.t0:.1f}"])
        self.f.flush()


def _stage(name, model, params, steps, lr, batch_fn, loss_fn, out: Path, rng, save_every, log_csv, bar_factory,
           budget: list[int], after_step=None) -> bool:
    """Train one stage to `steps`, resuming from its checkpoint; False if budget[0] (steps this
    invocation may still run) ran out first, after saving a checkpoint. ``model`` is everything the
    checkpoint holds (e.g. live and averaged weights); ``params`` what the optimizer moves;
    ``after_step(step)`` runs after each optimizer step (e.g. the moving-average update)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    start = _load_checkpoint(out / "checkpoint", name, model, opt, rng)
    if start:
        log.info("%s: resuming at step %d", name, start)
    bar = bar_factory(total=steps, initial=start, desc=name, unit="step")
    model.train()
    for step in range(start, steps):
        if budget[0] <= 0:
            _save_checkpoint(out / "checkpoint", name, step, model, opt, rng, {})
            bar.close()
            return False
        budget[0] -= 1
        lr_now = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * step / steps))  # warm-up + cosine
        for g in opt.param_groups:
            g["lr"] = lr_now
        loss = loss_fn(*batch_fn())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if after_step is not None:
            after_step(step)
        log_csv.add(name, step, float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        if (step + 1) % save_every == 0 or step + 1 == steps:
            _save_checkpoint(out / "checkpoint", name, step + 1, model, opt, rng, {})
    bar.close()
    model.eval()
    return True


def train(out: Path, cfg: DemoConfig = DemoConfig(), *, vae_steps: int = 1200, unet_steps: int = 2800,
          decoder_steps: int = 800,
          batch: int = 16, lr: float = 6e-4, ema_decay: float = 0.999, seed: int = 0,
          save_every: int = 200, device: str = "cpu", bar_factory=None, stop_after: int | None = None,
          freeze_text: bool = False, reuse_vae: Path | None = None):
    """Train the stages into ``out`` (resuming if a checkpoint is there); returns the pipeline, or
    None when ``stop_after`` steps (over all stages) ran first — run again to continue.
    ``device`` is where the models train (data is rendered on the CPU). ``freeze_text`` keeps the
    text encoder at its seeded random weights (only the denoiser learns); ``reuse_vae`` takes a
    trained AutoencoderKL from that directory and skips the VAE and decoder stages."""
    from diffusers import AnimateDiffPipeline

    if bar_factory is None:
        from tqdm.auto import tqdm as bar_factory
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"config": asdict(cfg), "vae_steps": vae_steps,
                                                 "unet_steps": unet_steps, "decoder_steps": decoder_steps,
                                                 "batch": batch, "lr": lr,
                                                 "ema_decay": ema_decay, "seed": seed,
                                                 "freeze_text": freeze_text,
                                                 "reuse_vae": str(reuse_vae) if reuse_vae else None}, indent=1))
    vae, unet, adapter, text_encoder, tokenizer, scheduler = build_components(cfg, seed)
    if reuse_vae is not None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(reuse_vae, **dtype_kwargs(torch.float32))
        vae_steps = decoder_steps = 0
    dev = torch.device(device)
    vae.to(dev)
    unet.to(dev)
    text_encoder.to(dev)
    rng = np.random.default_rng(seed)
    log_csv = _LossLog(out / "loss.csv")
    budget = [stop_after if stop_after is not None else vae_steps + unet_steps + decoder_steps]

    def vae_batch():
        x, _ = _clips(rng, max(1, batch // 2), cfg)
        return (x.reshape(-1, *x.shape[2:]).to(dev),)  # frames as images

    def vae_loss(x):
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        return F.mse_loss(rec, x) + F.l1_loss(rec, x) + 1e-6 * post.kl().mean()

    if not _stage("vae", vae, list(vae.parameters()), vae_steps, 1e-3, vae_batch, vae_loss, out, rng, save_every,
                  log_csv, bar_factory, budget):
        return None
    vae.eval().requires_grad_(False)
    if reuse_vae is None:
        scale = latent_scale(vae, cfg, seed, device=dev)
        vae.register_to_config(scaling_factor=scale)
    scale = float(vae.config.scaling_factor)
    log.info("VAE latent scaling factor %.4f", scale)

    live = torch.nn.ModuleDict({"unet": unet, "text": text_encoder})
    ema = copy.deepcopy(live).requires_grad_(False)
    held = torch.nn.ModuleDict({"live": live, "ema": ema})
    alphas = scheduler.alphas_cumprod.to(dev)

    @torch.no_grad()
    def unet_batch():
        x, prompts = _clips(rng, batch, cfg)  # (B, F, 3, H, W)
        x = x.to(dev)
        B, Fr = x.shape[:2]
        lat = vae.encode(x.reshape(B * Fr, *x.shape[2:])).latent_dist.mean * scale
        lat = lat.reshape(B, Fr, *lat.shape[1:]).permute(0, 2, 1, 3, 4)  # (B, C, F, h, w)
        prompts = [p if rng.random() > 0.1 else "" for p in prompts]
        ids = tokenizer(prompts, padding="max_length", max_length=cfg.text_tokens, truncation=True,
                        return_tensors="pt").input_ids.to(dev)
        t = torch.from_numpy(rng.integers(0, cfg.train_timesteps, B)).to(dev)
        noise = torch.from_numpy(rng.standard_normal(lat.shape).astype(np.float32)).to(dev)
        return scheduler.add_noise(lat, noise, t), t, ids, noise

    def unet_loss(noisy, t, ids, noise):
        return denoiser_loss(unet, text_encoder, alphas, noisy, t, ids, noise)

    @torch.no_grad()
    def ema_update(step):
        decay = min(ema_decay, (1 + step) / (10 + step))
        for pe, p in zip(ema.parameters(), live.parameters()):
            pe.lerp_(p, 1 - decay)

    if freeze_text:
        text_encoder.requires_grad_(False)
    else:
        text_encoder.train()
    params = [p for p in live.parameters() if p.requires_grad]
    if not _stage("unet", held, params, unet_steps, lr, unet_batch, unet_loss, out, rng, save_every, log_csv,
                  bar_factory, budget, after_step=ema_update):
        return None
    unet, text_encoder = ema["unet"].eval(), ema["text"].eval()

    # Stage 3: sharpen the decoder with the encoder (so the denoiser's latent space) frozen.
    def decoder_loss(x):
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        return reconstruction_loss(vae.decode(z).sample, x)

    dec_params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in dec_params:
        p.requires_grad_(True)
    if not _stage("decoder", vae, dec_params, decoder_steps, 5e-4, vae_batch, decoder_loss, out, rng, save_every,
                  log_csv, bar_factory, budget):
        return None
    vae.eval().requires_grad_(False)
    pipe = AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                               motion_adapter=None, scheduler=scheduler)
    # .half()/.float() cast like .to(dtype) without diffusers' "modules kept in float32: []" warning
    for m in (vae, text_encoder, unet):
        m.to("cpu").half()
    pipe.save_pretrained(out / "pipeline")
    for m in (vae, text_encoder, unet):
        m.float()
    return pipe


def denoiser_loss(unet, text_encoder, alphas, noisy, t, ids, noise):
    """Noise-prediction MSE with min-SNR-5 weighting."""
    text = text_encoder(ids)[0].repeat_interleave(noisy.shape[2], dim=0)
    pred = unet(noisy, t, encoder_hidden_states=text).sample  # (B, C, F, h, w)
    snr = alphas[t] / (1 - alphas[t])
    weight = snr.clamp(max=5.0) / snr  # min-SNR-5 for noise prediction
    err = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3, 4))
    return (err * weight).mean()


def reconstruction_loss(rec, x):
    """MSE + L1 + L1 of the horizontal and vertical differences (keeps shapes' edges and corners)."""
    edges = F.l1_loss(rec.diff(dim=-1), x.diff(dim=-1)) + F.l1_loss(rec.diff(dim=-2), x.diff(dim=-2))
    return F.mse_loss(rec, x) + F.l1_loss(rec, x) + edges


@torch.no_grad()
def latent_scale(vae, cfg: DemoConfig, seed: int, clips: int = 32, device=None) -> float:
    """1 / std of the VAE's latent means over fresh training clips (its own RNG: resumable runs
    and fresh runs get the same value)."""
    x, _ = _clips(np.random.default_rng([seed, 1]), clips, cfg)
    lat = vae.encode(x.reshape(-1, *x.shape[2:]).to(device or "cpu")).latent_dist.mean
    return float(1.0 / lat.std())


def main(argv=None) -> int:
    from ..console import quiet_libraries

    quiet_libraries()
    ap = argparse.ArgumentParser(description="Train the demo text-to-video model on the demo world.")
    ap.add_argument("--out", default="build/demo-run",
                    help="run directory (checkpoints, loss.csv, pipeline/); the shipped data/demo/model only when named")
    ap.add_argument("--vae-steps", type=int, default=1200)
    ap.add_argument("--unet-steps", type=int, default=2800)
    ap.add_argument("--decoder-steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=6e-4, help="denoiser learning rate")
    ap.add_argument("--device", default="cpu", help="where to train, e.g. cuda (data is rendered on the CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--stop-after", type=int, help="run at most this many steps now, then checkpoint and exit")
    ap.add_argument("--freeze-text-encoder", action="store_true",
                    help="keep the text encoder at its seeded random weights; only the denoiser learns")
    ap.add_argument("--reuse-vae", type=Path, help="a trained AutoencoderKL directory: skip the VAE stages")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    pipe = train(Path(args.out), vae_steps=args.vae_steps, unet_steps=args.unet_steps,
                 decoder_steps=args.decoder_steps, batch=args.batch, lr=args.lr,
                 device=args.device,
                 seed=args.seed, save_every=args.save_every, stop_after=args.stop_after,
                 freeze_text=args.freeze_text_encoder, reuse_vae=args.reuse_vae)
    if pipe is None:
        print(f"stopped after {args.stop_after} steps; run the same command again to continue")
    else:
        print(f"pipeline saved to {Path(args.out) / 'pipeline'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
