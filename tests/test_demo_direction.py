"""The direction probe: swapped prompts, implied x0 for each prediction type, the Monte Carlo
conditional mean and the gap, each against an explicit computation."""

import numpy as np
import pytest
import torch

from capture.models import demo_direction as D
from capture.models import world as W
from capture.models.presets import load_pipeline


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("demo")[0]


def test_swap_direction_changes_only_the_direction_word():
    spec = W.ClipSpec((W.Obj("red", "circle", "left", "large"), W.Obj("blue", "square", "still")), "striped")
    swapped = D.swap_direction(spec)
    assert swapped.prompt == ("a large red circle moving right and a small blue square standing still "
                              "on a striped background")
    assert D.swap_direction(swapped) == spec
    specs = D.moving_specs(np.random.default_rng(0), 20)
    assert all(s.main.motion != "still" and len(s.objects) == 1 and not W.held_out(s.main) for s in specs)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_implied_x0_inverts_each_parametrisation(kind):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, prediction_type=kind)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, 5, 5, generator=g), torch.randn(2, 4, 3, 5, 5, generator=g)
    t = 730
    a = float(sched.alphas_cumprod[t])
    x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
    out = {"epsilon": eps, "v_prediction": np.sqrt(a) * eps - np.sqrt(1 - a) * x0, "sample": x0}[kind]
    torch.testing.assert_close(D.implied_x0(sched, x_t, t, out), x0, atol=2e-4, rtol=1e-4)


def test_conditional_mean_is_the_mean_of_encoded_renders(pipe):
    spec = W.ClipSpec((W.Obj("green", "triangle", "up"),), "plain")
    got = D.conditional_mean(pipe.vae, spec, np.random.default_rng(3), renders=4)
    seeds = np.random.default_rng(3).integers(0, 2**31, 4)
    frames = torch.stack([torch.from_numpy(W.render(spec, int(s))) for s in seeds]).float() / 127.5 - 1
    with torch.no_grad():
        lat = [pipe.vae.encode(f.permute(0, 3, 1, 2)).latent_dist.mean * pipe.vae.config.scaling_factor for f in frames]
    want = torch.stack(lat).mean(0).permute(1, 0, 2, 3)  # (F, C, h, w) -> (C, F, h, w)
    assert got.shape == (4, 8, 8, 8)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_direction_gap_matches_a_hand_computation(pipe):
    rows = D.direction_gap(pipe, clips=3, timesteps=(900,), seed=5, oracle=False)
    assert len(rows) == 1 and rows[0]["t"] == 900
    rng = np.random.default_rng(5)
    specs = D.moving_specs(rng, 3)
    real = np.stack([W.render(s, int(rng.integers(2**31))) for s in specs])
    z0 = D.encode_clips(pipe.vae, real)
    noise = torch.from_numpy(rng.standard_normal(z0.shape).astype(np.float32))
    a = pipe.scheduler.alphas_cumprod[900]
    x_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
    mse = []
    for prompts in ([s.prompt for s in specs], [D.swap_direction(s).prompt for s in specs]):
        ids = pipe.tokenizer(prompts, padding="max_length", max_length=32, return_tensors="pt").input_ids
        with torch.no_grad():
            eps = pipe.unet(x_t, 900, encoder_hidden_states=pipe.text_encoder(ids)[0].repeat_interleave(8, 0)).sample
        mse.append(float((((x_t - (1 - a).sqrt() * eps) / a.sqrt() - z0) ** 2).mean()))
    assert rows[0]["mse_own"] == pytest.approx(mse[0], rel=1e-4)
    assert rows[0]["mse_swapped"] == pytest.approx(mse[1], rel=1e-4)
    assert rows[0]["gap"] == pytest.approx((mse[1] - mse[0]) / mse[0], rel=1e-3, abs=1e-6)


def test_fit_two_prompts_runs_on_a_copy_and_reports_the_floor(pipe):
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    curve = D.fit_two_prompts(pipe, steps=2, renders=2, every=1)
    assert [r["step"] for r in curve] == [0, 1, 2]
    assert all(np.isfinite([r["mse_own"], r["mse_swapped"]]).all() for r in curve)
    assert curve[0]["floor"] > 0
    after = pipe.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the shipped weights are untouched


def test_resample_from_the_last_step_keeps_the_real_clips_direction(pipe):
    from capture.models.demo_eval import DEFAULT_CLASSIFIER
    from capture.models.world_classifier import ClipClassifier

    # from the last of 5 steps (t = 1) the sample is the VAE round trip of the real clip, whatever the
    # prompt says, so the classifier reads the clip's own direction; starting at step 0 runs all 5 steps
    rows = D.resample_from_step(pipe, ClipClassifier.load(DEFAULT_CLASSIFIER), clips=4, starts=(4, 0), steps=5)
    assert [r["start"] for r in rows] == [4, 0] and rows[0]["t"] < rows[1]["t"]
    assert rows[0]["own_keeps_clip"] == 1.0 and rows[0]["reversed_keeps_clip"] == 1.0
    assert rows[0]["reversed_follows_prompt"] == 0.0
    assert all(0.0 <= r[k] <= 1.0 for r in rows for k in r if k not in ("start", "t"))


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert D.main(["--pipeline", str(tmp_path / "missing")]) == 2
    assert D.main(["--clips", "0"]) == 2
    (tmp_path / "model_index.json").write_text("{not json")
    assert D.main(["--pipeline", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err), err
