"""One table, the same checks on every family's tiny preset (and on the generic family): the
layer inventory's kinds, statistics against an explicit float64 softmax on the very same SDPA
calls, bit-identical output, hooks gone (also after an exception), I and U limited to the chosen
layer and step, guidance with s = 0 bit-identical, capture through the CLI, and the dashboard.

Adding a family is one row in FAMILIES (preset, the kinds its architecture has, one call)."""

from __future__ import annotations

import inspect
from collections import Counter

import numpy as np
import pytest
import torch

from capture import dims, open_run
from capture.layers import inventory
from capture.models.families import GenericFamily, family_of
from capture.models.presets import PRESETS, load_pipeline, pipeline_call
from capture.tracer import trace

from .reference import check_call as _check_call
from .reference import check_run, record_step0

pytestmark = pytest.mark.slow

# preset -> (family name, inventory kinds, pipeline call overrides)
FAMILIES = {
    "tiny-unet3d": ("unet3d", {"spatial": 4, "cross": 4, "temporal": 10}, {}),
    "tiny-latte": ("latte", {"spatial": 2, "cross": 2, "temporal": 2}, {}),
    "tiny-ltx": ("ltx", {"joint": 2, "cross": 2}, {}),
    "tiny-hunyuan": ("hunyuan", {"joint": 2, "other": 1}, {}),
    "tiny-hunyuan-cfg": ("hunyuan", {"joint": 2, "other": 1}, {"true_cfg_scale": 4.0, "negative_prompt": "blurry"}),
    "tiny-skyreels": ("skyreels", {"joint": 2, "cross": 2}, {}),
    "tiny-allegro": ("allegro", {"joint": 2, "cross": 2}, {}),
    "tiny-mochi": ("mochi", {"joint": 2}, {}),
    "tiny-wan22": ("wan", {"joint": 4, "cross": 4}, {}),
    "tiny-wan-i2v": ("wan", {"joint": 2, "cross": 4}, {}),
    "tiny-i2vgenxl": ("unet3d", {"spatial": 4, "cross": 4, "temporal": 11}, {}),
    "tiny-svd": ("svd", {"spatial": 4, "cross": 8, "temporal": 4}, {}),
    "tiny-hunyuan15": ("hunyuan15", {"joint": 2, "other": 1}, {}),
    "tiny-ltx2": ("ltx2", {"joint": 2, "cross": 4, "other": 6}, {}),
    "tiny-kandinsky5": ("kandinsky5", {"joint": 2, "cross": 2, "other": 1}, {}),
}
SELF = ("spatial", "temporal", "joint")
# presets whose pipelines pass a text padding mask into attention
MASKED = {"tiny-ltx", "tiny-hunyuan", "tiny-hunyuan-cfg", "tiny-allegro", "tiny-hunyuan15"}
PROMPT = "a red circle moving left"


@pytest.fixture(scope="module", params=list(FAMILIES))
def fam(request):
    pipe, preset, defaults = load_pipeline(request.param.removesuffix("-cfg"))
    call = pipeline_call(preset, defaults, steps=3)
    call.update(FAMILIES[request.param][2])
    return request.param, pipe, call


def gen(pipe, call, seed=0, **kw):
    torch.manual_seed(seed)  # I2VGenXL draws noise from the global generator too
    cls = next(c for c in type(pipe).__mro__ if not c.__dict__.get("_attnlens_traced"))  # the class under a trace
    kw = kw if "prompt" in inspect.signature(cls.__call__).parameters else dict(kw, _no_prompt=True)
    if kw.pop("_no_prompt", False):  # image-only pipelines (Stable Video Diffusion)
        return pipe(generator=torch.Generator().manual_seed(seed), **call, **kw).frames
    return pipe(prompt=PROMPT, generator=torch.Generator().manual_seed(seed), **call, **kw).frames


def _no_hooks(pipe) -> bool:
    for _, den in family_of(pipe).denoisers(pipe):
        for m in den.modules():
            reg = getattr(m, "_diffusers_hook", None)
            if reg is not None and any(n.startswith("attnlens") for n in reg.hooks):
                return False
    return not getattr(type(pipe), "_attnlens_traced", False)


def test_inventory_kinds_from_the_architecture(fam):
    name, pipe, _ = fam
    family = family_of(pipe)
    assert family.name == FAMILIES[name][0] and not family.infers_kinds
    kinds = Counter(l.kind for l in inventory(pipe, family))
    assert dict(kinds) == FAMILIES[name][1]


def test_capture_is_exact_bit_identical_and_leaves_no_hooks(fam, tmp_path):
    name, pipe, call = fam
    ref = gen(pipe, call)
    tr = trace(pipe, root=tmp_path, layers="all")
    seen = record_step0(tr)  # the very SDPA calls the tracer sees, at step 0 (one per CFG branch or one for all)
    with tr:
        out = gen(pipe, call)
    assert np.array_equal(ref, out)
    assert _no_hooks(pipe)
    ds = tr.dataset()
    assert ds.attrs["status"] == dims.COMPLETE and ds.sizes["step"] == call["num_inference_steps"]
    names = ds[dims.LAYER_NAME].values.tolist()
    assert set(seen) <= set(names)
    for layer in set(names) - set(seen):  # only an expert that did not run at step 0 (Wan 2.2)
        assert len(family_of(pipe).denoisers(pipe)) > 1, layer
        assert np.isnan(ds[dims.ENTROPY].isel(step=0, layer=names.index(layer)).values).all()
    check_run(ds, seen, family_of(pipe))
    if name in MASKED:  # a padded prompt's mask reached some layer, and masked keys there
        masks = [m for calls in seen.values() for (_, _, m, _) in calls if m is not None]
        assert any(bool((~m).any()) if m.dtype == torch.bool else bool((m <= -1e3).any()) for m in masks)


