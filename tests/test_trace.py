"""Capture on the tiny presets through the Python API: bit-identity, hook hygiene, store contents."""

import numpy as np
import pytest
import torch

from capture import dims, hooks
from capture.layers import LayerSelectionError
from capture.perturb import PerturbSpecError
from capture.store import open_run
from capture.tracer import trace

from .conftest import ANIM_CALL, COG_CALL, WAN_CALL


def gen(pipe, call, seed=0, **kw):
    return pipe("a red circle moving left", generator=torch.Generator().manual_seed(seed), **call, **kw).frames


def test_wan_runs_cfg_branches_as_separate_calls(wan_pipe, root):
    ref = gen(wan_pipe, WAN_CALL)
    with trace(wan_pipe, root=root, layers="all") as tr:
        out = gen(wan_pipe, WAN_CALL)
    assert np.array_equal(ref, out) and no_attnlens_hooks(wan_pipe)
    ds = tr.dataset()
    assert list(ds[dims.BRANCH].values) == ["uncond", "cond"]
    assert dict(zip(ds[dims.LAYER_NAME].values.tolist(), ds[dims.LAYER_KIND].values.tolist())) == {
        "blocks.0.attn1": "joint", "blocks.0.attn2": "cross", "blocks.1.attn1": "joint", "blocks.1.attn2": "cross"}
    h = ds[dims.ENTROPY].sel(part="all").values  # (step, layer, branch, head)
    assert np.isfinite(h[..., :2]).all()
    assert not np.allclose(h[:, :, 0], h[:, :, 1])  # the branches differ: they were not mixed
    # a cond-only perturbation touches only the cond calls
    with trace(wan_pipe, root=root, perturb=["U@blocks.0.attn1:branch=cond"]) as ptb:
        gen(wan_pipe, WAN_CALL)
    flags = ptb.dataset()[dims.PERTURBED].values
    assert flags[:, 0, 1].all() and not flags[:, 0, 0].any() and not flags[:, 1].any()


def no_attnlens_hooks(pipe) -> bool:
    den = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    for _, m in den.named_modules():
        reg = getattr(m, "_diffusers_hook", None)
        if reg is not None and any(n.startswith("attnlens") for n in reg.hooks):
            return False
    return True


@pytest.mark.parametrize("which", ["anim", "cog"])
def test_capture_is_bit_identical_and_leaves_no_hooks(which, anim_pipe, cog_pipe, root):
    pipe, call = (anim_pipe, ANIM_CALL) if which == "anim" else (cog_pipe, COG_CALL)
    cls = type(pipe)
    ref = gen(pipe, call)
    with trace(pipe, root=root) as tr:
        out = gen(pipe, call)
    assert np.array_equal(ref, out)
    assert type(pipe) is cls and no_attnlens_hooks(pipe)
    assert np.array_equal(gen(pipe, call), ref)
    ds = tr.dataset()
    assert ds.attrs["status"] == dims.COMPLETE
    assert ds.sizes[dims.STEP] == 3 and list(ds[dims.BRANCH].values) == ["uncond", "cond"]
    kinds = set(ds[dims.LAYER_KIND].values.tolist())
    assert kinds == ({"spatial", "temporal"} if which == "anim" else {"joint"})
    h = ds[dims.ENTROPY_NORM].sel(part="all").values
    h = h[np.isfinite(h)]
    assert h.size and (h >= 0).all() and (h <= 1).all()
    assert ds[dims.VIDEO].shape[0] == call["num_frames"]
    # stored maps: rows sum to 1 where defined
    ms = ds[dims.MAP_SPATIAL].isel(step=0).values
    rows = ms.sum(-1)
    assert np.allclose(rows[np.isfinite(rows)], 1.0, atol=1e-4)
    assert ds.attrs["prompt"] == "a red circle moving left" and ds.attrs["seed"] == 0


