"""Named model presets, each loadable offline, and loading a pipeline by preset name or directory.

- ``demo``: the trained demo text-to-video model shipped in ``data/demo/model`` (AnimateDiff
  architecture, trained on the demo world; ``demo:path=DIR`` loads another copy).
- ``tiny-animatediff``, ``tiny-cogvideox``, ``tiny-wan``, ``tiny-unet3d``, ``tiny-latte``, ``tiny-ltx``:
  random weights from a seed, built from configs.
- ``animatediff`` (motion adapter + SD1.5 base), ``cogvideox-2b``, ``cogvideox-5b``,
  ``wan2.1-t2v-1.3b``: real checkpoints by hub id, loaded with the standard ``from_pretrained``;
  with ``HF_HUB_OFFLINE=1`` they must already be in the local cache. Options after a colon
  override hub ids with local directories: ``animatediff:base=DIR,adapter=DIR``, ``cogvideox-2b:path=DIR``.
- any local directory written by ``save_pretrained`` (``model_index.json`` names the pipeline).
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelError(ValueError):
    """Unknown model, or a model that cannot be loaded here."""


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    load: Callable[[dict, torch.dtype | None], object]
    defaults: dict = field(default_factory=dict)  # height, width, frames, steps, guidance
    call_kwargs: dict = field(default_factory=dict)  # extra pipeline-call arguments the model needs
    tiny: bool = False
    frames_arg: str = "num_frames"  # the pipeline's name for the frame count (Latte: video_length)
    needs_image: bool = False  # image-to-video: a conditioning image (built in unless one is given)
    takes_prompt: bool = True  # False: conditioned on the image alone (Stable Video Diffusion)
    guidance_arg: str | None = "guidance_scale"  # the call's CFG scale argument; None: set on the pipeline's guider
    family: str = ""  # the architecture family, for the README's model table


def _tiny_animatediff(opts, dtype):
    from .tiny import tiny_animatediff

    return tiny_animatediff(int(opts.get("seed", 0)))


def _tiny_cogvideox(opts, dtype):
    from .tiny import tiny_cogvideox

    return tiny_cogvideox(int(opts.get("seed", 0)))


def _tiny_wan(opts, dtype):
    from .tiny import tiny_wan

    return tiny_wan(int(opts.get("seed", 0)))


def _tiny(builder: str):
    def load(opts, dtype):
        from . import tiny_video

        return getattr(tiny_video, builder)(int(opts.get("seed", 0)))

    return load


DEMO_DIR = Path(__file__).resolve().parents[2] / "data" / "demo" / "model"


def _demo(opts, dtype):
    from diffusers import AnimateDiffPipeline

    path = Path(opts.get("path", DEMO_DIR))
    if not (path / "model_index.json").is_file():
        raise ModelError(f"demo model not found at {path} (it ships in the repository's data/demo/model)")
    # weights are stored in float16 to stay small; computing in float32 is what CPUs do well
    return _guard(path, lambda: AnimateDiffPipeline.from_pretrained(
        str(path), local_files_only=True, **dtype_kwargs(dtype or torch.float32)))


def _from_pretrained(cls_name: str, default_id: str):
    def load(opts, dtype):
        import diffusers

        cls = getattr(diffusers, cls_name)
        src = opts.get("path", default_id)
        return _guard(src, lambda: cls.from_pretrained(src, **dtype_kwargs(dtype)))

    return load


def _animatediff(opts, dtype):
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

    adapter_id = opts.get("adapter", "guoyww/animatediff-motion-adapter-v1-5-2")
    base_id = opts.get("base", "stable-diffusion-v1-5/stable-diffusion-v1-5")
    adapter = _guard(adapter_id, lambda: MotionAdapter.from_pretrained(adapter_id, **dtype_kwargs(dtype)))
    pipe = _guard(base_id, lambda: AnimateDiffPipeline.from_pretrained(
        base_id, motion_adapter=adapter, **dtype_kwargs(dtype)))
    pipe.scheduler = DDIMScheduler.from_config(
        pipe.scheduler.config, beta_schedule="linear", clip_sample=False, timestep_spacing="linspace", steps_offset=1
    )
    return pipe


def dtype_kwargs(dtype) -> dict:
    """``from_pretrained`` keywords: the dtype under the name this diffusers takes (newer releases
    deprecate ``torch_dtype`` with a warning on every load), and, without ``accelerate``, the
    plain loading path asked for explicitly (else diffusers warns that it falls back to it)."""
    import importlib.util

    from diffusers.utils import deprecation_utils

    kw = {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": dtype}
    if importlib.util.find_spec("accelerate") is None:
        kw["low_cpu_mem_usage"] = False
    return kw


@contextmanager
def loading_bars(show: bool):
    """diffusers' and transformers' "Loading ..." bars on or off while a pipeline loads."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    was = [dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()]
    (dlog.enable_progress_bar if show else dlog.disable_progress_bar)()
    (tlog.enable_progress_bar if show else tlog.disable_progress_bar)()
    try:
        yield
    finally:
        (dlog.enable_progress_bar if was[0] else dlog.disable_progress_bar)()
        (tlog.enable_progress_bar if was[1] else tlog.disable_progress_bar)()


