"""Weight-free metrics against scikit-image and explicit formulas on random frames."""

import numpy as np
import pytest

from capture import metrics as M

skm = pytest.importorskip("skimage.metrics")


def _videos(seed, frames=4, h=24, w=20, c=3):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (frames, h, w, c), dtype=np.uint8)
    noise = rng.normal(0, 25, a.shape)
    b = np.clip(a + noise, 0, 255).astype(np.uint8)
    return a, b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_psnr_matches_skimage(seed):
    a, b = _videos(seed)
    got = M.psnr(b, a)
    ref = [skm.peak_signal_noise_ratio(a[f], b[f], data_range=255) for f in range(len(a))]
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    assert np.isinf(M.psnr(a, a)).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_skimage(seed, channels):
    a, b = _videos(seed, c=channels)
    got = M.ssim(b, a)
    ref = [skm.structural_similarity(a[f], b[f], data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False) for f in range(len(a))]
    np.testing.assert_allclose(got, ref, rtol=1e-9)
    np.testing.assert_allclose(M.ssim(a, a), 1.0)


def test_float_frames_need_a_range():
    a, b = _videos(3)
    with pytest.raises(ValueError, match="data_range"):
        M.psnr(a / 255.0, b / 255.0)
    np.testing.assert_allclose(M.psnr(a / 255.0, b / 255.0, data_range=1.0), M.psnr(a, b), rtol=1e-10)


def test_temporal_metrics_by_hand():
    a, _ = _videos(4, frames=5)
    mae = [np.abs(a[i + 1].astype(float) - a[i].astype(float)).mean() for i in range(4)]
    assert M.temporal_flicker(a) == pytest.approx((255 - np.mean(mae)) / 255)
    np.testing.assert_allclose(M.motion_amount(a), np.array(mae) / 255)
    still = np.repeat(a[:1], 5, axis=0)
    assert M.temporal_flicker(still) == 1.0 and not M.motion_amount(still).any()


def test_sharpness_is_laplacian_variance():
    a, _ = _videos(5, frames=2)
    y = a.astype(float) / 255 @ np.array([0.299, 0.587, 0.114])
    for f in range(2):
        lap = np.zeros((y.shape[1] - 2, y.shape[2] - 2))
        for i in range(1, y.shape[1] - 1):
            for j in range(1, y.shape[2] - 1):
                lap[i - 1, j - 1] = y[f, i - 1, j] + y[f, i + 1, j] + y[f, i, j - 1] + y[f, i, j + 1] - 4 * y[f, i, j]
        assert M.sharpness(a)[f] == pytest.approx(lap.var())
    blurred = ((a[:, :-1].astype(float) + a[:, 1:]) / 2).astype(np.uint8)
    assert (M.sharpness(blurred) < M.sharpness(a[:, :-1])).all()


def test_weight_free_bundle():
    a, b = _videos(6)
    out = M.weight_free(b, baseline=a)
    assert set(out) == {"temporal_flicker", "motion_amount", "motion_amount_mean", "sharpness", "sharpness_mean",
                        "psnr", "psnr_mean", "ssim", "ssim_mean"}
    assert out["ssim_mean"] == pytest.approx(np.mean(M.ssim(b, a)))
    assert "psnr" not in M.weight_free(a)
    with pytest.raises(ValueError, match="differ in shape"):
        M.psnr(a, b[:2])


def test_metrics_stored_per_run_and_joinable_in_sql(tmp_path):
    from capture import synthetic as S
    from capture.catalog import Catalog
    from capture.cli import main
    from capture.store import run_dir

    rng = np.random.default_rng(0)
    layers = S.animatediff_like_layers(n_down=1, heads=2, frames=4, grid=4, latent=8)
    a = S.write_run(tmp_path, rng, layers=layers, steps=2, frames=4, grid=4, maps=False)
    b = S.write_run(tmp_path, rng, layers=layers, steps=2, frames=4, grid=4, maps=False)
    assert main(["metrics", "--root", str(tmp_path), b, "--baseline", a]) == 0
    assert main(["metrics", "--root", str(tmp_path), b, "--baseline", a]) == 0  # again: replaced, not doubled
    assert main(["metrics", "--root", str(tmp_path), a]) == 0
    cat = Catalog(tmp_path)
    df = cat.query("SELECT * FROM metrics ORDER BY run, metric, frame")
    va, vb = M.run_video(run_dir(tmp_path, a)), M.run_video(run_dir(tmp_path, b))
    ssim_rows = df[(df.run == b) & (df.metric == "ssim")]
    assert list(ssim_rows["frame"]) == [0, 1, 2, 3] and set(ssim_rows["baseline"]) == {a}
    np.testing.assert_allclose(ssim_rows["value"], M.ssim(vb, va))
    assert len(df[(df.run == b) & (df.metric == "ssim_mean")]) == 1
    assert not len(df[(df.run == a) & df.metric.str.startswith("psnr")])
    joined = cat.query("SELECT m.value, avg(s.entropy_norm) AS h FROM metrics m JOIN stats s USING (run) "
                       "WHERE m.metric = 'temporal_flicker' GROUP BY m.run, m.value")
    assert len(joined) == 2
    assert main(["metrics", "--root", str(tmp_path), "nope"]) == 2