@pytest.mark.parametrize("how", ["torch.compile", "regional"])
def test_a_compiled_denoiser_is_captured_as_the_uncompiled_one(how, tmp_path, caplog):
    """GPU users compile the denoiser (``pipe.unet = torch.compile(pipe.unet)``, or diffusers'
    regional ``block.compile()``). A compiled graph runs the attention modules without their hooks:
    before, the run's statistics were those of a different computation and the video matched
    neither model. Now the denoiser runs uncompiled while traced: same layer names, statistics and
    video as the uncompiled pipeline, and the compiled wrapper is back afterwards."""
    from capture.layers import inventory
    from capture.models.families import family_of
    from capture.models.tiny import tiny_animatediff

    pipe = tiny_animatediff(0)
    names = [l.name for l in inventory(pipe, family_of(pipe))]
    with trace(pipe, root=tmp_path / "a") as tr:
        ref = gen(pipe, ANIM_CALL)
    want = tr.dataset()
    unet = pipe.unet
    if how == "torch.compile":
        pipe.unet = torch.compile(unet)
        compiled = pipe.unet
    else:
        for block in unet.down_blocks:
            block.compile()
        impls = [b._compiled_call_impl for b in unet.down_blocks]
        assert all(i is not None for i in impls)
    assert [l.name for l in inventory(pipe, family_of(pipe))] == names  # the model's own names, no "_orig_mod."
    with caplog.at_level("WARNING", logger="capture.hooks"), trace(pipe, root=tmp_path / "b") as tr:
        out = gen(pipe, ANIM_CALL)
    assert "it runs uncompiled while traced" in caplog.text
    assert np.array_equal(out, ref)
    got = tr.dataset()
    assert list(got[dims.LAYER_NAME].values) == list(want[dims.LAYER_NAME].values)
    for v in (*dims.SCALAR_STATS, dims.MAP_SPATIAL, dims.MAP_TEMPORAL, dims.ENTROPY_MAP):
        np.testing.assert_array_equal(got[v].values, want[v].values, err_msg=v)
    if how == "torch.compile":
        assert pipe.unet is compiled
    else:
        assert [b._compiled_call_impl for b in unet.down_blocks] == impls
    assert no_attnlens_hooks(pipe)


def test_hooks_are_removed_when_generation_raises(anim_pipe, root):
    cls = type(anim_pipe)

    def boom(pipe, i, t, kw):
        if i == 1:
            raise RuntimeError("boom")
        return kw

    with pytest.raises(RuntimeError, match="boom"):
        with trace(anim_pipe, root=root) as tr:
            gen(anim_pipe, ANIM_CALL, callback_on_step_end=boom)
    assert type(anim_pipe) is cls and no_attnlens_hooks(anim_pipe)
    ds = open_run(tr.run_dirs[0])
    assert ds.attrs["status"] == dims.FAILED and "boom" in ds.attrs["error"]
    assert ds.sizes[dims.STEP] == 2  # steps 0 and 1 ended (and were written) before the failure


def test_user_callback_is_chained(anim_pipe, root):
    seen = []

    def cb(pipe, i, t, kw):
        seen.append(i)
        return kw

    with trace(anim_pipe, root=root):
        gen(anim_pipe, ANIM_CALL, callback_on_step_end=cb)
    assert seen == [0, 1, 2]


def test_second_registration_under_same_name_is_an_error(anim_pipe, root):
    with trace(anim_pipe, root=root, layers="kind=temporal"):
        with pytest.raises(RuntimeError, match="already being traced"):
            trace(anim_pipe, root=root, layers="kind=temporal")
        mod = dict(anim_pipe.unet.named_modules())["mid_block.motion_modules.0.transformer_blocks.0.attn1"]
        with pytest.raises(ValueError, match="already exists"):
            hooks.register(mod, hooks.AttentionLayerHook("x", lambda n, c: c.original()), hooks.LAYER_HOOK)
    assert no_attnlens_hooks(anim_pipe)


def test_perturbation_touches_only_selected_layers_and_steps(anim_pipe, root):
    ref = gen(anim_pipe, ANIM_CALL)
    target = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    with trace(anim_pipe, root=root, perturb=[f"U@{target}:steps=1-2:branch=cond"]) as tr:
        out = gen(anim_pipe, ANIM_CALL)
    assert not np.array_equal(ref, out)
    ds = tr.dataset()
    flags = ds[dims.PERTURBED].values  # (step, layer, branch)
    names = ds[dims.LAYER_NAME].values.tolist()
    expected = np.zeros_like(flags)
    expected[1:3, names.index(target), 1] = 1
    assert np.array_equal(flags, expected)
    assert ds.attrs["perturbation"][0]["spec"] == f"U@{target}:steps=1-2:branch=cond"


def test_perturbed_layer_records_the_original_map(anim_pipe, root):
    target = "kind=temporal"
    with trace(anim_pipe, root=root) as base:
        gen(anim_pipe, ANIM_CALL)
    with trace(anim_pipe, root=root, perturb=[f"I@{target}"]) as ptb:
        gen(anim_pipe, ANIM_CALL)
    a, b = base.dataset(), ptb.dataset()
    # at step 0 every layer sees the same inputs up to the first perturbed layer's output; the
    # first temporal layer's statistics (of its original map) are identical
    first_t = [i for i, k in enumerate(a[dims.LAYER_KIND].values) if k == "temporal"][0]
    np.testing.assert_allclose(a[dims.ENTROPY].values[0, first_t], b[dims.ENTROPY].values[0, first_t], rtol=1e-6)
    assert b[dims.PERTURBED].values[:, first_t].all()