def test_merged_kernel_capture_is_exact_and_bit_identical(fam, tmp_path, monkeypatch):
    """Every eligible call through capture.merged (MIN_KEYS = 0): still exact against the float64
    reference, and the video still bit-identical, whatever the per-signature checks decided."""
    from capture import merged

    name, pipe, call = fam
    monkeypatch.setattr(merged, "MIN_KEYS", 0)
    monkeypatch.setattr(merged, "MAX_HEAD_DIM", 10**9)
    monkeypatch.setattr(merged, "MAX_HEAD_DIM_MAPS", 10**9)
    monkeypatch.setattr(merged, "SHARED", merged.MergedCalls())
    ref = gen(pipe, call)
    tr = trace(pipe, root=tmp_path, layers="all")
    seen = record_step0(tr)
    with tr:
        out = gen(pipe, call)
    assert np.array_equal(ref, out)
    check_run(tr.dataset(), seen, family_of(pipe))


def test_layers_command_measures_every_layer(fam, capsys):
    """`attnlens layers` lists every layer with its token counts (dummy inputs or a short generation)."""
    from capture.cli import main

    name = fam[0].removesuffix("-cfg")
    assert main(["layers", "--model", name, "--json"]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    family = family_of(fam[1])
    inv = inventory(fam[1], family)
    assert [r["name"] for r in rows] == [l.name for l in inv]
    experts_ok = all(r["query_tokens"] > 0 and r["key_tokens"] > 0 for r in rows)
    assert experts_ok, [r["name"] for r in rows if not r["query_tokens"]]


def test_hooks_gone_after_an_exception(fam, tmp_path):
    _, pipe, call = fam
    den = family_of(pipe).denoiser(pipe)

    def boom(*a, **k):
        raise RuntimeError("boom")

    handle = den.register_forward_pre_hook(lambda *a: boom())
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with trace(pipe, root=tmp_path, layers="all"):
                gen(pipe, call)
    finally:
        handle.remove()
    assert _no_hooks(pipe)
    (run,) = (tmp_path / "runs").iterdir()
    assert open_run(run).attrs["status"] == dims.FAILED


@pytest.mark.parametrize("kind", ["I", "U"])
def test_perturbation_touches_only_the_chosen_layer_and_step(fam, tmp_path, kind):
    _, pipe, call = fam
    family = family_of(pipe)
    with trace(pipe, root=tmp_path) as base:
        ref = gen(pipe, call)
    b_names = base.dataset()[dims.LAYER_NAME].values.tolist()
    ran = ~np.isnan(base.dataset()[dims.ENTROPY].isel(step=1).values).all(axis=(1, 2, 3))  # (Wan 2.2: one expert)
    target = next(l.name for l in inventory(pipe, family) if l.kind in SELF and ran[b_names.index(l.name)])
    with trace(pipe, root=tmp_path, perturb=[f"{kind}@{target}:steps=1-1"]) as tr:
        out = gen(pipe, call)
    assert not np.array_equal(ref, out)
    ds, b = tr.dataset(), base.dataset()
    names = ds[dims.LAYER_NAME].values.tolist()
    flags = ds[dims.PERTURBED].values
    expected = np.zeros_like(flags)
    expected[1, names.index(target), :] = 1
    assert np.array_equal(flags, expected)
    # step 0 is untouched; at step 1 the perturbed layer records the original map, so every layer
    # up to and including it agrees with the unperturbed run
    np.testing.assert_array_equal(ds[dims.ENTROPY].isel(step=0).values, b[dims.ENTROPY].isel(step=0).values)
    upto = names.index(target) + 1
    np.testing.assert_array_equal(ds[dims.ENTROPY].isel(step=1, layer=slice(0, upto)).values,
                                  b[dims.ENTROPY].isel(step=1, layer=slice(0, upto)).values)


def test_temperature_perturbation(fam, tmp_path):
    """T=f scales the chosen layer's logits: the video changes, the layer is flagged where asked."""
    _, pipe, call = fam
    family = family_of(pipe)
    target = next(l.name for l in inventory(pipe, family) if l.kind in SELF)
    ref = gen(pipe, call)
    with trace(pipe, root=tmp_path, perturb=[f"T=0.25@{target}"]) as tr:
        out = gen(pipe, call)
    assert not np.array_equal(ref, out)
    ds = tr.dataset()
    flagged = ds[dims.PERTURBED].values.any(axis=(0, 2))
    names = ds[dims.LAYER_NAME].values.tolist()
    ran = ~np.isnan(ds[dims.ENTROPY].values).all(axis=(0, 2, 3, 4))
    assert flagged[names.index(target)] and flagged.sum() == 1 and ran[names.index(target)]


def test_editing_injects_the_source_maps(fam, tmp_path):
    """IE-Adapt editing (M=0: source and target in one batched call, split into two runs): the
    target is flagged in the injected layers at the injected steps and changes; the source run is
    untouched (bit-identical to the same batched call without injection)."""
    from ieadapt.edit import edit

    name, pipe, call = fam
    if not PRESETS[name.removesuffix("-cfg")].takes_prompt:
        pytest.skip("text-guided editing needs a prompt (Stable Video Diffusion has none)")
    family = family_of(pipe)
    try:  # a pipeline that cannot generate two prompts in one call cannot edit (diffusers' own limits)
        two = dict(call, num_inference_steps=2)
        if "image" in two and family.images_per_prompt:
            two["image"] = [two["image"]] * 2
        pipe(prompt=["a", "b"], generator=[torch.Generator().manual_seed(0)] * 2, **two)
    except RuntimeError as e:  # the tracer decodes per video where the family says the pipeline cannot
        if not family.decode_per_video:
            pytest.skip(f"{type(pipe).__name__} fails on a two-prompt batch without attnlens: {str(e)[:80]}")
    layers = [l.name for l in inventory(pipe, family) if l.kind in SELF]
    kw = dict(source_prompt="a red circle moving left", target_prompt="a blue square moving left", call=call,
              seed=0, root=tmp_path)
    torch.manual_seed(0)
    plain = edit(pipe, layers, inject=0.0, **kw)
    torch.manual_seed(0)
    res = edit(pipe, layers, inject=0.5, **kw)
    k = res.inject_steps
    assert k == round(0.5 * call["num_inference_steps"]) > 0
    src, tgt = open_run(res.source_dir), open_run(res.target_dir)
    assert not src[dims.PERTURBED].values.any()
    flags = tgt[dims.PERTURBED].values  # (step, layer, branch)
    assert flags[k:].sum() == 0 and flags[:k].any()
    names = tgt[dims.LAYER_NAME].values.tolist()
    assert {names[i] for i in np.nonzero(flags.any(axis=(0, 2)))[0]} <= set(layers)
    assert np.array_equal(res.frames[0], plain.frames[0])
    assert not np.array_equal(res.frames[1], plain.frames[1])


def test_guidance_with_zero_scale_is_bit_identical(fam, tmp_path):
    from ieadapt.enhance import EnhanceConfig, enhance

    _, pipe, call = fam
    family = family_of(pipe)
    layers = [l.name for l in inventory(pipe, family) if l.kind in SELF][:1]
    run = lambda cfg: enhance(pipe, layers, cfg, prompt=PROMPT, seed=1, call=dict(call), root=tmp_path, model="t")  # noqa: E731
    base = run(EnhanceConfig(mode="cfg"))
    zero = run(EnhanceConfig(mode="guidance", scale=0.0))
    on = run(EnhanceConfig(mode="guidance", scale=2.0, perturb="U"))
    assert np.array_equal(base.frames, zero.frames)
    assert on.extra_calls == call["num_inference_steps"]
    assert np.abs(on.frames - base.frames).max() > 1e-5


def test_cli_capture_and_dashboard_views(fam, tmp_path, monkeypatch, capsys):
    from capture.cli import main

    name, _, _ = fam
    root = tmp_path / "traces"
    name = name.removesuffix("-cfg")
    prompt = ["--prompt", PROMPT] if PRESETS[name].takes_prompt else []
    assert main(["capture", "--model", name, *prompt, "--steps", "2", "--root", str(root), "--quiet"]) == 0
    run_id = capsys.readouterr().out.split()[-1]
    assert open_run(root / "runs" / run_id).attrs["model"] == name
    _views_open(root, monkeypatch)


def _views_open(root, monkeypatch):
    """Every dashboard view renders over the root without an exception."""
    import sys

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ATTNLENS_ROOT", str(root))
    monkeypatch.setattr(sys, "argv", ["streamlit"])
    from dashboard import cache

    cache.reload()
    for view in ("runs", "layer_step", "proportions", "maps", "compare", "perturbation", "selection", "notes_view"):
        at = AppTest.from_string(f"from dashboard.views import {view}\n{view}.render()", default_timeout=120).run()
        assert not at.exception, (view, [e.value for e in at.exception])


# -- the generic family ------------------------------------------------------------------------------------

def test_generic_family_infers_kinds_and_stays_exact(tmp_path, monkeypatch):
    """TextToVideoSD's UNet3D taken as unknown: kinds come from token counts and match the
    architecture's; the statistics equal those of the declared family bit for bit."""
    from capture.models import families

    pipe, preset, defaults = load_pipeline("tiny-unet3d")
    call = pipeline_call(preset, defaults, steps=2)
    with trace(pipe, root=tmp_path, layers="all") as known:
        ref = gen(pipe, call)
    monkeypatch.delitem(families.FAMILIES, "UNet3DConditionModel")
    assert isinstance(family_of(pipe), GenericFamily)
    with trace(pipe, root=tmp_path, layers="all") as tr:
        out = gen(pipe, call)
    assert np.array_equal(ref, out)
    a, b = known.dataset(), tr.dataset()
    by_name = dict(zip(b[dims.LAYER_NAME].values.tolist(), b[dims.LAYER_KIND].values.tolist()))
    assert by_name == dict(zip(a[dims.LAYER_NAME].values.tolist(), a[dims.LAYER_KIND].values.tolist()))
    inferred = b.attrs["kinds_inferred"]
    assert set(inferred) == set(by_name) and all(v["kind"] == by_name[n] for n, v in inferred.items())
    assert b.attrs["step_source"] == "denoiser timestep"  # TextToVideoSD has no callback_on_step_end
    order = a[dims.LAYER_NAME].values.tolist()
    np.testing.assert_array_equal(b[dims.ENTROPY].sel(layer=[b[dims.LAYER_NAME].values.tolist().index(n)
                                                                for n in order]).values, a[dims.ENTROPY].values)


def test_generic_family_on_a_model_without_one(tmp_path, monkeypatch, capsys):
    """SanaVideo has no family: its softmax cross-attention is captured with kinds inferred (and
    exact against the explicit softmax on the same calls, padded prompt mask included); its linear
    self-attention is listed as not capturable with the reason; the default selection says why."""
    from capture.layers import LayerSelectionError

    pipe, preset, defaults = load_pipeline("tiny-sana-video")
    family = family_of(pipe)
    assert isinstance(family, GenericFamily)
    inv = inventory(pipe, family)
    linear = [l for l in inv if l.not_capturable]
    assert [l.name for l in linear] == ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]
    assert all("softmax-free" in l.not_capturable for l in linear)
    with pytest.raises(LayerSelectionError, match="cannot be captured.*softmax-free"):
        trace(pipe, root=tmp_path, layers="kind=self")
    assert [l.name for l in trace(pipe, root=tmp_path).layers] == [l.name for l in inv if not l.not_capturable]
    call = pipeline_call(preset, defaults, steps=2)
    ref = gen(pipe, call)
    tr = trace(pipe, root=tmp_path, layers="all")
    seen = record_step0(tr)
    with tr:
        out = gen(pipe, call)
    assert np.array_equal(ref, out) and _no_hooks(pipe)
    ds = tr.dataset()
    names = ds[dims.LAYER_NAME].values.tolist()
    assert names == ["transformer_blocks.0.attn2", "transformer_blocks.1.attn2"]
    assert ds.attrs["kinds_inferred"] == {n: {"kind": "cross", "reason": None} for n in names}
    assert set(ds.attrs["layers_not_capturable"]) == {l.name for l in linear}
    for layer, calls in seen.items():
        (q, k, mask, scale), = calls
        assert mask is not None  # the padded prompt's mask reaches the cross-attention, and masks keys
        assert bool((~mask).any()) if mask.dtype == torch.bool else bool((mask <= -1e3).any())
        _check_call(ds, names, layer, q, k, mask, scale, list(range(ds.sizes["branch"])), family)
    from capture.cli import main

    root = tmp_path / "cli"
    assert main(["capture", "--model", "tiny-sana-video", "--prompt", PROMPT, "--steps", "2", "--root", str(root),
                 "--quiet"]) == 0
    _views_open(root, monkeypatch)


