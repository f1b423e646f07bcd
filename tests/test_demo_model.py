"""The shipped demo model: loads offline from data/demo/model, is small, has every attention kind,
generates a clip of the right shape, and is captured like any other model (its speed is measured by
benchmarks/bench_capture.py, not asserted: CI machines are busy)."""

import json

import numpy as np
import pytest
import torch

from capture.models.presets import DEMO_DIR, load_pipeline


@pytest.fixture(scope="module")
def demo():
    return load_pipeline("demo")


def test_weights_are_diffusers_format_and_small():
    files = [p for p in DEMO_DIR.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert {p.parent.name for p in weights} == {"unet", "vae", "text_encoder"}
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20
    index = json.loads((DEMO_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "AnimateDiffPipeline"
    assert not list(DEMO_DIR.rglob("*.bin")) and not list(DEMO_DIR.rglob("*.pt"))


def test_generates_a_clip(demo):
    pipe, preset, d = demo
    assert preset.name == "demo" and next(pipe.unet.parameters()).dtype == torch.float32
    out = pipe("a small red circle moving left on a plain background", num_frames=d["frames"], height=d["height"],
               width=d["width"], num_inference_steps=d["steps"], guidance_scale=d["guidance"], output_type="np",
               generator=torch.Generator().manual_seed(0)).frames
    assert out.shape == (1, 8, 32, 32, 3) and np.isfinite(out).all()
    assert out.std() > 0.05  # a picture, not a flat frame


def test_every_attention_kind_is_present(demo):
    from capture.probe import probe_layers

    pipe, _, d = demo
    kinds = {r["kind"] for r in probe_layers(pipe, frames=d["frames"], height=d["height"], width=d["width"],
                                              text_tokens=pipe.tokenizer.model_max_length)}
    assert kinds == {"spatial", "cross", "temporal"}


def test_tokenizer_makes_grammar_words_single_tokens(demo):
    from capture.models import world as W

    tok = demo[0].tokenizer
    for w in W.vocabulary():
        ids = tok(w, add_special_tokens=False).input_ids
        assert len(ids) == 1, (w, ids)


def test_demo_command_captures_the_demo_model(tmp_path, capsys):
    """The README's main job: `attnlens demo` (the dashboard it then serves is tested elsewhere)."""
    from capture.catalog import Catalog
    from capture.cli import main

    assert main(["demo", "--root", str(tmp_path)]) == 0
    runs = Catalog(tmp_path).runs()
    assert len(runs) == 7 and set(runs["state"]) == {"complete"} and set(runs["model"]) == {"demo"}
    assert (runs["perturbation"] != "").sum() == 1
    out = capsys.readouterr().out
    assert "attnlens dashboard --root" in out
