"""IE-Adapt enhancement: guidance against diffusers' own PAG and an explicit uniform-matrix
reference, s = 0 and window checks, temperature mode, and the ``attnlens apply enhance`` CLI."""

import json

import numpy as np
import pytest
import torch

from capture.layers import inventory
from capture.models.families import family_of
from capture.store import open_run
from capture.tracer import Tracer
from ieadapt.enhance import EnhanceConfig, enhance, pag_layers
from ieadapt.guidance import GuidanceConfig

from .conftest import ANIM_CALL

PROMPT = "a red circle moving left"


def _layers(pipe, kind=None):
    fam = family_of(pipe)
    return [(l.name, l.kind) for l in inventory(pipe, fam) if kind is None or l.kind == kind]


def _run(pipe, root, cfg, layers, call=ANIM_CALL, seed=3):
    return enhance(pipe, layers, cfg, prompt=PROMPT, seed=seed, call=dict(call), root=root, model="tiny")


def test_scale_zero_is_bit_identical_to_plain_cfg(anim_pipe, root):
    layers = [n for n, _ in _layers(anim_pipe, "spatial")]
    base = _run(anim_pipe, root, EnhanceConfig(mode="cfg"), layers)
    zero = _run(anim_pipe, root, EnhanceConfig(mode="guidance", scale=0.0, perturb="U"), layers)
    assert zero.extra_calls == 0
    assert np.array_equal(base.frames, zero.frames)
    assert np.array_equal(open_run(base.run_dir)["video"].values, open_run(zero.run_dir)["video"].values)
    on = _run(anim_pipe, root, EnhanceConfig(mode="guidance", scale=2.0, perturb="U"), layers)
    assert not np.allclose(base.frames, on.frames, atol=1e-3)  # s > 0 does change the video