def _guard(src, fn):
    try:
        return fn()
    except (OSError, ValueError, EnvironmentError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        # huggingface_hub points at a stack trace the user is not shown
        first = first.replace(" Please check out the root cause in the stacktrace above.", "")
        hint = "" if Path(str(src)).exists() else " (not a local directory; offline, hub ids load only from the local cache)"
        raise ModelError(f"cannot load {src}{hint}: {first}") from None


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("demo", "trained demo model (AnimateDiff architecture) of the demo world: shapes, colours, motion",
               _demo, dict(height=32, width=32, frames=8, steps=25, guidance=7.5), family="animatediff"),
        Preset("tiny-animatediff", "tiny random AnimateDiff (UNetMotionModel): spatial, cross, temporal attention",
               _tiny_animatediff, dict(height=64, width=64, frames=8, steps=8, guidance=7.5), tiny=True,
               family="animatediff"),
        Preset("tiny-cogvideox", "tiny random CogVideoX (joint text+video 3D attention); frames = 4k+1",
               _tiny_cogvideox, dict(height=64, width=64, frames=9, steps=8, guidance=6.0),
               call_kwargs={"max_sequence_length": 32}, tiny=True, family="cogvideox"),
        Preset("tiny-wan", "tiny random Wan 2.1 (3D self-attention, cross-attention); frames = 4k+1",
               _tiny_wan, dict(height=64, width=64, frames=9, steps=8, guidance=5.0),
               call_kwargs={"max_sequence_length": 64}, tiny=True, family="wan"),
        Preset("tiny-unet3d", "tiny random TextToVideoSD / ModelScope UNet3D: spatial, cross, temporal attention",
               _tiny("tiny_text_to_video_sd"), dict(height=64, width=64, frames=8, steps=8, guidance=9.0), tiny=True,
               family="unet3d"),
        Preset("tiny-latte", "tiny random Latte: alternating spatial (per frame) and temporal (per position) blocks; "
               "8 frames", _tiny("tiny_latte"), dict(height=64, width=64, frames=8, steps=8, guidance=7.5),
               call_kwargs={"clean_caption": False}, tiny=True, frames_arg="video_length", family="latte"),
        Preset("tiny-ltx", "tiny random LTX-Video: 3D video self-attention, masked text cross-attention; frames = 8k+1",
               _tiny("tiny_ltx"), dict(height=32, width=32, frames=9, steps=8, guidance=3.0),
               call_kwargs={"max_sequence_length": 32}, tiny=True, family="ltx"),
        Preset("tiny-hunyuan", "tiny random HunyuanVideo: dual- and single-stream [video; text] joint attention with "
               "the text padding mask, text refiner; frames = 4k+1", _tiny("tiny_hunyuan"),
               dict(height=32, width=32, frames=9, steps=8, guidance=6.0),
               call_kwargs={"max_sequence_length": 32, "prompt_template": {"template": "{}", "crop_start": 0}},
               tiny=True, family="hunyuan"),
        Preset("hunyuanvideo", "HunyuanVideo 13B (community diffusers weights)",
               _from_pretrained("HunyuanVideoPipeline", "hunyuanvideo-community/HunyuanVideo"),
               dict(height=320, width=512, frames=61, steps=30, guidance=6.0), family="hunyuan"),
        Preset("tiny-skyreels", "tiny random SkyReels-V2 (Wan architecture: 3D self-attention, cross-attention); "
               "frames = 4k+1", _tiny("tiny_skyreels"), dict(height=64, width=64, frames=9, steps=8, guidance=6.0),
               call_kwargs={"max_sequence_length": 32}, tiny=True, family="skyreels"),
        Preset("tiny-allegro", "tiny random Allegro: 3D video self-attention, masked text cross-attention; "
               "8 frames, 64x64 (one VAE tile)", _tiny("tiny_allegro"),
               dict(height=64, width=64, frames=8, steps=8, guidance=7.5),
               call_kwargs={"max_sequence_length": 32, "clean_caption": False}, tiny=True, family="allegro"),
        Preset("tiny-mochi", "tiny random Mochi: asymmetric [video; text] joint attention, one SDPA call per video; "
               "frames = 6k+1", _tiny("tiny_mochi"), dict(height=64, width=64, frames=7, steps=8, guidance=4.5),
               call_kwargs={"max_sequence_length": 32}, tiny=True, family="mochi"),
        Preset("skyreels-v2-t2v-14b", "SkyReels-V2 text-to-video 14B 540P",
               _from_pretrained("SkyReelsV2Pipeline", "Skywork/SkyReels-V2-T2V-14B-540P-Diffusers"),
               dict(height=544, width=960, frames=97, steps=50, guidance=6.0), family="skyreels"),
        Preset("allegro", "Allegro text-to-video", _from_pretrained("AllegroPipeline", "rhymes-ai/Allegro"),
               dict(height=720, width=1280, frames=88, steps=100, guidance=7.5), family="allegro"),
        Preset("mochi-1", "Mochi 1 preview", _from_pretrained("MochiPipeline", "genmo/mochi-1-preview"),
               dict(height=480, width=848, frames=85, steps=64, guidance=4.5), family="mochi"),
        Preset("tiny-wan22", "tiny random Wan 2.2 with two experts (transformer: high noise, transformer_2: low "
               "noise; layer names say which); frames = 4k+1", _tiny("tiny_wan22"),
               dict(height=64, width=64, frames=9, steps=8, guidance=4.0), call_kwargs={"max_sequence_length": 32},
               tiny=True, family="wan"),
        Preset("tiny-wan-i2v", "tiny random Wan 2.1 image-to-video (CLIP image keys and text keys: attn2.image, "
               "attn2.text); frames = 4k+1", _tiny("tiny_wan_i2v"),
               dict(height=32, width=32, frames=9, steps=8, guidance=5.0), call_kwargs={"max_sequence_length": 512},
               tiny=True, needs_image=True, family="wan"),
        Preset("wan2.2-t2v-a14b", "Wan 2.2 text-to-video A14B (two experts)",
               _from_pretrained("WanPipeline", "Wan-AI/Wan2.2-T2V-A14B-Diffusers"),
               dict(height=720, width=1280, frames=81, steps=40, guidance=4.0), family="wan"),
        Preset("wan2.1-i2v-14b-480p", "Wan 2.1 image-to-video 14B 480P",
               _from_pretrained("WanImageToVideoPipeline", "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"),
               dict(height=480, width=832, frames=81, steps=50, guidance=5.0), needs_image=True, family="wan"),
        Preset("tiny-i2vgenxl", "tiny random I2VGenXL (UNet3D layout, image-conditioned; no step callback: steps "
               "from the UNet's timestep)", _tiny("tiny_i2vgenxl"),
               dict(height=64, width=64, frames=8, steps=8, guidance=9.0), call_kwargs={"clip_skip": None},
               tiny=True, needs_image=True, family="unet3d"),
        Preset("tiny-svd", "tiny random Stable Video Diffusion: spatial and temporal blocks, image cross-attention; "
               "image only, no prompt", _tiny("tiny_svd"), dict(height=64, width=64, frames=8, steps=8, guidance=3.0),
               tiny=True, needs_image=True, takes_prompt=False, guidance_arg="max_guidance_scale", family="svd"),
        Preset("i2vgen-xl", "I2VGenXL image-to-video (clip_skip=None: diffusers' clip_skip path needs "
               "transformers < 5)", _from_pretrained("I2VGenXLPipeline", "ali-vilab/i2vgen-xl"),
               dict(height=704, width=1280, frames=16, steps=50, guidance=9.0), call_kwargs={"clip_skip": None},
               needs_image=True, family="unet3d"),
        Preset("svd-xt", "Stable Video Diffusion img2vid-xt",
               _from_pretrained("StableVideoDiffusionPipeline", "stabilityai/stable-video-diffusion-img2vid-xt"),
               dict(height=576, width=1024, frames=25, steps=25, guidance=3.0), needs_image=True,
               takes_prompt=False, guidance_arg="max_guidance_scale", family="svd"),
        Preset("tiny-sana-video", "tiny random SanaVideo (generic family): linear self-attention, not capturable "
               "(no softmax map), softmax cross-attention captured", _tiny("tiny_sana_video"),
               dict(height=64, width=64, frames=9, steps=8, guidance=6.0), frames_arg="frames",
               call_kwargs={"max_sequence_length": 32, "complex_human_instruction": None,
                            "use_resolution_binning": False, "clean_caption": False}, tiny=True, family="generic"),
        Preset("sana-video-2b", "SANA-Video 2B 480p (generic family; only cross-attention has a map)",
               _from_pretrained("SanaVideoPipeline", "Efficient-Large-Model/SANA-Video_2B_480p_diffusers"),
               dict(height=480, width=832, frames=81, steps=50, guidance=6.0), frames_arg="frames",
               family="generic"),
        Preset("tiny-hunyuan15", "tiny random HunyuanVideo 1.5: [video; text] joint attention with the padding mask, "
               "text refiner; guider CFG, no step callback; frames = 4k+1", _tiny("tiny_hunyuan15"),
               dict(height=32, width=32, frames=9, steps=8, guidance=6.0), tiny=True, guidance_arg=None,
               family="hunyuan15"),
        Preset("hunyuanvideo-1.5-480p", "HunyuanVideo 1.5 text-to-video 480p",
               _from_pretrained("HunyuanVideo15Pipeline", "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_t2v"),
               dict(height=480, width=848, frames=121, steps=50, guidance=6.0), guidance_arg=None,
               family="hunyuan15"),
        Preset("tiny-ltx2", "tiny random LTX-2: video stream (joint 3D self-attention, text cross-attention) and "
               "audio stream (kind other); frames = 8k+1", _tiny("tiny_ltx2"),
               dict(height=32, width=32, frames=9, steps=8, guidance=4.0),
               call_kwargs={"max_sequence_length": 16, "frame_rate": 25.0}, tiny=True, family="ltx2"),
        Preset("ltx-2", "LTX-2 audio-video 19B", _from_pretrained("LTX2Pipeline", "Lightricks/LTX-2"),
               dict(height=512, width=768, frames=121, steps=40, guidance=4.0), call_kwargs={"frame_rate": 24.0},
               family="ltx2"),
        Preset("tiny-kandinsky5", "tiny random Kandinsky 5: joint visual self-attention, cross-attention to the text, "
               "text blocks (other); channels-last latents; one call per CFG branch; frames = 4k+1",
               _tiny("tiny_kandinsky5"), dict(height=64, width=64, frames=9, steps=8, guidance=5.0),
               call_kwargs={"max_sequence_length": 32}, tiny=True, family="kandinsky5"),
        Preset("kandinsky5-t2v-lite", "Kandinsky 5.0 T2V Lite 2B, SFT, 5 s (dense attention)",
               _from_pretrained("Kandinsky5T2VPipeline", "kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers"),
               dict(height=512, width=768, frames=121, steps=50, guidance=5.0), family="kandinsky5"),
        Preset("zeroscope", "ZeroScope v2 576w (ModelScope UNet3D)",
               _from_pretrained("TextToVideoSDPipeline", "cerspense/zeroscope_v2_576w"),
               dict(height=320, width=576, frames=24, steps=40, guidance=9.0), family="unet3d"),
        Preset("modelscope-t2v", "ModelScope text-to-video 1.7B (UNet3D)",
               _from_pretrained("TextToVideoSDPipeline", "ali-vilab/text-to-video-ms-1.7b"),
               dict(height=256, width=256, frames=16, steps=25, guidance=9.0), family="unet3d"),
        Preset("latte-1", "Latte-1 text-to-video", _from_pretrained("LattePipeline", "maxin-cn/Latte-1"),
               dict(height=512, width=512, frames=16, steps=50, guidance=7.5), frames_arg="video_length",
               family="latte"),
        Preset("ltx-video", "LTX-Video 0.9", _from_pretrained("LTXPipeline", "Lightricks/LTX-Video"),
               dict(height=480, width=704, frames=161, steps=50, guidance=3.0), family="ltx"),
        Preset("animatediff", "AnimateDiff motion adapter v1-5-2 + Stable Diffusion 1.5", _animatediff,
               dict(height=512, width=512, frames=16, steps=25, guidance=7.5), family="animatediff"),
        Preset("cogvideox-2b", "CogVideoX-2b", _from_pretrained("CogVideoXPipeline", "THUDM/CogVideoX-2b"),
               dict(height=480, width=720, frames=49, steps=50, guidance=6.0), family="cogvideox"),
        Preset("cogvideox-5b", "CogVideoX-5b", _from_pretrained("CogVideoXPipeline", "THUDM/CogVideoX-5b"),
               dict(height=480, width=720, frames=49, steps=50, guidance=6.0), family="cogvideox"),
        Preset("wan2.1-t2v-1.3b", "Wan 2.1 text-to-video 1.3B",
               _from_pretrained("WanPipeline", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"),
               dict(height=480, width=832, frames=81, steps=50, guidance=5.0), family="wan"),
    ]
}