def test_infer_kind_table():
    from capture.models.families import Geometry, infer_kind

    unet = Geometry(batch=2, frames=8, height=16, width=16)
    dit = Geometry(batch=2, frames=4, height=16, width=16, patch=2)
    rows = [
        ((16, 256, 256, unet), "spatial"), ((16, 64, 64, unet), "spatial"), ((16, 64, 77, unet), "cross"),
        ((2 * 256, 8, 8, unet), "temporal"), ((2 * 16, 8, 8, unet), "temporal"),
        ((2, 256, 256, dit), "joint"), ((2, 256, 77, dit), "cross"), ((8, 64, 64, dit), "spatial"),
        ((2 * 64, 4, 4, dit), "temporal"), ((2, 7, 7, dit), "other"), ((2, 266, 266, dit), "other"),
    ]
    for (b, nq, nk, geo), want in rows:
        assert infer_kind(b, nq, nk, geo)[0] == want, (b, nq, nk, want)
    assert infer_kind(2, 266, 266, dit, text_first=True) == ("joint", None)
    assert infer_kind(2, 266, 266, dit)[1] == "text_order"


# -- family-specific checks ---------------------------------------------------------------------------------

def test_wan22_experts_are_both_hooked_and_named(tmp_path):
    """Each step runs one expert: its layers (named transformer.* or transformer_2.*) hold that
    step's statistics, the other expert's are empty; both experts appear over the run."""
    pipe, preset, defaults = load_pipeline("tiny-wan22")
    call = pipeline_call(preset, defaults, steps=6)
    with trace(pipe, root=tmp_path) as tr:
        gen(pipe, call)
    ds = tr.dataset()
    names = ds[dims.LAYER_NAME].values.tolist()
    high = np.array([n.startswith("transformer.") for n in names])
    assert high.sum() == 2 and (np.array([n.startswith("transformer_2.") for n in names])).sum() == 2
    ran_high = ~np.isnan(ds[dims.ENTROPY].sel(part="all").values[:, high]).all(axis=(1, 2, 3))
    ran_low = ~np.isnan(ds[dims.ENTROPY].sel(part="all").values[:, ~high]).all(axis=(1, 2, 3))
    assert (ran_high ^ ran_low).all() and ran_high.any() and ran_low.any()
    boundary = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
    np.testing.assert_array_equal(ran_high, ds[dims.TIMESTEP].values >= boundary)
    assert (ds[dims.N_QUERY].values > 0).all()  # the low-noise expert's layers get their token counts too