@pytest.mark.parametrize("w", [7.5, 1.0])  # with and without CFG
def test_identity_guidance_equals_diffusers_pag(anim_pipe, root, w):
    """Guidance with I on PAG's default layers is perturbed-attention guidance: compare with
    diffusers' AnimateDiffPAGPipeline (its own identity processors, [u, c, p] in one batch)."""
    from diffusers import AnimateDiffPAGPipeline

    layers = pag_layers(_layers(anim_pipe))
    assert layers == ["mid_block.attentions.0.transformer_blocks.0.attn1",
                      "mid_block.motion_modules.0.transformer_blocks.0.attn1"]
    call = dict(ANIM_CALL, guidance_scale=w)
    ours = _run(anim_pipe, root, EnhanceConfig(mode="guidance", scale=2.5, perturb="I"), layers, call)
    assert ours.extra_calls == call["num_inference_steps"]
    parts = {k: getattr(anim_pipe, k) for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    pag = AnimateDiffPAGPipeline(**parts, motion_adapter=None, pag_applied_layers=layers)
    pag.set_progress_bar_config(disable=True)
    try:
        ref = pag(PROMPT, generator=torch.Generator().manual_seed(3), pag_scale=2.5, **call).frames
    finally:
        from diffusers.models.attention_processor import AttnProcessor2_0

        for name, mod in anim_pipe.unet.named_modules():  # PAG leaves its processors installed
            if name in layers:
                mod.set_processor(AttnProcessor2_0())
    np.testing.assert_allclose(ours.frames, ref, atol=2e-5)
    plain = _run(anim_pipe, root, EnhanceConfig(mode="cfg"), layers, call)
    assert np.abs(plain.frames - ref).max() > 1e-3


def test_side_pass_uniform_equals_explicit_matrix(anim_pipe, root):
    """The perturbed prediction: selected layers use the uniform matrix (explicit N×N reference
    through diffusers' matrix-based AttnProcessor), every other layer is untouched."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    names = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1",
             "up_blocks.1.motion_modules.0.transformer_blocks.0.attn2"]
    unet = anim_pipe.unet
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, 8, generator=g)
    text = torch.randn(2 * 8, 16, unet.config.cross_attention_dim, generator=g)
    t = torch.tensor(500)
    tr = Tracer(anim_pipe, root=root, side_perturb=[GuidanceConfig(perturb="U").side_spec(names)])
    with torch.no_grad():
        plain = unet(sample, t, encoder_hidden_states=text).sample
        with tr, tr.side_pass():
            side = unet(sample, t, encoder_hidden_states=text).sample
        mods = dict(unet.named_modules())

        def uniform_scores(query, key, attention_mask=None):
            return torch.full((query.shape[0], query.shape[1], key.shape[1]), 1.0 / key.shape[1])

        try:
            for n in names:
                mods[n].set_processor(AttnProcessor())
                mods[n].get_attention_scores = uniform_scores
            ref = unet(sample, t, encoder_hidden_states=text).sample
        finally:
            for n in names:
                del mods[n].get_attention_scores
                mods[n].set_processor(AttnProcessor2_0())
    np.testing.assert_allclose(side.numpy(), ref.numpy(), atol=1e-5)
    assert np.abs(side - plain).max() > 1e-3
    assert tr._side_log == {0: set(names)}


def test_window_limits_extra_calls_and_keeps_earlier_steps(anim_pipe, root):
    layers = [n for n, _ in _layers(anim_pipe, "temporal")][:2]
    lat = {}

    def keep(tag):
        def cb(pipe, i, t, kw):
            lat.setdefault(tag, []).append(kw["latents"].clone())
            return kw
        return cb

    call = dict(ANIM_CALL, num_inference_steps=4)
    base = _run(anim_pipe, root, EnhanceConfig(mode="cfg"), layers,
                dict(call, callback_on_step_end=keep("base"), callback_on_step_end_tensor_inputs=["latents"]))
    g = _run(anim_pipe, root, EnhanceConfig(mode="guidance", scale=3.0, perturb="I", steps=(1, 2)), layers,
             dict(call, callback_on_step_end=keep("g"), callback_on_step_end_tensor_inputs=["latents"]))
    assert g.extra_calls == 2
    assert torch.equal(lat["base"][0], lat["g"][0])  # step 0 is before the window
    assert not torch.allclose(lat["base"][1], lat["g"][1], atol=1e-4)
    ds, ds0 = open_run(g.run_dir), open_run(base.run_dir)
    assert ds.sizes["step"] == 4  # side passes are not captured as steps or branches
    assert ds.attrs["side_passes"] == {"steps": [1, 2], "layers": sorted(layers), "specs": [f"I@{','.join(layers)}"]}
    assert ds.attrs["ieadapt"]["mode"] == "guidance" and ds.attrs["ieadapt"]["layers"] == layers
    np.testing.assert_array_equal(ds["entropy"].isel(step=0).values, ds0["entropy"].isel(step=0).values)
    assert not ds["perturbed"].values.any()  # the main pass is not perturbed


def test_schedules():
    c = GuidanceConfig(scale=4.0, steps=(2, 5), schedule="linear")
    assert [c.scale_at(i, 10) for i in range(8)] == [0, 0, 4.0, 3.0, 2.0, 1.0, 0, 0]
    c = GuidanceConfig(scale=2.0, steps=(0, 1), schedule="cosine")
    assert c.scale_at(0, 4) == pytest.approx(2.0) and c.scale_at(1, 4) == pytest.approx(1.0) and c.scale_at(2, 4) == 0
    assert GuidanceConfig(scale=1.5).scale_at(9, 10) == 1.5
    with pytest.raises(ValueError):
        GuidanceConfig(perturb="T")
    with pytest.raises(ValueError):
        GuidanceConfig(schedule="exp")


def test_temperature_mode_flags_selected_layers_in_window(anim_pipe, root):
    layers = [n for n, _ in _layers(anim_pipe, "spatial")][:2]
    r = _run(anim_pipe, root, EnhanceConfig(mode="temperature", factor=0.5, steps=(0, 1)), layers)
    ds = open_run(r.run_dir)
    flagged = ds["perturbed"].any("branch")  # (step, layer)
    names = list(ds["layer_name"].values)
    for li, name in enumerate(names):
        assert list(flagged.isel(layer=li).values) == ([True, True, False] if name in layers else [False] * 3)
    assert r.extra_calls == 0 and "side_passes" not in ds.attrs
    one = _run(anim_pipe, root, EnhanceConfig(mode="temperature", factor=1.0), layers)
    base = _run(anim_pipe, root, EnhanceConfig(mode="cfg"), layers)
    np.testing.assert_allclose(one.frames, base.frames, atol=1e-6)
    assert np.abs(r.frames - base.frames).max() > 1e-3


def test_cli_apply_enhance_with_selection_file(root, tmp_path, capsys):
    from capture.cli import main
    from capture.selection import Selection

    assert main(["capture", "--model", "tiny-animatediff", "--root", str(root), "--prompt", PROMPT,
                 "--steps", "2", "--frames", "8", "--height", "64", "--width", "64", "--quiet"]) == 0
    sel_file = tmp_path / "sel.json"
    assert main(["select", "--root", str(root), "--stat", "entropy_norm", "--rule", "top:0.5", "--kind", "spatial",
                 "-o", str(sel_file)]) == 0
    sel = Selection.load(sel_file)
    capsys.readouterr()
    args = ["apply", "enhance", "--model", "tiny-animatediff", "--selection", str(sel_file), "--root", str(root),
            "--prompt", PROMPT, "--seed", "1", "--num-steps", "2", "--frames", "8", "--height", "64", "--width", "64",
            "--scale", "2", "--steps", "0-0", "--baseline", "-q"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1 extra denoiser calls" in out and "ssim_mean=" in out
    run = out.splitlines()[1].split()[0]  # the guidance run (after the baseline's line)
    ds = open_run(root / "runs" / run)
    assert ds.attrs["ieadapt"]["layers"] == sel.layers and ds.attrs["ieadapt"]["selection"]["rule"] == "top:0.5"
    from capture.catalog import Catalog

    labels = Catalog(root).query("SELECT run, ieadapt FROM runs").set_index("run")["ieadapt"]
    assert labels[run] == "guidance s=2 I constant" and labels[out.splitlines()[0].split()[0]] == "cfg"
    # a selection naming a layer this model lacks, and one made for another model: one line, exit 2
    bad = json.loads(sel_file.read_text())
    bad["layers"] = ["down_blocks.0.attentions.0.transformer_blocks.0.attn9"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(args[:5] + [str(tmp_path / "bad.json")] + args[6:]) == 2
    err = capsys.readouterr().err
    assert "attn9' is not in the model; nearest: " in err and "down_blocks.0.attentions.0.transformer_blocks.0.attn1" in err
    assert len(err.strip().splitlines()) == 1
    other = dict(json.loads(sel_file.read_text()), model="demo")
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert main(args[:5] + [str(tmp_path / "other.json")] + args[6:]) == 2
    assert "made for model 'demo'" in capsys.readouterr().err
    assert main(args[:5] + [str(tmp_path / "other.json")] + args[6:] + ["--any-model"]) == 0


def test_selection_round_trip_dashboard_select_apply(root, tmp_path, capsys, monkeypatch):
    """The same rule in the dashboard's Layer selection view and in ``attnlens select`` gives the
    same file content; both files drive ``attnlens apply enhance``."""
    import sys

    from capture.cli import main
    from dashboard import cache, notes

    AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
    assert main(["capture", "--model", "tiny-animatediff", "--root", str(root), "--prompt", PROMPT,
                 "--steps", "2", "--frames", "8", "--height", "64", "--width", "64", "--quiet"]) == 0
    run = capsys.readouterr().out.split()[0]
    monkeypatch.setenv("ATTNLENS_ROOT", str(root))
    monkeypatch.setattr(sys, "argv", ["streamlit"])
    cache.reload()
    at = AppTest.from_string("from dashboard.views import selection\nselection.render()", default_timeout=90)
    for k, v in dict(sel_runs=run, sel_kind="temporal", sel_rule="bottom", sel_frac="0.5").items():
        at.query_params[k] = v
    at.run()
    at.text_input(key="sel_save_name").input("low temporal")
    at.button(key="sel_save_submit").click().run()
    (dash_sel,) = notes.list_selections(root).values()
    dash_file = next((root / notes.SELECTIONS_DIR).glob("*.json"))
    cli_file = tmp_path / "cli.json"
    assert main(["select", "--root", str(root), "--runs", run, "--stat", "entropy_norm", "--rule", "bottom:0.5",
                 "--kind", "temporal", "-o", str(cli_file)]) == 0
    from capture.selection import Selection

    cli_sel = Selection.load(cli_file)
    assert cli_sel.layers == dash_sel.layers and cli_sel.model == dash_sel.model == "tiny-animatediff"
    assert (cli_sel.rule, cli_sel.statistic, cli_sel.kind, cli_sel.source_runs) == \
        (dash_sel.rule, dash_sel.statistic, dash_sel.kind, dash_sel.source_runs)
    for f in (dash_file, cli_file):
        assert main(["apply", "enhance", "--model", "tiny-animatediff", "--selection", str(f), "--root", str(root),
                     "--prompt", PROMPT, "--num-steps", "2", "--frames", "8", "--height", "64", "--width", "64",
                     "-q"]) == 0
        rid = capsys.readouterr().out.split()[0]
        assert open_run(root / "runs" / rid).attrs["ieadapt"]["layers"] == dash_sel.layers


@pytest.mark.parametrize("which", ["cog", "wan"])
def test_guidance_on_transformer_families(which, cog_pipe, wan_pipe, root):
    """Batched CFG (CogVideoX) and one denoiser call per branch (Wan, cond first): one extra call
    per step on the conditional items; s = 0 stays bit-identical."""
    from .conftest import COG_CALL, WAN_CALL

    pipe, call = (cog_pipe, COG_CALL) if which == "cog" else (wan_pipe, WAN_CALL)
    layers = [n for n, k in _layers(pipe) if k == "joint"][:1]
    base = _run(pipe, root, EnhanceConfig(mode="cfg"), layers, call)
    zero = _run(pipe, root, EnhanceConfig(mode="guidance", scale=0.0), layers, call)
    on = _run(pipe, root, EnhanceConfig(mode="guidance", scale=2.0, perturb="U"), layers, call)
    assert np.array_equal(base.frames, zero.frames)
    assert on.extra_calls == call["num_inference_steps"]
    assert np.abs(on.frames - base.frames).max() > 1e-4
    assert open_run(on.run_dir).sizes["step"] == call["num_inference_steps"]