GENERIC_DEFAULTS = dict(height=None, width=None, frames=16, steps=25, guidance=7.5)


def parse_model(spec: str) -> tuple[str, dict]:
    """'name:key=val,key=val' -> ('name', {...})."""
    name, _, rest = spec.partition(":")
    opts = {}
    for item in filter(None, rest.split(",")):
        k, eq, v = item.partition("=")
        if not eq:
            raise ModelError(f"bad model option {item!r} in {spec!r}: expected key=value")
        opts[k.strip()] = v.strip()
    return name.strip(), opts


def resolve(spec: str) -> tuple[Preset | None, dict, Path | None]:
    """Which preset (or local directory) a --model string names. Raises ModelError if neither."""
    name, opts = parse_model(spec)
    if name in PRESETS:
        return PRESETS[name], opts, None
    p = Path(os.path.expanduser(name))
    if p.is_dir():
        if not (p / "model_index.json").is_file():
            raise ModelError(f"{p} is a directory but has no model_index.json (not a save_pretrained pipeline)")
        return None, opts, p
    close = difflib.get_close_matches(name, PRESETS, n=2, cutoff=0.5)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise ModelError(f"unknown model {name!r}{hint}; presets: {', '.join(PRESETS)}, or a local pipeline directory")


def pipeline_call(preset, defaults: dict, *, steps=None, frames=None, guidance=None, height=None,
                  width=None, image=None) -> dict:
    """The keyword arguments of one generation call: the given values, else the model's defaults,
    plus the preset's own call arguments; frames come back as numpy arrays. ``image``: the
    conditioning image of an image-to-video preset (a path or PIL image; default a built-in
    test image at the video's size)."""
    steps = _positive("steps", steps, defaults["steps"])
    frames = _positive("frames", frames, defaults["frames"])
    guidance = float(guidance if guidance is not None else defaults["guidance"])
    if not (math.isfinite(guidance) and guidance >= 0):
        raise ModelError(f"guidance scale {guidance} must be finite and >= 0")
    call = dict(num_inference_steps=steps, num_frames=frames, guidance_scale=guidance, output_type="np")
    if preset and preset.guidance_arg != "guidance_scale":
        # SVD: max_guidance_scale (a ramp over the frames); HunyuanVideo 1.5: the guider's scale
        g = call.pop("guidance_scale")
        if preset.guidance_arg:
            call[preset.guidance_arg] = g
    for k, v in (("height", height), ("width", width)):
        v = _positive(k, v, defaults.get(k))
        if v:
            call[k] = v
    call.update(preset.call_kwargs if preset else {})
    if preset and preset.frames_arg != "num_frames":
        call[preset.frames_arg] = call.pop("num_frames")
    if image is not None or (preset and preset.needs_image):
        call["image"] = _conditioning_image(image, call.get("height") or 64, call.get("width") or 64)
    return call