def test_wan_i2v_image_and_text_calls_are_separate_layers(tmp_path):
    """attn2 of Wan I2V makes two SDPA calls (image keys, then text keys): two sub-layers, each with
    its own key count and energy, equal to an explicit computation; a perturbation hits one."""
    pipe, preset, defaults = load_pipeline("tiny-wan-i2v")
    call = pipeline_call(preset, defaults, steps=2)
    seen = {}
    tr = trace(pipe, root=tmp_path, layers="all")
    orig = tr._on_sdpa

    def spy(layer, c):
        if tr.step == 0 and layer not in seen:
            k, v = c.kv_for_heads()
            seen[layer] = (c.q.clone(), k.clone(), v.clone(), c.scale)
        return orig(layer, c)

    tr._on_sdpa = spy
    with tr:
        ref = gen(pipe, call)
    ds = tr.dataset()
    names = ds[dims.LAYER_NAME].values.tolist()
    n_key = dict(zip(names, ds[dims.N_KEY].values.tolist()))
    assert n_key["blocks.0.attn2.image"] != n_key["blocks.0.attn2.text"] == 512
    for layer in ("blocks.0.attn2.image", "blocks.0.attn2.text"):
        q, k, v, scale = seen[layer]
        assert k.shape[-2] == n_key[layer]
        a = torch.softmax((q.double() @ k.double().transpose(-1, -2)) * scale, -1)
        energy = (a @ v.double()).pow(2).sum(dim=(2, 3))  # (B, H): one call per branch, cond first
        got = ds[dims.ENERGY].sel(part="all").isel(step=0, layer=names.index(layer)).values
        np.testing.assert_allclose(got[1, :q.shape[1]], energy[0].numpy(), rtol=1e-5)
    with trace(pipe, root=tmp_path, layers="all", perturb=["U@blocks.0.attn2.image"]) as ptb:
        out = gen(pipe, call)
    assert not np.array_equal(ref, out)
    pds = ptb.dataset()
    flagged = {pds[dims.LAYER_NAME].values[i] for i in np.nonzero(pds[dims.PERTURBED].values.any(axis=(0, 2)))[0]}
    assert flagged == {"blocks.0.attn2.image"}


