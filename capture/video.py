"""Pipeline output frames to a uint8 array, and that array to viewable files (GIF, MP4 if possible).

Must not import torch at module level (the dashboard may use save/read helpers).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def frames_to_uint8(frames) -> np.ndarray:
    """diffusers video output (np float [0,1], torch tensor, PIL lists; batched) -> (F, H, W, 3) uint8.

    Only the first video of a batch is kept (attnlens captures one video per pipeline call).
    """
    if isinstance(frames, list):  # list (batch) of lists of PIL images, or a list of PIL images
        first = frames[0] if isinstance(frames[0], list) else frames
        return np.stack([np.asarray(im.convert("RGB")) for im in first]).astype(np.uint8)
    arr = frames
    if hasattr(arr, "detach"):  # torch tensor, (B, F, C, H, W) for output_type="pt"
        arr = arr.detach().float().cpu().numpy()
        if arr.ndim == 5 and arr.shape[2] in (1, 3):
            arr = arr.transpose(0, 1, 3, 4, 2)
    arr = np.asarray(arr)
    if arr.ndim == 5:
        arr = arr[0]
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr


def save_video(frames: np.ndarray, directory: Path, fps: int = 8, mp4: bool = False) -> list[Path]:
    """Write video.gif, and video.mp4 when asked and imageio-ffmpeg is installed, into directory.

    Capture writes the GIF only: encoding an mp4 starts an ffmpeg process (~0.15 s), a large share
    of a tiny model's whole run; viewers can make one from the stored frames when they need it.
    """
    from PIL import Image

    out = []
    gif = Path(directory) / "video.gif"
    # fast-octree palettes: ~100x faster than PIL's default median cut (1.9 s for 16 frames of
    # 256x256), which made writing the GIF cost more than capturing a tiny model's attention
    ims = [Image.fromarray(f).quantize(colors=256, method=Image.Quantize.FASTOCTREE) for f in frames]
    ims[0].save(gif, save_all=True, append_images=ims[1:], duration=int(1000 / fps), loop=0)
    out.append(gif)
    if not mp4:
        return out
    try:
        import imageio.v3 as iio
        import imageio_ffmpeg  # noqa: F401

        mp4 = Path(directory) / "video.mp4"
        h, w = frames.shape[1:3]
        # H.264 wants even sizes; pad by edge replication rather than resample
        padded = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        iio.imwrite(mp4, padded, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)
        out.append(mp4)
    except Exception as e:  # noqa: BLE001 - the GIF is enough to view the run
        log.info("mp4 not written (%s); the GIF is there", e)
    return out