def test_temperature_changes_entropy_direction(cog_pipe, root):
    with trace(cog_pipe, root=root) as base:
        base_out = gen(cog_pipe, COG_CALL)
    with trace(cog_pipe, root=root, perturb=["T=0@transformer_blocks.0.attn1:steps=0-0"]) as ptb:
        ptb_out = gen(cog_pipe, COG_CALL)
    assert not np.array_equal(base_out, ptb_out)
    assert ptb.dataset()[dims.PERTURBED].values[0, 0].all()


def test_bad_step_window_fails_before_generation(anim_pipe, root):
    with trace(anim_pipe, root=root, perturb=["U@kind=temporal:steps=5-9"]):
        with pytest.raises(PerturbSpecError, match="after the last step"):
            gen(anim_pipe, ANIM_CALL)  # 3 steps
    assert not (root / "runs").exists() or not any((root / "runs").iterdir())


def test_free_init_passes_are_steps_of_their_own(anim_pipe, root):
    """AnimateDiff with FreeInit runs its schedule once per iteration, and its callback's step
    index starts again at 0 each time: the run numbers its steps 0..5 itself (no step twice), a
    perturbation window in the second iteration is accepted and applied there alone, and the
    video stays bit-identical to FreeInit without capture."""
    anim_pipe.enable_free_init(num_iters=2, use_fast_sampling=False)
    try:
        ref = gen(anim_pipe, ANIM_CALL)
        with trace(anim_pipe, root=root) as tr:
            out = gen(anim_pipe, ANIM_CALL)
        target = "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1"
        with trace(anim_pipe, root=root, perturb=[f"U@{target}:steps=4-4"]) as ptb:
            gen(anim_pipe, ANIM_CALL)
        with trace(anim_pipe, root=root, perturb=[f"U@{target}:steps=6-6"]):
            with pytest.raises(PerturbSpecError, match=r"after the last step \(5\)"):
                gen(anim_pipe, ANIM_CALL)
    finally:
        anim_pipe.disable_free_init()
    assert np.array_equal(ref, out)
    ds = tr.dataset()
    assert ds["step"].values.tolist() == list(range(6))
    t = ds[dims.TIMESTEP].values
    assert np.array_equal(t[:3], t[3:]) and len(set(t[:3])) == 3  # the schedule twice
    flags = ptb.dataset()[dims.PERTURBED].values.any(axis=(1, 2))
    assert flags.tolist() == [False] * 4 + [True, False]


def test_a_per_frame_timestep_is_recorded_as_one_number():
    """Diffusion forcing (SkyReels-V2 DF) hands the step callback one timestep per latent frame."""
    from capture.tracer import step_timestep

    assert step_timestep(torch.tensor([999.0, 999.0, 999.0])) == 999.0
    assert step_timestep(torch.tensor([900.0, 600.0])) == 750.0
    assert step_timestep(torch.tensor(500)) == 500.0 and step_timestep(3) == 3.0


def test_layer_selection_errors_name_near_misses(anim_pipe, root):
    with pytest.raises(LayerSelectionError, match="closest: down_blocks"):
        trace(anim_pipe, root=root, layers="down_block.0.attentions.*")
    with pytest.raises(LayerSelectionError, match="unknown layer kind"):
        trace(anim_pipe, root=root, layers="kind=temporl")
    with pytest.raises(PerturbSpecError, match="cross-attention"):
        trace(anim_pipe, root=root, perturb=["I@kind=cross"])


def test_layer_that_never_reaches_sdpa_is_an_error(anim_pipe, root):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    name = "mid_block.attentions.0.transformer_blocks.0.attn1"
    mod = dict(anim_pipe.unet.named_modules())[name]
    mod.set_processor(AttnProcessor())
    try:
        with pytest.raises(hooks.NoSDPAError, match=name):
            with trace(anim_pipe, root=root, layers=name):
                gen(anim_pipe, ANIM_CALL)
    finally:
        mod.set_processor(AttnProcessor2_0())
    assert no_attnlens_hooks(anim_pipe)


def test_every_k_and_sampled_mode(anim_pipe, root):
    call = dict(ANIM_CALL, num_inference_steps=4)
    with trace(anim_pipe, root=root, every=2, sample_rows=5, maps=False) as tr:
        gen(anim_pipe, call)
    ds = tr.dataset()
    assert ds[dims.STEP].values.tolist() == [0, 2]
    assert ds.attrs["capture"]["mode"] == "sampled" and ds.attrs["capture"]["sample_rows"] == 5
    assert dims.MAP_SPATIAL not in ds