def test_mochi_map_injection_equals_an_explicit_computation(tmp_path):
    """Mochi's M (one SDPA call per video): the target's video rows are softmax(q_src k_src,videoᵀ)
    V_tgt,video over the video keys; its text rows keep their own output."""
    from capture.perturb import PerturbSpec

    pipe, preset, defaults = load_pipeline("tiny-mochi")
    call = pipeline_call(preset, defaults, steps=2)
    layer = "transformer_blocks.0.attn1"
    seen = []
    tr = trace(pipe, root=tmp_path, layers="all", perturb=[PerturbSpec.parse(f"M=0@{layer}:steps=0-0")],
               split_videos=True)
    orig_perturb = tr._perturb

    def spy(name, c, lay, specs, orig):
        out = orig_perturb(name, c, lay, specs, orig)
        if name == layer and tr.step == 0:
            k, v = c.kv_for_heads()
            seen.append((lay.branch_base, lay.item_video, c.q.clone(), k.clone(), v.clone(), orig.clone(), out.clone(),
                         lay.n_video, c.scale))
        return out

    tr._perturb = spy
    with tr:
        pipe(prompt=["a red circle", "a blue square moving"], generator=[torch.Generator().manual_seed(0)] * 2, **call)
    by = {(b, vi): rest for b, vi, *rest in seen}
    for b in (0, 1):
        q0, k0, _, _, _, n, scale = by[(b, 0)]
        _, _, v1, orig1, out1, n, scale = by[(b, 1)]
        a = torch.softmax((q0[..., :n, :].double() @ k0[..., :n, :].double().transpose(-1, -2)) * scale, -1)
        torch.testing.assert_close(out1[..., :n, :].double(), a @ v1[..., :n, :].double(), rtol=1e-5, atol=1e-6)
        assert torch.equal(out1[..., n:, :], orig1[..., n:, :])  # text rows: the target's own output
        assert torch.equal(by[(b, 0)][4], by[(b, 0)][3])  # the source video's own output is untouched


@pytest.mark.parametrize("name", ["tiny-allegro", "tiny-hunyuan15"])
def test_batched_calls_are_decoded_per_video(tmp_path, name):
    """Allegro's and HunyuanVideo 1.5's VAEs cannot decode two videos at once; under a trace a
    batched call is decoded one video at a time, giving each video what a one-video call gives."""
    pipe, preset, defaults = load_pipeline(name)
    call = pipeline_call(preset, defaults, steps=2)
    with pytest.raises(RuntimeError):  # diffusers itself, without attnlens
        pipe(prompt=[PROMPT, PROMPT], generator=[torch.Generator().manual_seed(0)] * 2, **call)
    torch.manual_seed(0)
    one = pipe(prompt=PROMPT, generator=torch.Generator().manual_seed(0), **call).frames
    with trace(pipe, root=tmp_path, split_videos=True) as tr:
        torch.manual_seed(0)
        two = pipe(prompt=[PROMPT, PROMPT], generator=[torch.Generator().manual_seed(0)] * 2, **call).frames
    assert np.asarray(two).shape[0] == 2
    np.testing.assert_allclose(np.asarray(two)[0], np.asarray(one)[0], atol=2e-3)
    assert all(open_run(d)[dims.VIDEO].shape[0] == np.asarray(one).shape[1] for d in tr.run_dirs[-2:])


def test_map_injection_on_image_only_svd(tmp_path):
    """SVD has no prompt (no text-guided editing), but M works on its batched videos (two noise
    draws of one image): injecting video 0's maps changes video 1 only, and so does U on video 1."""
    pipe, preset, defaults = load_pipeline("tiny-svd")
    call = dict(pipeline_call(preset, defaults, steps=2), num_videos_per_prompt=2)
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"

    def run(spec):
        torch.manual_seed(0)
        with trace(pipe, root=tmp_path, perturb=[spec], split_videos=True) as tr:
            out = pipe(generator=torch.Generator().manual_seed(0), **call).frames
        return np.asarray(out), tr

    torch.manual_seed(0)
    plain = np.asarray(pipe(generator=torch.Generator().manual_seed(0), **call).frames)
    m, tr = run(f"M=0@{layer}")
    np.testing.assert_array_equal(m[0], plain[0])
    assert not np.array_equal(m[1], plain[1])
    assert open_run(tr.run_dirs[-1])[dims.PERTURBED].values.any()  # video 1 was flagged
    assert not open_run(tr.run_dirs[-2])[dims.PERTURBED].values.any()
    u, _ = run(f"U@{layer}:video=1")
    np.testing.assert_array_equal(u[0], plain[0])
    assert not np.array_equal(u[1], plain[1])


