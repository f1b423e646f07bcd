"""The demo-model training script: runs end to end, and resuming gives the same weights."""

import numpy as np
import pytest
import torch

from capture.models.demo_train import DemoConfig, train

pytestmark = pytest.mark.slow

SMALL = DemoConfig(vae_channels=(16, 16, 16), unet_channels=(16, 32), text_dim=32, heads=2, motion_heads=2)


class _Quiet:
    def __init__(self, **kw):
        pass

    def update(self, n):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


def test_training_resumes_bit_identically(tmp_path):
    kw = dict(cfg=SMALL, vae_steps=3, unet_steps=3, decoder_steps=2, batch=4, save_every=1, bar_factory=_Quiet)
    straight = train(tmp_path / "a", **kw)
    assert train(tmp_path / "b", stop_after=2, **kw) is None  # interrupted inside the VAE stage
    assert train(tmp_path / "b", stop_after=2, **kw) is None  # ... and again inside the UNet stage
    assert train(tmp_path / "b", stop_after=3, **kw) is None  # ... and inside the decoder stage
    resumed = train(tmp_path / "b", **kw)
    for (name, p1), (_, p2) in zip(straight.unet.named_parameters(), resumed.unet.named_parameters()):
        assert torch.equal(p1, p2), name
    for (name, p1), (_, p2) in zip(straight.vae.named_parameters(), resumed.vae.named_parameters()):
        assert torch.equal(p1, p2), name
    for (name, p1), (_, p2) in zip(straight.text_encoder.named_parameters(), resumed.text_encoder.named_parameters()):
        assert torch.equal(p1, p2), name
    log = (tmp_path / "b" / "loss.csv").read_text().splitlines()
    assert log[0] == "stage,step,loss,seconds" and len(log) == 1 + 8
    frames = resumed("a small red circle moving left on a plain background", num_frames=8, height=32, width=32,
                     num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 8, 32, 32, 3) and np.isfinite(frames).all()
    assert (tmp_path / "b" / "pipeline" / "model_index.json").is_file()


def test_fidelity_metrics_end_to_end_on_generated_clips(tmp_path):
    from capture.models.demo_eval import DEFAULT_CLASSIFIER, evaluate
    from capture.models.world_classifier import ClipClassifier

    pipe = train(tmp_path / "m", cfg=SMALL, vae_steps=2, unet_steps=2, decoder_steps=1, batch=4, save_every=10,
                 bar_factory=_Quiet)
    pipe.set_progress_bar_config(disable=True)
    rep = evaluate(pipe, ClipClassifier.load(DEFAULT_CLASSIFIER), clips=4, steps=2, random_pipe=pipe)
    assert set(rep["accuracy"]) == {"colour", "shape", "motion"}
    assert all(0.0 <= v <= 1.0 for v in rep["accuracy"].values())
    fd = rep["frechet"]
    assert fd["real_vs_real"] >= 0 and fd["generated_vs_real"] > fd["real_vs_real"]  # noise is far from real clips
    assert fd["random_weights_vs_real"] == pytest.approx(fd["generated_vs_real"])  # same pipe, same seeds


def test_frozen_text_encoder_and_reused_vae(tmp_path):
    """--freeze-text-encoder keeps the seeded random encoder; --reuse-vae skips both VAE stages and
    ships that VAE unchanged, while the denoiser still trains."""
    from capture.models.demo_train import build_components

    kw = dict(cfg=SMALL, vae_steps=2, unet_steps=2, decoder_steps=1, batch=4, save_every=10, bar_factory=_Quiet)
    first = train(tmp_path / "a", **kw)
    first.vae.save_pretrained(tmp_path / "vae")
    pipe = train(tmp_path / "b", freeze_text=True, reuse_vae=tmp_path / "vae", **kw)
    _, unet0, _, te0, _, _ = build_components(SMALL, 0)
    for (name, p), (_, p0) in zip(pipe.text_encoder.named_parameters(), te0.named_parameters()):
        assert torch.equal(p.half().float(), p0.half().float()), name  # shipped in float16
    for (name, p), (_, p0) in zip(pipe.vae.named_parameters(), first.vae.named_parameters()):
        assert torch.equal(p, p0), name
    assert not all(torch.equal(p.half().float(), p0.half().float())
                   for p, p0 in zip(pipe.unet.parameters(), unet0.parameters()))
    stages = {line.split(",")[0] for line in (tmp_path / "b" / "loss.csv").read_text().splitlines()[1:]}
    assert stages == {"unet"}