def test_maps_every_k_keeps_statistics_at_every_step(anim_pipe, root):
    """maps_every=2: maps at steps 0 and 2 only, equal to an every-step capture's there; the
    statistics at every step, equal to the every-step capture's; the dashboard offers the map steps."""
    from dashboard.data import RunUnavailable, TraceRoot

    call = dict(ANIM_CALL, num_inference_steps=4)
    with trace(anim_pipe, root=root) as full:
        ref = gen(anim_pipe, call)
    with trace(anim_pipe, root=root, maps_every=2) as thin:
        out = gen(anim_pipe, call)
    assert np.array_equal(ref, out)
    a, b = full.dataset(), thin.dataset()
    assert b.attrs["capture"]["maps_every"] == 2
    assert b[dims.STEP].values.tolist() == [0, 1, 2, 3]
    for name in (dims.ENTROPY, dims.ENTROPY_NORM, dims.ENERGY):
        np.testing.assert_allclose(b[name].values, a[name].values, rtol=1e-6, atol=1e-7, equal_nan=True)
        assert np.isfinite(b[name].sel(part="all").values).any(axis=tuple(range(1, b[name].ndim - 1))).all()
    for name in (dims.MAP_SPATIAL, dims.MAP_TEMPORAL, dims.ENTROPY_MAP):
        m = b[name].values
        assert np.isnan(m[[1, 3]]).all(), name
        np.testing.assert_allclose(m[[0, 2]], a[name].values[[0, 2]], rtol=1e-6, atol=1e-7, equal_nan=True)
        assert np.isfinite(m[[0, 2]]).any(), name
    tr = TraceRoot(root)
    assert tr.map_steps(thin.run_id) == [0, 2] and tr.map_steps(full.run_id) == [0, 1, 2, 3]
    layer = int(np.flatnonzero(b[dims.LAYER_KIND].values == "spatial")[0])
    assert np.isfinite(tr.attention_map(thin.run_id, 2, layer).values).all()
    with pytest.raises(RunUnavailable, match="only every 2 steps"):
        tr.attention_map(thin.run_id, 1, layer)


def test_maps_every_must_be_positive(anim_pipe, root):
    with pytest.raises(ValueError, match="maps-every"):
        trace(anim_pipe, root=root, maps_every=0)


def test_cross_attention_capture(anim_pipe, root):
    with trace(anim_pipe, root=root, layers="kind=cross") as tr:
        gen(anim_pipe, ANIM_CALL)
    ds = tr.dataset()
    assert set(ds[dims.LAYER_KIND].values.tolist()) == {"cross"}
    assert (ds[dims.N_KEY].values == 77).all()
    h = ds[dims.ENTROPY_NORM].sel(part="all").values
    assert np.isfinite(h[..., :8]).all()


def test_local_directory_preset(anim_pipe, tmp_path, root):
    from capture.models.presets import load_pipeline

    d = tmp_path / "saved"
    anim_pipe.save_pretrained(d)
    pipe, preset, defaults = load_pipeline(str(d))
    assert preset is None and type(pipe).__name__ == "AnimateDiffPipeline"
    ref = gen(anim_pipe, ANIM_CALL)
    with trace(pipe, root=root, model=str(d)) as tr:
        out = gen(pipe, ANIM_CALL)
    assert np.array_equal(ref, out)
    assert tr.dataset().attrs["model"] == str(d)


LEAN_PROBE = """
import sys
import torch
from capture.models.tiny import tiny_animatediff
from capture.tracer import trace

pipe = tiny_animatediff(0)
before = set(sys.modules)
with trace(pipe, root=sys.argv[1]) as tr:
    pipe("a red circle", generator=torch.Generator().manual_seed(0), num_frames=8, height=64, width=64,
         num_inference_steps=2, output_type="np", guidance_scale=7.5)
print("RUN=" + str(tr.run_dirs[-1]))
print("LOADED=" + ",".join(sorted(m for m in ("pandas", "zarr", "xarray") if m in sys.modules and m not in before)))
"""


def test_a_short_capture_loads_neither_pandas_nor_zarr_python(tmp_path):
    """The store and the run's table are written without pandas, zarr-python or xarray (their
    imports were a third of a single short capture's overhead); the run reads back whole."""
    import os
    import subprocess
    import sys

    got = subprocess.run([sys.executable, "-c", LEAN_PROBE, str(tmp_path)], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert got.returncode == 0, got.stderr[-3000:]
    lines = dict(ln.split("=", 1) for ln in got.stdout.splitlines() if "=" in ln)
    assert lines["LOADED"] == ""
    from capture.catalog import Catalog

    ds = open_run(lines["RUN"])
    assert ds.attrs["status"] == dims.COMPLETE and ds.sizes[dims.STEP] == 2
    assert np.isfinite(ds[dims.ENTROPY].sel(part="all").values[..., 0]).all()
    n = Catalog(tmp_path).query("SELECT count(*) AS n FROM stats WHERE entropy IS NOT NULL")["n"][0]
    assert n == int(np.isfinite(ds[dims.ENTROPY].values).sum())