def test_every_family_that_decodes_per_video_says_how():
    """decode_per_video makes the tracer call decode_video; the base class's one only raises."""
    from capture.models.families import FAMILIES
    from capture.models.families.base import Family

    flagged = [c for c in set(FAMILIES.values()) if c.decode_per_video]
    assert flagged  # Allegro, HunyuanVideo 1.5
    assert all(c.decode_video is not Family.decode_video for c in flagged), flagged


def test_an_image_pipeline_is_named_as_one(tmp_path):
    """A text-to-image pipeline (diffusers' StableDiffusionPipeline, tiny random weights) gives its
    denoiser 4-D latents: the run fails with a line saying it is an image pipeline, not with a
    shape error, and the pipeline is left without hooks."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from capture.models.tiny import tiny_animatediff

    a = tiny_animatediff(0)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=a.text_encoder.config.hidden_size, norm_num_groups=32)
    pipe = StableDiffusionPipeline(vae=a.vae, text_encoder=a.text_encoder, tokenizer=a.tokenizer, unet=unet,
                                   scheduler=a.scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match=r"latent \(2, 4, 8, 8\) is an image's .* attnlens captures video pipelines"):
        with trace(pipe, root=tmp_path) as tr:
            pipe("a cat", height=64, width=64, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert open_run(tr.run_dirs[-1]).attrs["status"] == dims.FAILED
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())


def _tiny_kandinsky5(**config):
    """The tiny-kandinsky5 pipeline (diffusers' Kandinsky5T2VPipeline, random weights) and a call
    that gives it prompt embeddings directly (as after encode_prompt): 5 frames at 32x64."""
    from capture.models.tiny_video import tiny_kandinsky5

    pipe = tiny_kandinsky5(0, **config)
    g = torch.Generator().manual_seed(1)
    embeds = {}
    for side in ("", "negative_"):
        embeds |= {f"{side}prompt_embeds_qwen": torch.randn(1, 4, 32, generator=g),
                   f"{side}prompt_embeds_clip": torch.randn(1, 32, generator=g),
                   f"{side}prompt_cu_seqlens": torch.tensor([0, 4], dtype=torch.int32)}
    call = dict(embeds, num_inference_steps=2, height=32, width=64, num_frames=5, output_type="np")
    return pipe, call


def _k5(pipe, call, **kw):
    return pipe(generator=torch.Generator().manual_seed(0), **call, **kw).frames


K5_KINDS = {"text_transformer_blocks.0.self_attention": "other", "visual_transformer_blocks.0.self_attention": "joint",
            "visual_transformer_blocks.0.cross_attention": "cross", "visual_transformer_blocks.1.self_attention": "joint",
            "visual_transformer_blocks.1.cross_attention": "cross"}


def test_kandinsky5_family_is_exact_per_branch(tmp_path, caplog):
    """The kandinsky5 family: kinds from the architecture, channels-last latents, one transformer
    call per CFG branch (cond first) declared from the guidance scale; every call exact against
    the explicit softmax, the video bit-identical. With sparse (NABLA) attention the visual
    layers are other: their tokens are not in raster order, so no maps are laid out from them."""
    from capture.models.families import Kandinsky5Family

    pipe, call = _tiny_kandinsky5()
    family = family_of(pipe)
    assert isinstance(family, Kandinsky5Family)
    assert {l.name: l.kind for l in inventory(pipe, family)} == K5_KINDS
    ref = _k5(pipe, call, guidance_scale=5.0)
    tr = trace(pipe, root=tmp_path, layers="all")
    seen = record_step0(tr)
    with tr:
        out = _k5(pipe, call, guidance_scale=5.0)
    assert np.array_equal(ref, out) and _no_hooks(pipe)
    ds = tr.dataset()
    assert ds["branch"].values.tolist() == ["uncond", "cond"] and "branches_inferred" not in ds.attrs
    geo = ds.attrs["geometry"]  # latents (1, 2, 4, 8, 4): 5 frames in 2 latent ones, 32x64 / 8, 4 channels last
    assert (geo["frames"], geo["height"], geo["width"]) == (2, 4, 8)
    assert check_run(ds, seen, tr.family) < 1e-5
    m = ds[dims.MAP_SPATIAL].sel(branch="cond").isel(step=0, layer=1).values[:8, :8]  # a joint layer: 2x4 cells
    np.testing.assert_allclose(m.sum(-1), 1.0, rtol=1e-5)
    with trace(pipe, root=tmp_path, layers="all") as tr1:
        _k5(pipe, call, guidance_scale=1.0)
    assert tr1.dataset()["branch"].values.tolist() == ["cond"]

    # U on one layer of the unconditional call at step 1: flagged there only; the video changes
    target = "visual_transformer_blocks.0.self_attention"
    with trace(pipe, root=tmp_path, layers="all", perturb=[f"U@{target}:steps=1-1:branch=uncond"]) as tp:
        pert = _k5(pipe, call, guidance_scale=5.0)
    dp = tp.dataset()
    flags = dp[dims.PERTURBED].values  # (step, layer, branch)
    assert flags.sum() == 1 and flags[1, dp[dims.LAYER_NAME].values.tolist().index(target), 0]
    assert not np.array_equal(pert, ref)
    np.testing.assert_array_equal(dp[dims.ENTROPY].sel(branch="cond").values, ds[dims.ENTROPY].sel(branch="cond").values)

    sparse, _ = _tiny_kandinsky5(attention_type="nabla")
    assert {l.kind for l in inventory(sparse, family_of(sparse))} == {"other"}
    with caplog.at_level("WARNING"):  # the default selection (self-attention) falls back to every layer
        assert [l.name for l in trace(sparse, root=tmp_path).layers] == list(K5_KINDS)
    assert "no layer of this model is of a self-attention kind" in caplog.text


def test_generic_family_places_cfg_run_as_two_calls(tmp_path, monkeypatch, caplog):
    """Kandinsky 5 taken as unknown runs CFG as two denoiser calls per step (cond, then uncond)
    and says so nowhere (no do_classifier_free_guidance): the generic family sees the same latents
    twice in the first step and records the calls as the branches cond and uncond, each exact
    against the explicit softmax of its own SDPA calls; its channels-last latents give the right
    video geometry, so the kinds are inferred as the family declares them."""
    from capture.models import families

    monkeypatch.delitem(families.FAMILIES, "Kandinsky5Transformer3DModel")
    pipe, call = _tiny_kandinsky5()
    family = family_of(pipe)
    assert isinstance(family, GenericFamily)
    ref = _k5(pipe, call, guidance_scale=5.0)
    tr = trace(pipe, root=tmp_path, layers="all")
    seen = record_step0(tr)
    with tr, caplog.at_level("WARNING"):
        out = _k5(pipe, call, guidance_scale=5.0)
    assert np.array_equal(ref, out) and _no_hooks(pipe)
    ds = tr.dataset()
    assert ds["branch"].values.tolist() == ["uncond", "cond"]
    assert "CFG" in ds.attrs["branches_inferred"] and "uncaptured_calls_per_step" not in ds.attrs
    geo = ds.attrs["geometry"]  # latents (1, 2, 4, 8, 4): 5 frames in 2 latent ones, 32x64 / 8, 4 channels last
    assert (geo["frames"], geo["height"], geo["width"]) == (2, 4, 8)
    assert {n: v["kind"] for n, v in ds.attrs["kinds_inferred"].items()} == K5_KINDS
    assert tr.family.separate_cfg_calls and check_run(ds, seen, tr.family) < 1e-5
    cond, uncond = (ds[dims.ENTROPY].sel(branch=b, part="all").values for b in ("cond", "uncond"))
    assert np.isfinite(cond).all() and np.isfinite(uncond).all() and not np.allclose(cond, uncond)
    assert not [r for r in caplog.records if "uncaptured" in r.getMessage()]

    # without guidance the pipeline makes one call per step: one branch, no inference recorded
    with trace(pipe, root=tmp_path, layers="all") as tr1:
        _k5(pipe, call, guidance_scale=1.0)
    ds1 = tr1.dataset()
    assert ds1["branch"].values.tolist() == ["cond"] and "branches_inferred" not in ds1.attrs
    assert not tr1.family.separate_cfg_calls


def test_a_second_call_that_is_no_branch_is_not_pooled(tmp_path, monkeypatch, caplog):
    """A second denoiser call in a step that attnlens cannot place as a CFG branch (here: Kandinsky 5
    taken as unknown, with the inference switched off) runs uncaptured: the step's statistics are
    the first call's alone, equal to a run with guidance off on the same prompt, and the run says
    how many calls per step it left out; one warning, not one per step."""
    from capture.models import families
    from capture.tracer import Tracer

    monkeypatch.delitem(families.FAMILIES, "Kandinsky5Transformer3DModel")
    pipe, call = _tiny_kandinsky5()
    with trace(pipe, root=tmp_path, layers="all") as single:
        _k5(pipe, call, guidance_scale=1.0)
    monkeypatch.setattr(Tracer, "_two_pass_cfg", lambda self, args, kwargs: False)
    with caplog.at_level("WARNING"), trace(pipe, root=tmp_path, layers="all") as tr:
        _k5(pipe, call, guidance_scale=5.0)
    ds, ds1 = tr.dataset(), single.dataset()
    assert ds["branch"].values.tolist() == ["cond"] and ds.attrs["uncaptured_calls_per_step"] == 1
    # the first call of each step is the conditional one; step 0 sees the same latents either way
    np.testing.assert_array_equal(ds[dims.ENTROPY].isel(step=0).values, ds1[dims.ENTROPY].isel(step=0).values)
    warned = [r for r in caplog.records if "uncaptured" in r.getMessage()]
    assert len(warned) == 1 and "called its denoiser 2 times in step 0" in warned[0].getMessage()


def test_generic_family_reads_cfg_branches_from_a_guider(tmp_path):
    """MotifVideo runs CFG through a diffusers guider (one transformer call per condition) and has
    no family: the generic family takes the branches from the guider's conditions (declared, not
    inferred), each exact against the explicit softmax of its own calls. Its joint [video; text]
    layers (dual- and single-stream) are joint, with the video first as the module's own value
    projection shows, so their statistics are those of the video rows."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, MotifVideoPipeline
    from diffusers.guiders import AdaptiveProjectedGuidance
    from diffusers.models.transformers.transformer_motif_video import MotifVideoTransformer3DModel

    torch.manual_seed(0)  # the dummy sizes of diffusers' own MotifVideo pipeline test
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    den = MotifVideoTransformer3DModel(in_channels=33, out_channels=16, num_attention_heads=2, attention_head_dim=12,
                                       num_layers=1, num_single_layers=1, mlp_ratio=4.0, patch_size=1, patch_size_t=1,
                                       qk_norm="rms_norm", text_embed_dim=32, rope_axes_dim=(4, 4, 4))
    pipe = MotifVideoPipeline(transformer=den, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
                              text_encoder=None, tokenizer=None, guider=AdaptiveProjectedGuidance())
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(1)
    call = dict(prompt_embeds=torch.randn(1, 6, 32, generator=g), prompt_attention_mask=torch.ones(1, 6, dtype=torch.bool),
                negative_prompt_embeds=torch.randn(1, 6, 32, generator=g),
                negative_prompt_attention_mask=torch.ones(1, 6, dtype=torch.bool), num_inference_steps=2, height=16,
                width=16, num_frames=9, output_type="np")
    ref = pipe(generator=torch.Generator().manual_seed(0), **call).frames
    tr = trace(pipe, root=tmp_path, layers="all")
    assert isinstance(tr.family, GenericFamily)
    seen = record_step0(tr)
    with tr:
        out = pipe(generator=torch.Generator().manual_seed(0), **call).frames
    assert np.array_equal(ref, out) and _no_hooks(pipe)
    ds = tr.dataset()
    assert ds["branch"].values.tolist() == ["uncond", "cond"] and "branches_inferred" not in ds.attrs
    assert {n: v["kind"] for n, v in ds.attrs["kinds_inferred"].items()} == {
        "transformer_blocks.0.attn": "joint", "single_transformer_blocks.0.attn": "joint"}
    assert tr._text_first_of == {"transformer_blocks.0.attn": False, "single_transformer_blocks.0.attn": False}
    assert tr.family.separate_cfg_calls and check_run(ds, seen, tr.family, tr._text_first_of) < 1e-5
    with pytest.raises(AssertionError):  # the other order's rows are not what was recorded
        check_run(ds, seen, tr.family, {n: True for n in tr._text_first_of})


