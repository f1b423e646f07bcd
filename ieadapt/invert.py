"""DDIM inversion of a real video (SPEC §5.2): frames -> the noise latents that DDIM sampling maps
back to them, so a real video can be the source of an edit.

The VAE encodes the frames (latent means, scaled by the VAE's scaling factor); then the DDIM
update is run backwards over the sampler's own timesteps: from the latent at the previous
timestep, the noise prediction at the next timestep gives

    x0 = (z − √(1−ᾱ_prev) ε) / √ᾱ_prev,     z_next = √ᾱ_next x0 + √(1−ᾱ_next) ε

(ᾱ_prev = 1 before the first step). Prompts are encoded with the pipeline's own ``encode_prompt``.
Inversion is exact only in the limit of small steps and without CFG: sample the inverted latents
with ``guidance_scale=1`` to reconstruct the video (its PSNR is reported by ``reconstruct``).
AnimateDiff-family pipelines only (the demo model, AnimateDiff checkpoints).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def read_video(path) -> np.ndarray:
    """(frames, H, W, 3) uint8 from a run directory (its stored frames, exact), a .npy array, a GIF,
    or an mp4 (with imageio-ffmpeg)."""
    p = Path(path)
    if p.is_dir():
        from capture.metrics import run_video

        return run_video(p)
    if not p.is_file():
        raise FileNotFoundError(f"no video file {p}")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr = np.load(p, allow_pickle=False)
    elif suffix == ".gif":
        from PIL import Image, ImageSequence, UnidentifiedImageError

        try:
            with Image.open(p) as im:
                arr = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read {p} as a GIF: {e}") from None
    else:
        try:
            import imageio.v3 as iio
        except ImportError:
            raise ImportError(f"reading {suffix} needs imageio and imageio-ffmpeg; or pass a .gif, .npy or run") from None
        arr = np.asarray(iio.imread(p))
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{p}: expected frames x height x width x channels, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float64), 0, 1) * 255 + 0.5).astype(np.uint8) if arr.max() <= 1 else arr.astype(np.uint8)
    return np.repeat(arr, 3, -1) if arr.shape[-1] == 1 else arr[..., :3]


def _check(pipe) -> None:
    from capture.models.families import AnimateDiffFamily, family_of

    if not isinstance(family_of(pipe), AnimateDiffFamily):
        raise ValueError(f"DDIM inversion supports AnimateDiff pipelines, not {type(pipe).__name__}")


@torch.no_grad()
def encode_video(pipe, frames: np.ndarray) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> scaled VAE latents (1, C, F, h, w)."""
    vae = pipe.vae
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(vae.device, vae.dtype).permute(0, 3, 1, 2) / 127.5 - 1.0
    z = vae.encode(x).latent_dist.mean * vae.config.scaling_factor  # (F, C, h, w)
    return z.permute(1, 0, 2, 3).unsqueeze(0)


@torch.no_grad()
def ddim_invert(pipe, frames: np.ndarray, prompt: str, num_inference_steps: int, progress=None) -> torch.Tensor:
    """The noise latents (1, C, F, h, w) from which ``pipe``'s DDIM sampler (``guidance_scale=1``)
    regenerates ``frames``. ``progress(i)`` after each of the ``num_inference_steps`` steps."""
    _check(pipe)
    z = encode_video(pipe, frames)
    n_frames = z.shape[2]
    emb, _ = pipe.encode_prompt(prompt, z.device, 1, False)
    emb = emb.repeat_interleave(n_frames, dim=0)  # the pipeline passes text per frame
    sched = pipe.scheduler
    sched.set_timesteps(num_inference_steps, device=z.device)
    ac = sched.alphas_cumprod.to(z.device, torch.float64)
    a_prev = torch.tensor(1.0, dtype=torch.float64)
    for i, t in enumerate(reversed(sched.timesteps)):
        eps = pipe.unet(z, t, encoder_hidden_states=emb).sample.double()
        a_next = ac[int(t)]
        x0 = (z.double() - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
        z = (a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps).to(z.dtype)
        a_prev = a_next
        if progress is not None:
            progress(i)
    return z


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8 videos over all frames."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
