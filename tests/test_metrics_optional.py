"""The optional metric tier: unavailable without weights (saying where it looked), and with tiny
locally saved models, each metric against an explicit computation."""

import numpy as np
import pandas as pd
import pytest
import torch

from capture import metrics_optional as MO
from capture.catalog import Catalog

PROMPT = "a red circle moving left"


def _video(rng, frames=4, size=24):
    return rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A weights directory with tiny random CLIP, ViT (as DINO), aesthetic head and LPIPS."""
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTModel

    from capture.models.tokenizer import word_clip_tokenizer

    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    tok = word_clip_tokenizer(PROMPT.split() + ["blue", "square"], 16)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=16, bos_token_id=512,
                                      eos_token_id=513, pad_token_id=513),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=8), projection_dim=16)
    clip = CLIPModel(cfg).eval()
    for p in (d / "clip", d / "aesthetic" / "clip"):
        clip.save_pretrained(p)
        tok.save_pretrained(p)
    save_file({"layers.0.weight": torch.randn(8, 16), "layers.0.bias": torch.randn(8),
               "layers.1.weight": torch.randn(1, 8), "layers.1.bias": torch.randn(1)},
              str(d / "aesthetic" / "head.safetensors"))
    ViTModel(ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       image_size=32, patch_size=8), add_pooling_layer=False).eval().save_pretrained(d / "dino")

    class TinyLPIPS(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x, y):
            return ((self.conv(x) - self.conv(y)) ** 2).mean(dim=(1, 2, 3), keepdim=True)

    (d / "lpips").mkdir()
    torch.jit.script(TinyLPIPS().eval()).save(str(d / "lpips" / "lpips.pt"))
    return d


def test_without_weights_every_metric_is_unavailable_and_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv(MO.ENV, raising=False)
    rng = np.random.default_rng(0)
    results, report = MO.compute(_video(rng), prompt=PROMPT, baseline=_video(rng))
    assert results == {}
    assert [a.metric for a in report] == list(MO.METRICS) and not any(a.available for a in report)
    assert all(MO.ENV in a.reason for a in report)
    results, report = MO.compute(_video(rng), prompt=PROMPT, root=tmp_path)
    assert results == {}
    reasons = {a.metric: a.reason for a in report}
    assert reasons["clip_score"] == f"missing {tmp_path / 'clip' / 'config.json'}"
    assert reasons["lpips"] == f"missing {tmp_path / 'lpips' / 'lpips.pt'}"


def _embed_image(model, video):
    x = MO._pixels(video, 32, MO.CLIP_MEAN, MO.CLIP_STD)
    with torch.no_grad():
        e = model.visual_projection(model.vision_model(pixel_values=x).pooler_output)
    return e / e.norm(dim=-1, keepdim=True)


def test_clip_score_matches_an_explicit_computation(weights):
    from transformers import CLIPModel

    rng = np.random.default_rng(1)
    video = _video(rng)
    got = MO.clip_score(video, PROMPT, weights / "clip")
    model = CLIPModel.from_pretrained(weights / "clip").eval()
    tok = MO._clip(weights / "clip")[1]
    ids = tok([PROMPT], padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        t = model.text_projection(model.text_model(input_ids=ids.input_ids,
                                                   attention_mask=ids.attention_mask).pooler_output)
    t = t / t.norm(dim=-1, keepdim=True)
    img = _embed_image(model, video)
    want = [100 * max(float(img[i] @ t[0]), 0.0) for i in range(len(video))]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert got.shape == (4,)


def test_dino_consistency_matches_an_explicit_loop(weights):
    from transformers import ViTModel

    rng = np.random.default_rng(2)
    video = _video(rng, frames=5)
    got = MO.dino_consistency(video, weights / "dino")
    model = ViTModel.from_pretrained(weights / "dino").eval()
    with torch.no_grad():
        cls = [model(pixel_values=MO._pixels(video[i : i + 1], 32, MO.IMAGENET_MEAN, MO.IMAGENET_STD))
               .last_hidden_state[0, 0] for i in range(5)]
    cos = torch.nn.functional.cosine_similarity
    want = [float((cos(cls[i], cls[0], dim=0) + cos(cls[i], cls[i - 1], dim=0)) / 2) for i in range(1, 5)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_aesthetic_is_the_linear_head_on_the_normalised_embedding(weights):
    from safetensors.torch import load_file
    from transformers import CLIPModel

    rng = np.random.default_rng(3)
    video = _video(rng)
    got = MO.aesthetic(video, weights / "aesthetic")
    h = load_file(str(weights / "aesthetic" / "head.safetensors"))
    x = _embed_image(CLIPModel.from_pretrained(weights / "aesthetic" / "clip").eval(), video)
    want = ((x @ h["layers.0.weight"].T + h["layers.0.bias"]) @ h["layers.1.weight"].T + h["layers.1.bias"])[:, 0]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


def test_lpips_runs_the_saved_module_per_frame(weights):
    rng = np.random.default_rng(4)
    a, b = _video(rng), _video(rng)
    got = MO.lpips(a, b, weights / "lpips")
    net = torch.jit.load(str(weights / "lpips" / "lpips.pt"))
    for i in range(len(a)):
        x = torch.from_numpy(a[i : i + 1]).float().div(127.5).sub(1).permute(0, 3, 1, 2)
        y = torch.from_numpy(b[i : i + 1]).float().div(127.5).sub(1).permute(0, 3, 1, 2)
        with torch.no_grad():
            assert got[i] == pytest.approx(float(net(x, y)), rel=1e-5)
    assert MO.lpips(a, a, weights / "lpips") == pytest.approx(np.zeros(len(a)))


def test_measured_runs_land_in_the_catalog(weights, tmp_path, monkeypatch):
    from capture.synthetic import animatediff_like_layers, write_run

    monkeypatch.setenv(MO.ENV, str(weights))
    rng = np.random.default_rng(5)
    layers = animatediff_like_layers(n_down=1, heads=2, frames=4, grid=4, latent=8, cross=False)
    ids = [write_run(tmp_path, rng, layers=layers, steps=2, frames=4, maps=False, video_size=24,
                     attrs={"prompt": PROMPT}) for _ in range(2)]
    from capture.store import run_dir

    report = MO.measure_run(run_dir(tmp_path, ids[1]), run_dir(tmp_path, ids[0]))
    assert all(a.available for a in report), [a.line() for a in report]
    m = Catalog(tmp_path).query("SELECT metric, baseline FROM metrics WHERE frame IS NULL ORDER BY metric")
    assert list(m["metric"]) == ["aesthetic_mean", "clip_score_mean", "dino_consistency_mean", "lpips_mean"]
    assert list(m["baseline"]) == ["", "", "", ids[0]]
    # without a baseline, lpips says why it did not run and the others still do
    report = {a.metric: a for a in MO.measure_run(run_dir(tmp_path, ids[0]))}
    assert not report["lpips"].available and "baseline" in report["lpips"].reason
    assert report["clip_score"].available
    assert isinstance(MO.to_rows({"lpips": np.array([0.1, 0.2])}, "b"), pd.DataFrame)


def test_cli_reports_unavailable_metrics_and_stores_available_ones(weights, tmp_path, monkeypatch, capsys):
    from capture.cli import main
    from capture.synthetic import animatediff_like_layers, write_run

    monkeypatch.delenv(MO.ENV, raising=False)
    rng = np.random.default_rng(6)
    layers = animatediff_like_layers(n_down=1, heads=2, frames=4, grid=4, latent=8, cross=False)
    rid = write_run(tmp_path, rng, layers=layers, steps=2, frames=4, maps=False, video_size=24,
                    attrs={"prompt": PROMPT})
    assert main(["metrics", rid, "--root", str(tmp_path), "--optional"]) == 0
    out = capsys.readouterr()
    assert "clip_score: unavailable (no weights directory" in out.err and "temporal_flicker=" in out.out
    assert main(["metrics", rid, "--root", str(tmp_path), "--optional", "--metric-weights", str(weights)]) == 0
    out = capsys.readouterr()
    assert "clip_score_mean=" in out.out and "lpips: unavailable (needs a paired baseline run)" in out.err
