"""The capture API: ``with trace(pipe, root=..., layers=...) as tr: pipe(...)``.

Inside the context every pipeline call becomes one run in the trace root: the selected attention
layers are intercepted (statistics, maps, perturbations), step and timestep come from the
pipeline's public ``callback_on_step_end`` (chained with any callback the caller passes), and the
run store is written step by step. On exit, also after an exception, every hook is removed and
the pipeline is exactly as before.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
import platform
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np
import torch

from . import deferred, dims, hooks, merged
from .layers import DEFAULT_SELECTION, LayerInfo, LayerSelectionError, inventory, select
from .layout import Accumulator, Layout, accumulate, make_layout
from .layout import results as layout_results
from .models.families import Geometry, family_of, infer_kind
from .models.families.base import guidance_scale
from .models.families.generic import OTHER_REASONS as GENERIC_REASONS
from .models.families.generic import video_first
from .perturb import PerturbSpec, PerturbSpecError, perturbed_output
from .stats import DEFAULT_CHUNK_BYTES
from .store import RunWriter, open_run

log = logging.getLogger(__name__)

DEFINITIONS = {
    dims.ENTROPY: "mean over query rows (and videos) of H_r = -sum_j A_rj ln A_rj, A = softmax(q k^T scale + mask); nats",
    dims.ENTROPY_NORM: "mean over rows of H_r / ln(number of allowed keys of row r); 0 = identity-like, 1 = uniform",
    dims.ENERGY: "sum over query rows of ||(A V)_r||^2 (attention output before the output projection), per video",
    dims.VALUE_ENERGY: "sum over key rows of ||V_j||^2, per video (so energy / value_energy is comparable across layers)",
    dims.MASS: "mean over rows of the share of the row's attention mass inside the part (1 for part 'all')",
    "part": "all: every query row (video rows only in joint layers); spatial: keys of the query's own frame, "
    "renormalized; temporal: keys at the query's position in every frame, renormalized; text: text query rows",
    dims.MAP_SPATIAL: "head-averaged A pooled onto a y x grid of query cells and key cells (mean over queries in a "
    "cell, sum over keys in a cell; each row sums to 1), averaged over frames and videos",
    dims.MAP_TEMPORAL: "head-averaged A between frames (sum over keys in a frame), averaged over positions",
    dims.ENTROPY_MAP: "head-averaged row entropy pooled (mean) onto latent frame x y x grid cells",
    dims.PERTURBED: "1 where a perturbation replaced this layer's output; statistics are those of the original map",
}


@dataclass(frozen=True)
class CaptureConfig:
    layers: tuple[str, ...] = ("self",)
    every: int = 1  # capture every k-th step
    steps: tuple[int, int] | None = None  # inclusive window of captured steps
    maps: bool = True
    maps_every: int = 1  # maps only at steps that are a multiple of this (statistics at every captured step)
    grid: int = 8  # maps pool onto at most grid x grid cells
    sample_rows: int | None = None  # sampled mode: this many evenly spaced query rows per map
    chunk_bytes: int | None = DEFAULT_CHUNK_BYTES  # None: by device (stats.default_chunk_bytes)

    def __post_init__(self):
        if self.every < 1:
            raise ValueError("--every must be >= 1")
        if self.maps_every < 1:
            raise ValueError("--maps-every must be >= 1")
        if self.grid < 1:
            raise ValueError("map grid must be >= 1")
        if self.sample_rows is not None and self.sample_rows < 1:
            raise ValueError("sampled rows must be >= 1")

    def captures(self, step: int) -> bool:
        if self.steps is not None and not (self.steps[0] <= step <= self.steps[1]):
            return False
        return step % self.every == 0

    def maps_at(self, step: int) -> bool:
        """Whether a captured step also records maps."""
        return self.maps and step % self.maps_every == 0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["mode"] = "sampled" if self.sample_rows else "exact"
        return d


def _versions() -> dict:
    import importlib.metadata

    import diffusers
    import transformers

    from . import __version__

    try:  # from its metadata: importing zarr-python for its version cost a short capture 75 ms
        zarr_version = importlib.metadata.version("zarr")
    except importlib.metadata.PackageNotFoundError:
        import zarr

        zarr_version = zarr.__version__
    return {
        "attnlens": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
        "transformers": transformers.__version__, "zarr": zarr_version, "python": platform.python_version(),
    }


def _jsonable(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float, bool)) for x in v):
        return list(v)
    return None


def _seeds(args, kwargs, pipe_cls) -> list:
    """The initial seed of each generator passed to the call (one per video, or one for all)."""
    bound = inspect.signature(pipe_cls.__call__).bind_partial(None, *args, **kwargs).arguments
    gens = bound.get("generator")
    if gens is None:
        return []
    gens = gens if isinstance(gens, list) else [gens]
    return [int(g.initial_seed()) if hasattr(g, "initial_seed") else None for g in gens]


def _call_record(pipe_cls, args, kwargs) -> dict:
    """Explicit call arguments merged with the pipeline's defaults (JSON-able values only)."""
    sig = inspect.signature(pipe_cls.__call__)
    bound = sig.bind_partial(None, *args, **kwargs)
    rec = {}
    for name, p in sig.parameters.items():
        if name in ("self", "callback_on_step_end", "callback_on_step_end_tensor_inputs"):
            continue
        val = bound.arguments.get(name, p.default)
        if val is inspect.Parameter.empty:
            continue
        j = _jsonable(val)
        if j is not None or val is None:
            rec[name] = j
        elif name == "generator":
            gens = val if isinstance(val, list) else [val]
            rec["seed"] = int(gens[0].initial_seed()) if hasattr(gens[0], "initial_seed") else None
        else:
            rec[name] = f"<{type(val).__name__}>"
    return rec