def _positive(name: str, value, default):
    """A given value (0 and negatives are errors, not "use the default"), else the default."""
    if value is None:
        return int(default) if default else default
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ModelError(f"{name} must be a positive integer, not {value!r}")
    return int(value)


def _conditioning_image(image, height: int, width: int):
    from PIL import Image, UnidentifiedImageError

    if image is None:
        from .tiny_video import conditioning_image

        return conditioning_image(height, width)
    if isinstance(image, Image.Image):
        return image
    p = Path(image)
    if not p.is_file():
        raise ModelError(f"conditioning image not found: {p}")
    try:
        with Image.open(p) as im:
            return im.convert("RGB").resize((width, height))
    except (UnidentifiedImageError, OSError) as e:
        raise ModelError(f"cannot read the conditioning image {p}: {e}") from None


def set_guider_scale(pipe, preset, scale: float | None) -> None:
    """For pipelines whose CFG scale lives on their guider (HunyuanVideo 1.5): set it there."""
    if scale is None or preset is None or preset.guidance_arg is not None:
        return
    guider = getattr(pipe, "guider", None)
    if guider is None or not hasattr(guider, "guidance_scale"):
        raise ModelError(f"{type(pipe).__name__} has no guider whose guidance_scale could be set")
    guider.guidance_scale = float(scale)


