"""IE-Adapt editing: injection 0 is plain generation of the target, identical prompts with full
injection reproduce the source, injection touches only the target run and the chosen layers and
steps; DDIM inversion reconstructs the demo model's own clips; ``attnlens apply edit``."""

import numpy as np
import pytest
import torch

from capture.layers import inventory
from capture.metrics import run_video
from capture.models.families import family_of
from capture.store import open_run
from ieadapt.edit import edit, injected_layers

from .conftest import ANIM_CALL

SRC, TGT = "a red circle moving left", "a blue square moving left"


def _kinds(pipe):
    fam = family_of(pipe)
    return {l.name: l.kind for l in inventory(pipe, fam)}


def _plain(pipe, prompt, seed):
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **ANIM_CALL).frames[0]


def test_inject_zero_is_plain_generation_of_the_target(anim_pipe, root):
    layers = [n for n, k in _kinds(anim_pipe).items() if k == "spatial"]
    r = edit(anim_pipe, layers, source_prompt=SRC, target_prompt=TGT, inject=0.0, seed=7, call=ANIM_CALL, root=root)
    assert r.inject_steps == 0
    np.testing.assert_allclose(r.frames[1], _plain(anim_pipe, TGT, 7), atol=1e-4)
    np.testing.assert_allclose(r.frames[0], _plain(anim_pipe, SRC, 7), atol=1e-4)
    t, s = open_run(r.target_dir), open_run(r.source_dir)
    assert t.attrs["prompt"] == TGT and s.attrs["prompt"] == SRC
    assert t.attrs["ieadapt"]["source_run"] == r.source_run and s.attrs["ieadapt"]["target_run"] == r.target_run
    from capture.catalog import Catalog

    rows = Catalog(root).query("SELECT run, ieadapt, ieadapt_pair FROM runs ORDER BY run").set_index("run")
    assert rows.loc[r.target_run, "ieadapt"] == "edit target inject=0" and rows.loc[r.target_run, "ieadapt_pair"] == r.source_run
    assert rows.loc[r.source_run, "ieadapt_pair"] == r.target_run


def test_identical_prompts_and_full_injection_reproduce_the_source(anim_pipe, root):
    layers = [n for n, k in _kinds(anim_pipe).items() if k in ("spatial", "temporal")]
    r = edit(anim_pipe, layers, source_prompt=SRC, target_prompt=SRC, inject=1.0, seed=3, call=ANIM_CALL, root=root)
    assert r.inject_steps == ANIM_CALL["num_inference_steps"]
    np.testing.assert_allclose(r.frames[1], r.frames[0], atol=1e-5)
    assert np.array_equal(run_video(r.target_dir), run_video(r.source_dir))


def test_injection_touches_only_the_target_in_chosen_layers_and_steps(anim_pipe, root):
    kinds = _kinds(anim_pipe)
    layers = [n for n, k in kinds.items() if k == "spatial"][:2]
    call = dict(ANIM_CALL, num_inference_steps=4)
    r = edit(anim_pipe, layers, source_prompt=SRC, target_prompt=TGT, inject=0.5, seed=1, call=call, root=root)
    assert r.inject_steps == 2
    t, s = open_run(r.target_dir), open_run(r.source_dir)
    assert not s["perturbed"].values.any()
    flagged = t["perturbed"].all("branch")  # (step, layer): both CFG branches
    for li, name in enumerate(t["layer_name"].values):
        assert list(flagged.isel(layer=li).values) == ([True, True, False, False] if name in layers else [False] * 4)
    base = edit(anim_pipe, layers, source_prompt=SRC, target_prompt=TGT, inject=0.0, seed=1, call=call, root=root)
    np.testing.assert_allclose(r.frames[0], base.frames[0], atol=1e-5)  # the source is not affected
    assert np.abs(r.frames[1] - base.frames[1]).max() > 1e-3


def test_injected_layers_rule():
    kinds = {"a": "spatial", "b": "temporal", "c": "cross", "d": "temporal", "e": "spatial"}
    assert injected_layers(["a", "b", "c"], kinds, temporal=False) == ["a"]
    assert injected_layers(["a", "b"], kinds, temporal=True) == ["a", "b"]
    assert injected_layers(["e"], kinds, temporal=True) == ["e", "b", "d"]
    assert injected_layers(["a"], kinds, temporal=False, cross=True) == ["a", "c"]
    assert injected_layers(["a", "c"], dict(kinds, f="cross"), temporal=False, cross=True) == ["a", "c"]


@pytest.mark.slow
def test_ddim_inversion_reconstructs_a_demo_clip():
    """A real clip of the demo world, inverted and regenerated (25 steps, no CFG): the PSNR of the
    reconstruction is close to the VAE's own round trip (29.5 dB on this clip)."""
    from capture.models import world as W
    from capture.models.presets import load_pipeline
    from capture.video import frames_to_uint8
    from ieadapt.invert import ddim_invert, psnr

    pipe, _, _ = load_pipeline("demo")
    p = "a large red circle moving right on a striped background"
    clip = W.render(W.parse_prompt(p), 5, 8, 32)
    z = ddim_invert(pipe, clip, p, 25)
    rec = frames_to_uint8(pipe(p, latents=z, guidance_scale=1.0, num_inference_steps=25, num_frames=8,
                               output_type="np").frames)
    assert psnr(rec, clip) > 27.0
    noise = frames_to_uint8(pipe(p, generator=torch.Generator().manual_seed(0), guidance_scale=1.0,
                                 num_inference_steps=25, num_frames=8, output_type="np").frames)
    assert psnr(noise, clip) < 20.0  # a fresh sample of the same prompt is far from this clip


def test_cli_apply_edit(root, tmp_path, capsys):
    from capture.cli import main
    from capture.selection import Selection

    sel = Selection(model="tiny-animatediff", rule="bottom:0.5", statistic="entropy_norm", kind="spatial",
                    layers=["down_blocks.0.attentions.0.transformer_blocks.0.attn1",
                            "up_blocks.1.attentions.0.transformer_blocks.0.attn1"])
    sel.save(tmp_path / "sel.json")
    common = ["apply", "edit", "--model", "tiny-animatediff", "--selection", str(tmp_path / "sel.json"),
              "--root", str(root), "--num-steps", "2", "--frames", "8", "--height", "64", "--width", "64",
              "--source-prompt", SRC, "--target-prompt", TGT, "--quiet"]
    assert main(common + ["--source-seed", "2", "--inject", "0.5"]) == 0
    out = capsys.readouterr().out.splitlines()
    src_run = out[0].split()[0]
    assert "target" in out[1] and "2 layers injected for 1/2 steps" in out[1] and "ssim_mean=" in out[2]
    # a stored run as the source video: DDIM inversion, then the edit
    assert main(common + ["--source-video", str(root / "runs" / src_run), "--inject", "1.0", "--temporal"]) == 0
    out = capsys.readouterr().out.splitlines()
    t = open_run(root / "runs" / out[1].split()[0])
    assert t.attrs["ieadapt"]["source"] == "inversion" and t.attrs["ieadapt"]["inject_steps"] == 2
    assert len(t.attrs["ieadapt"]["layers"]) == 2 + sum(1 for k in _kinds_tiny().values() if k == "temporal")
    assert main(common + ["--source-seed", "2", "--inject", "1.5"]) == 2
    assert "not in [0, 1]" in capsys.readouterr().err


def _kinds_tiny():
    from capture.models.tiny import tiny_animatediff

    return _kinds(tiny_animatediff(0))