class Tracer:
    """Context manager returned by :func:`trace`. See the module docstring."""

    def __init__(self, pipe, *, root=None, config: CaptureConfig | None = None, perturb=(), model: str | None = None,
                 attrs: dict | None = None, on_step: Callable[[int, int], None] | None = None, side_perturb=(),
                 split_videos: bool = False):
        if getattr(type(pipe), "_attnlens_traced", False):
            raise RuntimeError("this pipeline is already being traced (nested trace contexts are not supported)")
        self.pipe = pipe
        self._pipe_cls = type(pipe)
        self.root = root
        self.config = config or CaptureConfig()
        self.specs = [s if isinstance(s, PerturbSpec) else PerturbSpec.parse(s) for s in perturb]
        # perturbations of side passes only (see side_pass), e.g. IE-Adapt guidance's perturbed prediction
        self.side_specs = [s if isinstance(s, PerturbSpec) else PerturbSpec.parse(s) for s in side_perturb]
        self.model = model
        self.extra_attrs = attrs or {}
        self.on_step = on_step
        # True: each video of a batched call is a run of its own (its prompt, seed, perturbations,
        # statistics and video); False: one run per call, statistics averaged over its videos
        self.split_videos = split_videos
        self.run_ids: list[str] = []
        self.run_dirs: list = []
        self.next_run_id: str | None = None  # the id the next traced call's run gets (else a fresh one)
        # with split_videos: ids and extra attributes of the next call's runs, one per video
        self.next_run_ids: list[str] | None = None
        self.next_video_attrs: list[dict] | None = None
        self._active = False
        self.family = family_of(pipe)
        self.denoiser = self.family.denoiser(pipe)
        self.denoisers = [d for _, d in self.family.denoisers(pipe)]  # Wan 2.2: both experts
        self.inventory: list[LayerInfo] = inventory(pipe, self.family)
        try:
            self.layers = select(self.inventory, list(self.config.layers))
        except LayerSelectionError:
            capturable = [l for l in self.inventory if not l.not_capturable]
            if tuple(self.config.layers) != (DEFAULT_SELECTION,) or not capturable:
                raise
            # the default (self-attention) has no attention map here (SanaVideo), or no layer is of a
            # self-attention kind (Kandinsky 5 with sparse attention: all other): capture the rest
            why = next((l.not_capturable for l in self.inventory if l.not_capturable), None)
            if why is not None:
                log.warning("no self-attention layer of this model has an attention map (%s); capturing the %d "
                            "layers that have one", why, len(capturable))
            else:
                kinds = sorted({l.kind for l in capturable})
                log.warning("no layer of this model is of a self-attention kind (spatial, temporal, joint; its "
                            "layers are %s); capturing all %d", ", ".join(kinds), len(capturable))
            self.layers = capturable
        self._ptb_layers = self._layer_specs(self.specs)
        self._side_layers = self._layer_specs(self.side_specs)
        self._side = False
        self._record: dict = {}  # the current pipeline call's arguments
        self.step = 0
        self._side_log: dict[int, set[str]] = {}
        self._side_geometry: Geometry | None = None
        self._captured = {l.name: i for i, l in enumerate(self.layers)}
        self._hooked = [l for l in self.inventory
                        if l.name in self._captured or l.name in self._ptb_layers or l.name in self._side_layers]
        self._by_name = {l.name: l for l in self.inventory}
        # module name -> its layers by SDPA call index (one entry, index None, for single-call modules)
        self._subs: dict[str, dict[int | None, LayerInfo]] = {}
        for l in self._hooked:
            self._subs.setdefault(l.module, {})[l.call] = l
        # kinds read at run time (generic family): layer name -> (kind, reason for "other" or None)
        self.kinds_inferred: dict[str, tuple[str, str | None]] = {}
        self._text_first_of: dict[str, bool] = {}  # joint layers whose text order a generic run inferred
        self._multi_warned: set[str] = set()
        # small calls' statistics, computed together per shape at the end of each step
        self._deferred = deferred.DeferredStats(self.config.chunk_bytes)
        # steps come from the pipeline's callback_on_step_end, else from the denoiser's timestep input
        self.step_source = ("callback_on_step_end"
                            if "callback_on_step_end" in inspect.signature(type(pipe).__call__).parameters
                            else "denoiser timestep")

    def _layer_specs(self, specs) -> dict[str, list[PerturbSpec]]:
        out: dict[str, list[PerturbSpec]] = {}
        for spec in specs:
            for layer in select(self.inventory, spec.layers):
                if spec.kind == "I" and layer.kind == "cross":
                    raise PerturbSpecError(f"I needs self-attention; {layer.name} is cross-attention ({spec})")
                out.setdefault(layer.name, []).append(spec)
        return out

    @contextlib.contextmanager
    def side_pass(self):
        """Mark the denoiser calls made inside as a method's side pass (e.g. IE-Adapt guidance's
        extra perturbed prediction within the current step): they are not captured and not
        counted as a CFG branch, and the tracer's ``side_perturb`` specs apply to every batch item
        of them (no other perturbation does). Each is logged in the run's ``side_passes`` attribute."""
        if self._side:
            raise RuntimeError("side passes do not nest")
        self._side = True
        self._side_log.setdefault(self.step, set())
        try:
            yield
        finally:
            self._side = False

    # -- context ---------------------------------------------------------------------------------
    def __enter__(self) -> "Tracer":
        if self._active:
            raise RuntimeError("this tracer is already active")
        self._stack = contextlib.ExitStack()
        try:
            modules = self.family.named_modules(self.pipe)
            for module_name in self._subs:
                mod = modules[module_name]
                hooks.register(mod, hooks.AttentionLayerHook(module_name, self._on_module_sdpa), hooks.LAYER_HOOK)
                self._stack.callback(hooks.remove, mod, hooks.LAYER_HOOK)
            for den in self.denoisers:
                hooks.register(den, hooks.DenoiserInputHook(self._on_denoiser), hooks.DENOISER_HOOK)
                self._stack.callback(hooks.remove, den, hooks.DENOISER_HOOK)
            # a denoiser passed directly has no pipeline attributes: only its modules compiled in place
            attrs = self.family.denoiser_attrs() if hasattr(self.pipe, "components") else ()
            self._stack.enter_context(hooks.eager_denoisers(self.pipe, attrs, self.denoisers))
            self._stack.enter_context(hooks.native_attention_backend())
            self._stack.enter_context(_wrapped_call(self.pipe, self._call))
        except BaseException:
            self._stack.close()
            raise
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        self._active = False
        self._stack.close()

    # -- results ---------------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        if not self.run_ids:
            raise RuntimeError("no pipeline call was traced yet")
        return self.run_ids[-1]

    @property
    def n_videos(self) -> int:
        """Videos generated by the current pipeline call (prompts × videos per prompt)."""
        return self._n_videos

    @property
    def call_branch(self) -> tuple[int, int] | None:
        """(CFG branch, branches per step) of the latest denoiser call, for pipelines that call the
        denoiser once per branch; None for a call outside the branches."""
        return self._call_branch

    def dataset(self, run_id: str | None = None):
        """The run's store as an xarray.Dataset (the last run by default)."""
        rid = run_id or self.run_id
        return open_run(self.run_dirs[self.run_ids.index(rid)])

    # -- one pipeline call = one run ---------------------------------------------------------------
    def _call(self, call_original, args, kwargs):
        record = self._record = _call_record(self._pipe_cls, args, kwargs)
        validate_call(self.pipe, self.family, record)  # before anything is generated or stored
        h, w = record.get("height"), record.get("width")
        self.family.pixel_hw = (h, w) if isinstance(h, int) and isinstance(w, int) else None
        n_steps = self.family.denoising_steps(self.pipe, record)
        if isinstance(n_steps, int):  # bad step windows fail before anything is generated or stored
            for spec in self.specs:
                if spec.steps and spec.steps[0] >= n_steps:
                    raise PerturbSpecError(f"perturbation {spec}: step window starts after the last step ({n_steps - 1})")
            if self.config.steps and self.config.steps[0] >= n_steps:
                raise ValueError(f"capture steps {self.config.steps} start after the last step ({n_steps - 1})")
        prompt = record.get("prompt")
        prompts = prompt if isinstance(prompt, list) else [prompt]
        per_prompt = int(record.get("num_videos_per_prompt") or 1)
        self._n_videos = len(prompts) * per_prompt
        for spec in self.specs:
            if spec.kind == "M" and self._n_videos < 2:
                raise PerturbSpecError(f"perturbation {spec}: M needs a call with several videos (source and target)")
            for idx in (spec.source, spec.video):
                if idx is not None and idx >= self._n_videos:
                    raise PerturbSpecError(f"perturbation {spec}: the call generates {self._n_videos} video(s)")
        seeds = _seeds(args, kwargs, self._pipe_cls)
        base = {
            "model": (self.model or getattr(self.pipe, "_attnlens_model", None)
                      or getattr(self.pipe.config, "_name_or_path", None) or type(self.pipe).__name__),
            "pipeline": type(self.pipe).__name__,
            "family": self.family.name,
            "negative_prompt": record.get("negative_prompt"),
            "height": record.get("height"),
            "width": record.get("width"),
            "num_frames": record.get("num_frames", record.get("video_length")),
            "num_inference_steps": record.get("num_inference_steps"),
            "guidance_scale": record.get("guidance_scale"),
            "scheduler": {"class": type(self.pipe.scheduler).__name__, "config": dict(self.pipe.scheduler.config)},
            "call": record,
            "capture": self.config.as_dict(),
            "layers_selected": [l.name for l in self.layers],
            "layers_not_capturable": {l.name: l.not_capturable for l in self.inventory if l.not_capturable},
            "step_source": self.step_source,
            "versions": _versions(),
            "definitions": DEFINITIONS,
        }
        n_runs = self._n_videos if self.split_videos else 1
        ids = self.next_run_ids or [self.next_run_id]
        video_attrs = self.next_video_attrs or []
        self.next_run_id = self.next_run_ids = self.next_video_attrs = None
        self.writers = []
        for vi in range(n_runs):
            attrs = dict(base, prompt=prompts[vi // per_prompt] if prompts else None,
                         seed=seeds[vi] if vi < len(seeds) else record.get("seed"), **self.extra_attrs)
            if self.split_videos:  # recorded as if the video had been generated alone
                attrs["perturbation"] = [replace(s, video=None).as_dict() for s in self.specs if s.applies_to(vi)]
                attrs["batch"] = {"video": vi, "videos": self._n_videos, "prompts": prompts, "seeds": seeds}
                attrs.update(video_attrs[vi] if vi < len(video_attrs) else {})
            else:
                attrs["perturbation"] = [s.as_dict() for s in self.specs]
            run_id = ids[vi] if vi < len(ids) else None
            try:
                w = RunWriter(self.root, attrs, run_id=run_id)
            except BaseException:
                for done in self.writers:
                    done.fail("another video of the batch could not be stored")
                raise
            self.writers.append(w)
            self.run_ids.append(w.run_id)
            self.run_dirs.append(w.dir)
            log.info("run %s started in %s", w.run_id, w.dir)
        self.writer = self.writers[0]
        self._reset_run_state()
        if self.step_source == "callback_on_step_end":
            user_cb = kwargs.get("callback_on_step_end")

            def step_end(pipe, i, t, cb_kwargs):
                # steps are counted here: a pipeline that runs its schedule more than once per call
                # (FreeInit's iterations, Helios' chunks of frames) starts its own i again at 0
                self._end_step(self.step, t)
                if user_cb is not None:
                    return user_cb(pipe, i, t, cb_kwargs)
                return cb_kwargs

            kwargs = dict(kwargs, callback_on_step_end=step_end)
            if user_cb is None:
                kwargs.pop("callback_on_step_end_tensor_inputs", None)
            elif hasattr(user_cb, "tensor_inputs") and "callback_on_step_end_tensor_inputs" not in kwargs:
                # a diffusers PipelineCallback names its tensors itself; the pipeline reads them off
                # the object only when it is passed directly, so pass them on explicitly
                kwargs["callback_on_step_end_tensor_inputs"] = list(user_cb.tensor_inputs)
        wanted = record.get("output_type") or "np"
        decode_each = self.family.decode_per_video and self._n_videos > 1 and wanted != "latent"
        if decode_each:  # the pipeline cannot decode several videos: it returns latents, decoded here
            kwargs = dict(kwargs, output_type="latent")
        t0 = time.perf_counter()
        try:
            out = call_original(*args, **kwargs)
            if decode_each:
                out = self._decode_each(out, record, wanted)
            if self.step_source != "callback_on_step_end" and self._step_t is not None:
                self._end_step(self.step, self._step_t)  # the last step ends with the call
        except BaseException as e:
            for w in self.writers:
                w.fail(e if not isinstance(e, KeyboardInterrupt) else "interrupted (KeyboardInterrupt)")
            raise
        try:
            frames = getattr(out, "frames", None)
            if frames is None and isinstance(out, tuple):
                frames = out[0]
            if not _all_finite(frames):  # e.g. T=1e30 or a diverging scale: not a complete run
                raise NonFiniteError("the generated video (or latents) has non-finite values: the denoising "
                                     "diverged")
            extra = {"seconds": round(time.perf_counter() - t0, 3), "geometry": asdict(self.geometry) if self.geometry else None}
            if self._extra_calls:
                extra["uncaptured_calls_per_step"] = self._extra_calls
            if self._cfg_inferred:
                extra["branches_inferred"] = ("two denoiser calls per step on the same latents: CFG's conditional "
                                              "(first) and unconditional passes")
            if self.kinds_inferred:
                extra["kinds_inferred"] = {n: {"kind": k, "reason": GENERIC_REASONS.get(r) if r else None}
                                           for n, (k, r) in self.kinds_inferred.items()}
            if self._side_log:
                extra["side_passes"] = {"steps": sorted(self._side_log),
                                        "layers": sorted(set().union(*self._side_log.values())),
                                        "specs": [str(s) for s in self.side_specs]}
            metas = [self._layer_meta(l) for l in self.layers]
            for vi, w in enumerate(self.writers):
                w.set_layers(metas)
                x = dict(extra)
                if record.get("output_type") != "latent" and frames is not None:
                    from .video import frames_to_uint8

                    arr = frames_to_uint8(frames[vi:vi + 1] if self.split_videos else frames)
                    w.write_video(arr)
                    x["video_shape"] = list(arr.shape)
                w.complete(**x)
        except BaseException as e:
            for w in self.writers:
                w.fail(e)
            raise
        for w in self.writers:
            log.info("run %s complete (%d steps captured)", w.run_id, w.n_steps)
        return out

    def _decode_each(self, out, record: dict, wanted: str):
        """Latents of a batched call -> the frames the pipeline would return, decoded one video at a
        time with the family's decode (the pipeline's own VAE step) and the pipeline's post-processing."""
        lat = out[0] if isinstance(out, tuple) else out.frames
        with torch.no_grad():
            video = torch.cat([self.family.decode_video(self.pipe, lat[i:i + 1], record) for i in range(lat.shape[0])])
        frames = self.pipe.video_processor.postprocess_video(video, output_type=wanted)
        if isinstance(out, tuple):
            return (frames, *out[1:])
        out.frames = frames
        return out

    def _reset_run_state(self):
        self.step = 0
        self.geometry: Geometry | None = None
        self._acc: dict[tuple[int, str], Accumulator] = {}  # (run slot, layer); slot = video when split
        self._layouts: dict[str, Layout] = {}  # first layout seen per layer (store metadata)
        self._layout_cache: dict[tuple, object] = {}  # layouts, and per-video item indices
        self._perturbed: dict[tuple[int, str], set[int]] = {}  # (run slot, layer) -> perturbed branches
        self._meta: dict[str, dict] = {}
        self._branches: list[str] | None = None
        self._calls_in_step = 0
        self._call_branch: tuple[int, int] | None = (0, 0)  # (branch of this call, branches per step)
        self._side_log: dict[int, set[str]] = {}  # step -> layers a side pass perturbed
        self._step_t: float | None = None  # timestep of the current step (steps from the denoiser's input)
        self._others_warned = False
        self._extra_calls = 0  # most denoiser calls per step beyond the captured one(s)
        self._extra_warned = False
        self._first_call = None  # (latent, timestep) of a generic run's first call (_two_pass_cfg)
        self._cfg_total: int | None = None  # CFG branches per step when inferred, not declared
        self._cfg_inferred = False
        self._item_qk: dict = {}  # (layer, branch, video) -> (q, k) of per-item calls, for M
        self._deferred.discard()  # calls of a failed run's last step

    def _on_denoiser(self, args, kwargs):
        if self._side:
            self._side_geometry = self.family.geometry(args, kwargs)
            return
        if self.step_source != "callback_on_step_end":
            # a new timestep starts a new step: the previous one is complete
            t = self.family.timestep(args, kwargs)
            if t is None:
                raise RuntimeError(f"{type(self.pipe).__name__} has no callback_on_step_end and its denoiser call "
                                   "carries no timestep: attnlens cannot tell the steps apart")
            if self._step_t is not None and t != self._step_t:
                self._end_step(self.step, self._step_t)
            self._step_t = t
        idx = self._calls_in_step
        self._calls_in_step += 1
        if self.family.main_call_only and not self.family.separate_cfg_calls:
            # the pipeline's own guidance passes (LTX-2: STG, modality isolation) follow the step's
            # batched CFG call; they are run as the model makes them, not captured
            self._call_branch = (0, 0) if idx == 0 else None
            if idx:
                self._extra_calls = max(self._extra_calls, idx)
                return
        geo = self.family.geometry(args, kwargs)
        if self.family.infers_kinds and self._branches is None and idx == 0:
            # one denoiser call per CFG branch when a call holds one item per video while CFG is on
            self.family.separate_cfg_calls = (geo.batch == self._n_videos
                                              and self.family.cfg_branches(self.pipe, self._record) == 2)
            self._cfg_total = None
            if not self.family.separate_cfg_calls and geo.batch == self._n_videos:
                # kept to recognize CFG run as two calls by a pipeline that does not say it does
                self._first_call = (self.family.latent(args, kwargs).clone(), self.family.timestep(args, kwargs))
        if self.family.separate_cfg_calls:
            # e.g. Wan: the cond call, then the uncond call, each a batch of its own
            total = self._cfg_total or self.family.cfg_branches(self.pipe, self._record)
            self._call_branch = (total - 1 - idx, total) if idx < total else None
        elif idx == 0:
            total, self._call_branch = 1, (0, 0)
        elif idx == 1 and self._two_pass_cfg(args, kwargs):
            total, self._call_branch = 2, (0, 2)
        else:
            total, self._call_branch = 1, None
        if self._call_branch is None:
            # never pooled with the captured call(s): a guidance pass or a condition of its own
            self._extra_calls = max(self._extra_calls, idx + 1 - total)
            if not self._extra_warned:
                self._extra_warned = True
                log.warning("%s called its denoiser %d times in step %d; call %d is not a CFG branch attnlens can "
                            "place, so it runs uncaptured (as every further call does; the run records "
                            "uncaptured_calls_per_step)", type(self.pipe).__name__, idx + 1, self.step, idx + 1)
            return
        self.geometry = geo

    def _two_pass_cfg(self, args, kwargs) -> bool:
        """At the second denoiser call of a generic-family run's first step: whether the pipeline
        runs CFG as two calls without saying so (no ``do_classifier_free_guidance``; Kandinsky 5):
        the same latents at the same timestep twice, with a guidance scale above 1 if it has one.
        If so, the first call's sums become branch ``cond`` (diffusers' separate-pass pipelines
        make the conditional call first) and this call is ``uncond``; the run records the inference."""
        first, self._first_call = self._first_call, None
        if first is None or self.step != 0 or self._branches is not None:
            return False
        x, t = self.family.latent(args, kwargs), self.family.timestep(args, kwargs)
        if not (isinstance(x, torch.Tensor) and x.shape == first[0].shape and t == first[1] and torch.equal(x, first[0])):
            return False
        g = guidance_scale(self.pipe, self._record)
        if g is not None and g <= 1:
            return False
        self._deferred.flush()  # the first call's deferred sums reach its accumulators first
        for acc in self._acc.values():
            acc.widen(replace(acc.lay, n_branch=2, branch_base=1), at=1)
        self._layouts = {n: replace(lay, n_branch=2, branch_base=1) for n, lay in self._layouts.items()}
        self._layout_cache.clear()
        self._perturbed = {k: {b + 1 for b in v} for k, v in self._perturbed.items()}
        self.family.separate_cfg_calls, self._cfg_total, self._cfg_inferred = True, 2, True
        log.info("%s: two denoiser calls per step on the same latents, recorded as CFG branches cond (the first) "
                 "and uncond", type(self.pipe).__name__)
        return True

    def _end_step(self, i: int, timestep) -> None:
        t = step_timestep(timestep)
        if not self._others_warned and self.kinds_inferred:
            self._others_warned = True
            others = [n for n, (k, _) in self.kinds_inferred.items() if k == "other"]
            if others:
                log.warning("%d layer(s) of kind 'other' (not inferable from token counts; scalar statistics only): %s",
                            len(others), ", ".join(others))
        if self.config.captures(i) and self._acc:
            self._deferred.flush()
            self._write_step(i, t)
        self._deferred.discard()
        self._acc.clear()
        self._perturbed.clear()
        self._calls_in_step = 0
        self._first_call = None
        self.step = i + 1
        if self.on_step is not None:
            self.on_step(i, t)

    def _branch_names(self, n: int) -> list[str]:
        if n == 2:
            return list(dims.BRANCHES_CFG)
        if n == 1:
            return ["cond"]
        return [f"b{i}" for i in range(n)]

    def _write_step(self, i: int, t: float) -> None:
        any_lay = next(iter(self._layouts.values()))
        if self._branches is None:
            self._branches = self._branch_names(any_lay.n_branch)
        nb = len(self._branches)
        frames = max(lay.frames for lay in self._layouts.values())
        for slot, writer in enumerate(self.writers):
            metas, accs = [], []
            perturbed = np.zeros((len(self.layers), nb), dtype=bool)
            for li, layer in enumerate(self.layers):
                metas.append(self._layer_meta(layer))
                accs.append(self._acc.get((slot, layer.name)))
                for b in self._perturbed.get((slot, layer.name), ()):
                    perturbed[li, b] = True
            writer.write_step(i, t, metas, self._branches, layout_results(accs), perturbed, self.config.grid, frames)

    # -- the SDPA handler --------------------------------------------------------------------------
    def _layout(self, name: str, call: hooks.SDPACall) -> Layout:
        B, H, Nq, _ = call.q.shape
        Nk = call.k.shape[-2]
        split = self.family.separate_cfg_calls
        base, total = self._call_branch if split else (0, None)
        item = None
        if self.family.per_item_calls and self.geometry is not None and B == 1 < self.geometry.batch:
            # one SDPA call per batch item (Mochi): the call index is the item of the denoiser batch
            n_videos = max(1, self._n_videos)
            per = self.geometry.batch // (total or max(1, self.geometry.batch // n_videos))
            item = call.index
            base, total = base + item // per, total or max(1, self.geometry.batch // n_videos)
        key = (name, B, base, item, Nk)
        lay = self._layout_cache.get(key)
        if lay is None:
            if self.geometry is None:
                raise RuntimeError("attention ran before the denoiser's forward: geometry unknown")
            layer = self._by_name[name]
            kind = self._kind_for_call(layer, call)
            lay = make_layout(kind, B, Nq, Nk, self.geometry, self._n_videos, self.config.grid,
                              total_branches=total, branch_base=base,
                              text_first=self._text_first(name))
            if item is not None:
                lay = replace(lay, item_video=item % max(1, self._n_videos))
            self._layout_cache[key] = lay
        if name not in self._layouts:
            layer = self._by_name[name]
            self._layouts[name] = lay
            self._meta[name] = {"name": name, "kind": lay.kind, "block": layer.block, "n_query": Nq, "n_key": Nk,
                                "heads": H, "gy": lay.gy, "gx": lay.gx}
        return lay

    def _layer_meta(self, layer: LayerInfo) -> dict:
        """What the store records of a layer: as seen at its first call, else from the inventory."""
        return self._meta.get(layer.name) or {"name": layer.name, "kind": self.kind_of(layer), "block": layer.block,
                                              "n_query": 0, "n_key": 0, "heads": layer.heads, "gy": 0, "gx": 0}

    def _text_first(self, name: str) -> bool:
        """Whether a joint layer's text tokens come before its video tokens: as a generic run
        inferred for that layer, else as the family declares."""
        got = self._text_first_of.get(name)
        return got if got is not None else self.family.text_first is not False

    def kind_of(self, layer: LayerInfo) -> str:
        """The layer's kind: from the architecture, or as inferred at its first call."""
        got = self.kinds_inferred.get(layer.name)
        return got[0] if got else layer.kind

    def _kind_for_call(self, layer: LayerInfo, call: hooks.SDPACall) -> str:
        if not self.family.infers_kinds:
            return layer.kind
        got = self.kinds_inferred.get(layer.name)
        if got is None:
            B, _, nq, _ = call.q.shape
            hint = any(w in layer.name.lower() for w in ("temporal", "temp_", "motion"))
            got = infer_kind(B, nq, call.k.shape[-2], self.geometry, cross_module=layer.kind == "cross",
                             text_first=self.family.text_first, temporal_hint=hint)
            if got[1] == "text_order":  # a joint [video; text] sequence in an order the module shows
                first = video_first(call.forward, call.v)
                if first is not None:
                    self._text_first_of[layer.name] = not first
                    got = infer_kind(B, nq, call.k.shape[-2], self.geometry, cross_module=layer.kind == "cross",
                                     text_first=not first, temporal_hint=hint)
            self.kinds_inferred[layer.name] = got
        return got[0]

    def _on_module_sdpa(self, module: str, call: hooks.SDPACall) -> torch.Tensor:
        """One SDPA call inside a hooked attention module: to the layer (or sub-layer) it belongs to."""
        subs = self._subs[module]
        if None in subs:
            if call.index == 1 and module not in self._multi_warned and not self.family.per_item_calls:
                self._multi_warned.add(module)
                log.warning("layer %s makes several SDPA calls per forward; their statistics are pooled as one layer",
                            module)
            return self._on_sdpa(subs[None].name, call)
        layer = subs.get(call.index)
        if layer is None:
            declared = [l for l in self.inventory if l.module == module]
            if call.index >= len(declared):
                raise hooks.NoSDPAError(f"layer {module} made SDPA call {call.index + 1}; its family declares "
                                        f"{len(declared)} ({', '.join(l.name for l in declared)})")
            return call.original()  # a sub-call that is neither captured nor perturbed
        return self._on_sdpa(layer.name, call)

    def _on_sdpa(self, name: str, call: hooks.SDPACall) -> torch.Tensor:
        step = self.step
        if self._side:
            return self._side_sdpa(name, call)
        specs = [s for s in self._ptb_layers.get(name, ()) if s.active(step)]
        capture = name in self._captured and self.config.captures(step)
        if self._call_branch is None:  # a denoiser call outside the CFG branches
            return call.original()
        if not specs and not capture:
            return call.original()
        rs = None
        if capture and not self.config.sample_rows and not self.split_videos:
            # every row exact, one accumulator for the batch: the output and the statistics from
            # one kernel call where that call is faster and bit-identical (else rs is None). A
            # perturbed layer takes the same path, so its recorded statistics (those of the
            # original map) are the very numbers an unperturbed run records.
            orig, rs = merged.SHARED.run(call, self.config.maps_at(step))
        else:
            orig = call.original()
        if torch.is_grad_enabled():  # pipelines run without autograd; entering no_grad costs a few µs per call
            with torch.no_grad():
                return self._apply(name, call, specs, capture, orig, rs)
        return self._apply(name, call, specs, capture, orig, rs)

    def _apply(self, name, call, specs, capture: bool, orig, rs) -> torch.Tensor:
        """Perturb and capture one call (autograd off); returns the output the model gets."""
        lay = self._layout(name, call)
        out = orig
        if lay.item_video is not None and any(sp.kind == "M" for sp in specs):
            # per-item calls: keep each video's queries and keys for M on a later video
            k_items, _ = call.kv_for_heads()
            self._item_qk[(name, lay.branch_base, lay.item_video)] = (call.q, k_items)
        if specs:
            out = self._perturb(name, call, lay, specs, orig)
        if capture:
            self._capture(name, call, lay, orig, rs)
        return out

    def _items(self, lay: Layout, n: int, device) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(branch, video) of each of the call's n batch items, and the items per video."""
        items = torch.arange(n, device=device)
        if lay.item_video is not None:  # a call over one batch item (per-item calls)
            return torch.full_like(items, lay.branch_base), torch.full_like(items, lay.item_video), 1
        per_video = max(1, lay.per_branch // max(1, self._n_videos))
        return items // lay.per_branch + lay.branch_base, (items % lay.per_branch) // per_video, per_video

    def _perturb(self, name, call, lay: Layout, specs, orig) -> torch.Tensor:
        out = orig.clone()
        branches = self._branches or self._branch_names(lay.n_branch)
        branch, video, per_video = self._items(lay, out.shape[0], out.device)
        for spec in specs:
            if spec.branch is None:
                sel_b = list(range(lay.n_branch))
            else:
                sel_b = [b for b, nm in enumerate(branches) if nm == spec.branch]
            if not sel_b:
                continue
            sel = torch.isin(branch, torch.tensor(sel_b, device=out.device))
            videos = [vi for vi in range(self._n_videos) if spec.applies_to(vi)]
            sel &= torch.isin(video, torch.tensor(videos, device=out.device, dtype=video.dtype))
            if not sel.any():
                continue
            k, v = call.kv_for_heads()
            src = None
            if spec.kind == "M" and lay.item_video is not None:
                ptb = self._item_map_output(name, spec, call, lay, v, orig)
            else:
                if spec.kind == "M":  # the same item of the source video: same branch, frame or position
                    src = torch.arange(out.shape[0], device=out.device) + (spec.source - video) * per_video
                ptb = perturbed_output(spec, call.func, call.q, k, v, call.mask(), call.scale, orig, lay.text, src,
                                       text_first=lay.text_first)
            out[sel] = ptb[sel]
            hit = torch.unique(video[sel] * lay.n_branch + branch[sel]).tolist()  # one device sync
            for code in hit:
                vi, b = divmod(int(code), lay.n_branch)
                self._perturbed.setdefault((vi if self.split_videos else 0, name), set()).add(b)
        return out

    def _item_map_output(self, name, spec, call, lay: Layout, v, orig) -> torch.Tensor:
        """M for per-item calls (Mochi: one SDPA call per video, [video; text] with that video's own
        text length): the target's video rows take the source video's map over the video keys,
        renormalized there, applied to the target's video values; the text rows and the text keys
        keep the target's own attention (the two prompts' text tokens do not line up). The source's
        call of the same branch comes first in the batch, so its queries and keys are at hand."""
        got = self._item_qk.get((name, lay.branch_base, spec.source))
        if got is None:
            raise PerturbSpecError(f"{spec}: the source video's call must come before the target's in the batch "
                                   f"(source {spec.source}, target {lay.item_video})")
        q_src, k_src = got
        n = lay.n_video
        vid = call.func(q_src[..., :n, :], k_src[..., :n, :], v[..., :n, :], scale=call.scale)
        out = orig.clone()
        out[..., :n, :] = vid.to(out.dtype)
        return out

    def _side_sdpa(self, name: str, call: hooks.SDPACall) -> torch.Tensor:
        specs = [s for s in self._side_layers.get(name, ()) if s.active(self.step)]
        if not specs:
            return call.original()
        orig = call.original()
        with torch.no_grad():
            text = 0
            layer = self._by_name[name]
            kind = self.kind_of(layer)
            if kind == "joint":  # text tokens of the joint sequence stay untouched
                geo = self._side_geometry  # one branch: the side pass's batch is all its videos
                text = make_layout(kind, call.q.shape[0], call.q.shape[-2], call.k.shape[-2], geo, geo.batch,
                                   self.config.grid).text
            out = orig
            k, v = call.kv_for_heads()
            for spec in specs:
                out = perturbed_output(spec, call.func, call.q, k, v, call.mask(), call.scale, out, text,
                                       text_first=self._text_first(name))
        self._side_log[self.step].add(name)
        return out

    def _capture(self, name, call, lay: Layout, orig, rs=None) -> None:
        q = call.q
        k, v = call.kv_for_heads()
        H, Nq = q.shape[1], q.shape[2]
        rows = None
        if self.config.sample_rows and self.config.sample_rows < Nq:
            rows = sampled_rows(Nq, self.config.sample_rows, q.device)
        mask = call.mask()
        maps = self.config.maps_at(self.step)
        if lay.item_video is not None:  # one batch item: one video of one branch
            parts = [(lay.item_video if self.split_videos else 0, None, lay, 1)]
        elif not self.split_videos:
            parts = [(0, None, lay, self._n_videos)]
        else:  # each video's items go to its own run's accumulator, with a one-video layout
            parts = [(vi, idx, self._video_layout(name, lay, idx.numel(), Nq, k.shape[-2]), 1)
                     for vi, idx in enumerate(self._video_items(lay, q.shape[0], q.device))]
        for slot, idx, lay_s, n_videos in parts:
            if idx is None:
                qs, ks, vs, ms, os_ = q, k, v, mask, orig
            else:
                qs, ks, vs, os_ = q[idx], k[idx], v[idx], orig[idx]
                ms = mask[idx] if mask is not None and mask.dim() == 4 and mask.shape[0] == q.shape[0] else mask
            acc = self._acc.get((slot, name))
            if acc is None:
                acc = self._acc[(slot, name)] = Accumulator(lay_s, H, q.device)
            if idx is None and deferred.deferrable(lay_s, qs, ks, ms, rows):
                # a small call: its statistics are computed with the step's others of its shape
                self._deferred.add(acc, lay_s, qs, ks, vs, os_, call.scale, n_videos, maps, rs)
                continue
            accumulate(acc, qs, ks, vs, ms, call.scale, os_, maps=maps, rows=rows,
                       chunk_bytes=self.config.chunk_bytes, n_videos=n_videos, lay=lay_s,
                       rs=rs if idx is None else None)

    def _video_items(self, lay: Layout, n: int, device) -> list[torch.Tensor]:
        """Batch item indices of each video (cached per call shape: computed once, not per call)."""
        key = (n, lay.per_branch, lay.branch_base, "items")
        got = self._layout_cache.get(key)
        if got is None:
            _, video, _ = self._items(lay, n, device)
            got = self._layout_cache[key] = [(video == vi).nonzero().squeeze(1) for vi in range(self._n_videos)]
        return got

    def _video_layout(self, name: str, lay: Layout, n_items: int, nq: int, nk: int) -> Layout:
        key = (name, n_items, lay.branch_base, "video")
        got = self._layout_cache.get(key)
        if got is None:
            geo = replace(self.geometry, batch=self.geometry.batch // self._n_videos)
            split = self.family.separate_cfg_calls
            got = make_layout(lay.kind, n_items, nq, nk, geo, 1, self.config.grid,
                              total_branches=lay.n_branch if split else None, branch_base=lay.branch_base,
                              text_first=lay.text_first)
            self._layout_cache[key] = got
        return got


def step_timestep(timestep) -> float:
    """A step's timestep as one number. Diffusion forcing (SkyReels-V2 DF) gives one per latent
    frame: their mean (equal to each of them while the frames share a noise level)."""
    if isinstance(timestep, torch.Tensor):
        return float(timestep.float().mean().item()) if timestep.numel() > 1 else float(timestep.item())
    return float(timestep)


class CallError(ValueError):
    """A pipeline call that cannot give a valid run (checked before anything is generated)."""


class NonFiniteError(ValueError):
    """The generation diverged (NaN or inf in its output): the run is failed, not complete."""


def validate_call(pipe, family, record: dict) -> None:
    """Sizes positive and divisible by the model's VAE × patch factor, steps within the
    scheduler's range, finite non-negative guidance scales; raises CallError naming the value."""
    steps = record.get("num_inference_steps")
    n_train = int(dict(getattr(pipe.scheduler, "config", {}) or {}).get("num_train_timesteps") or 1000)
    if isinstance(steps, int) and not 1 <= steps <= n_train:
        raise CallError(f"num_inference_steps must be between 1 and {n_train} (the scheduler's training steps), "
                        f"not {steps}")
    top = _past_last_timestep(pipe, steps) if isinstance(steps, int) else None
    if top is not None:
        cfg = dict(pipe.scheduler.config)
        raise CallError(f"num_inference_steps {steps} with {type(pipe.scheduler).__name__} (timestep_spacing "
                        f"{cfg.get('timestep_spacing')!r}, steps_offset {cfg.get('steps_offset')}) reaches timestep "
                        f"{top}, past its last training step ({len(pipe.scheduler.alphas_cumprod) - 1}): use fewer steps")
    frames = record.get("num_frames", record.get("video_length", record.get("frames")))
    if isinstance(frames, int) and frames < 1:
        raise CallError(f"num_frames must be >= 1, not {frames}")
    factor = 1
    for attr in ("vae_scale_factor_spatial", "vae_spatial_compression_ratio", "vae_scale_factor"):
        v = getattr(pipe, attr, None)
        if isinstance(v, int) and v > 0:
            factor = v
            break
    factor *= max(1, int(getattr(family, "patch", 1) or 1))
    for key in ("height", "width"):
        v = record.get(key)
        if isinstance(v, int) and (v < 1 or v % factor):
            raise CallError(f"{key} {v} must be a positive multiple of {factor} for this model "
                            f"(VAE downsampling × patch size)")
    for key in ("guidance_scale", "max_guidance_scale", "true_cfg_scale"):
        v = record.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not (math.isfinite(v) and v >= 0):
            raise CallError(f"{key} must be finite and >= 0, not {v}")


def _past_last_timestep(pipe, steps: int) -> int | None:
    """The largest timestep a discrete scheduler (one that indexes its ``alphas_cumprod`` by
    timestep: DDIM, DDPM, PNDM, ...) would use for ``steps`` steps if it is past the last entry
    (DDIM with steps_offset 1 and 'leading' spacing at 1000 of 1000 steps fails with an IndexError
    mid-run); else None. Flow-matching schedulers have no such table and are not checked."""
    sched = getattr(pipe, "scheduler", None)
    table = getattr(sched, "alphas_cumprod", None)
    if table is None or not hasattr(sched, "set_timesteps"):
        return None
    try:
        probe = copy.deepcopy(sched)
        probe.set_timesteps(steps)
        top = int(torch.as_tensor(probe.timesteps).max())
    except Exception:  # noqa: BLE001 - a scheduler that needs more to set its timesteps: not checked
        return None
    return top if top >= len(table) else None


def _all_finite(frames) -> bool:
    if frames is None:
        return True
    if isinstance(frames, torch.Tensor):
        return bool(torch.isfinite(frames).all())
    if isinstance(frames, np.ndarray) and frames.dtype.kind == "f":
        return bool(np.isfinite(frames).all())
    if isinstance(frames, list) and frames and isinstance(frames[0], np.ndarray):
        return all(_all_finite(f) for f in frames)
    return True


def takes_prompt(pipe) -> bool:
    """Whether the pipeline's call has a prompt (its own class, also while it is traced)."""
    cls = next(c for c in type(pipe).__mro__ if not c.__dict__.get("_attnlens_traced"))
    return "prompt" in inspect.signature(cls.__call__).parameters


def sampled_rows(n: int, k: int, device=None) -> torch.Tensor:
    """The sampled mode's rows: k evenly spaced query rows (first and last included), deterministic."""
    return torch.unique(torch.linspace(0, n - 1, k, device=device).round().long())


@contextlib.contextmanager
def _wrapped_call(pipe, handler):
    """Route ``pipe(...)`` through handler(call_original, args, kwargs) for the context's duration.

    Python looks special methods up on the type, so the pipeline's class is swapped for a
    subclass whose ``__call__`` delegates; the original class is restored on exit, always.
    """
    cls = type(pipe)

    def __call__(self, *args, **kwargs):
        return handler(lambda *a, **k: cls.__call__(self, *a, **k), args, kwargs)

    traced = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__, "_attnlens_traced": True})
    pipe.__class__ = traced
    try:
        yield
    finally:
        pipe.__class__ = cls


def trace(pipe, *, root=None, layers=None, perturb=(), every: int = 1, steps=None, maps: bool = True, grid: int = 8,
          sample_rows: int | None = None, model: str | None = None, attrs: dict | None = None,
          on_step=None, split_videos: bool = False, maps_every: int = 1) -> Tracer:
    """Capture attention statistics of every ``pipe(...)`` call made inside the returned context.

    layers: selection terms (see capture.layers), default every self-attention layer.
    perturb: perturbation specs (strings or PerturbSpec), see capture.perturb.
    split_videos: each video of a batched call becomes a run of its own (see Tracer).
    maps_every: maps only at steps that are multiples of this; statistics stay at every captured step.
    """
    from .layers import split_terms

    cfg = CaptureConfig(layers=tuple(split_terms(layers)), every=every, steps=steps, maps=maps, grid=grid,
                        sample_rows=sample_rows, maps_every=maps_every)
    return Tracer(pipe, root=root, config=cfg, perturb=perturb, model=model, attrs=attrs, on_step=on_step,
                  split_videos=split_videos)


__all__ = ["trace", "Tracer", "CaptureConfig", "CallError", "LayerSelectionError", "PerturbSpecError", "sampled_rows",
           "takes_prompt"]