def load_pipeline(spec: str, *, dtype: str | None = None, device: str | None = None, quiet: bool = False):
    """(pipeline, preset or None, defaults) for a preset name or a save_pretrained directory.

    Loading bars are shown only for real checkpoints (built-in models load in well under a second),
    and never with ``quiet``."""
    preset, opts, path = resolve(spec)
    builtin = preset is not None and (preset.tiny or preset.name == "demo")
    with loading_bars(not quiet and not builtin):
        return _load(spec, preset, opts, path, dtype, device)


def check_device(device: str):
    """The torch device ``device`` names, if this torch build and machine have it; otherwise
    ModelError saying why (checked before a model is built, which takes minutes for a real one)."""
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ModelError(f"unknown device {device!r}; e.g. cpu, cuda, cuda:1, mps, xpu") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
                why = f"this torch build ({torch.__version__}) has no CUDA: install a CUDA build of torch"
            else:
                why = "no CUDA device is visible to this process (see nvidia-smi and CUDA_VISIBLE_DEVICES)"
            raise ModelError(f"device {device!r} is not available: {why}, or use --device cpu")
        n = torch.cuda.device_count()
    elif d.type == "mps":
        if not torch.backends.mps.is_available():
            raise ModelError(f"device {device!r} is not available: this machine or torch build has no MPS backend")
        n = 1
    elif d.type == "xpu":
        if not (hasattr(torch, "xpu") and torch.xpu.is_available()):
            raise ModelError(f"device {device!r} is not available: no Intel XPU is visible to this torch build")
        n = torch.xpu.device_count()
    else:  # cpu, and backends torch knows through plugins (hpu, privateuseone): torch decides
        return d
    if d.index is not None and d.index >= n:
        raise ModelError(f"device {device!r} is not available: this machine has {n} {d.type} device(s), "
                         f"numbered from 0")
    return d


def _load(spec, preset, opts, path, dtype, device):
    if dtype is not None and dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    if device:
        check_device(device)
    tdtype = DTYPES[dtype] if dtype else None
    if preset is not None:
        pipe = preset.load(opts, tdtype)
        if tdtype is not None and preset.tiny:
            pipe = pipe.to(dtype=tdtype)
        defaults = dict(preset.defaults)
    else:
        from diffusers import DiffusionPipeline

        pipe = _guard(path, lambda: DiffusionPipeline.from_pretrained(
            str(path), local_files_only=True, **dtype_kwargs(tdtype)))
        defaults = dict(GENERIC_DEFAULTS)
    if device:
        pipe = pipe.to(device)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    try:  # the name a run records when traced without an explicit model= (the preset, not the class)
        pipe._attnlens_model = spec
    except AttributeError:
        pass
    return pipe, preset, defaults