def test_generic_family_finds_text_in_front_of_the_video(tmp_path):
    """EasyAnimate (no family) puts the text in front of the video in its joint layers: the
    generic family reads that order from the module's value projection, so the layers are joint
    and their statistics those of the video rows, exact against the explicit softmax."""
    from diffusers import (AutoencoderKLMagvit, EasyAnimatePipeline, EasyAnimateTransformer3DModel,
                           FlowMatchEulerDiscreteScheduler)

    torch.manual_seed(0)  # diffusers' own dummy sizes, with head size 16 (its rotary embedding needs even thirds)
    den = EasyAnimateTransformer3DModel(num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=4,
                                        time_embed_dim=2, text_embed_dim=16, num_layers=2, sample_width=16,
                                        sample_height=16, patch_size=2)
    vae = AutoencoderKLMagvit(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=2,
                              down_block_types=("SpatialDownBlock3D",) + ("SpatialTemporalDownBlock3D",) * 3,
                              up_block_types=("SpatialUpBlock3D",) + ("SpatialTemporalUpBlock3D",) * 3,
                              block_out_channels=(8, 8, 8, 8), spatial_group_norm=False)
    pipe = EasyAnimatePipeline(transformer=den, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=None,
                               tokenizer=None)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(1)
    ones = torch.ones(1, 6, dtype=torch.long)
    call = dict(prompt_embeds=torch.randn(1, 6, 16, generator=g), prompt_attention_mask=ones,
                negative_prompt_embeds=torch.randn(1, 6, 16, generator=g), negative_prompt_attention_mask=ones,
                num_inference_steps=2, guidance_scale=6.0, height=32, width=32, num_frames=5, output_type="np")
    ref = pipe(generator=torch.Generator().manual_seed(0), **call).frames
    tr = trace(pipe, root=tmp_path, layers="all")
    seen = record_step0(tr)
    with tr:
        out = pipe(generator=torch.Generator().manual_seed(0), **call).frames
    assert np.array_equal(ref, out) and _no_hooks(pipe)
    ds = tr.dataset()
    names = ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]
    assert {n: v["kind"] for n, v in ds.attrs["kinds_inferred"].items()} == dict.fromkeys(names, "joint")
    assert tr._text_first_of == dict.fromkeys(names, True)
    assert check_run(ds, seen, tr.family, tr._text_first_of) < 1e-5
    with pytest.raises(AssertionError):
        check_run(ds, seen, tr.family, dict.fromkeys(names, False))


def test_diffusion_forcing_pipeline(tmp_path):
    """SkyReels-V2's diffusion-forcing pipeline (the skyreels family's transformer) gives the step
    callback one timestep per latent frame: the run completes, bit-identical, one number per step,
    both CFG branches captured."""
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    base, _, _ = load_pipeline("tiny-skyreels")
    pipe = SkyReelsV2DiffusionForcingPipeline(**base.components)
    pipe.set_progress_bar_config(disable=True)
    call = dict(num_frames=9, height=32, width=32, num_inference_steps=3, guidance_scale=5.0, output_type="np",
                max_sequence_length=16)
    ref = gen(pipe, call)
    with trace(pipe, root=tmp_path) as tr:
        out = gen(pipe, call)
    assert np.array_equal(ref, out) and _no_hooks(pipe)
    ds = tr.dataset()
    assert ds["step"].values.tolist() == [0, 1, 2] and np.isfinite(ds[dims.TIMESTEP].values).all()
    assert ds["branch"].values.tolist() == ["uncond", "cond"]
    assert np.isfinite(ds[dims.ENTROPY].sel(part="all").values[..., :1]).all()
