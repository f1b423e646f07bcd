"""Demo-world classifier utilities: Fréchet distance against a closed form, weights round trip."""

import numpy as np
import torch

from capture.models import world as W
from capture.models.world_classifier import HEADS, ClipClassifier, frechet_distance, labelled_batch


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    sa, sb = np.array([1.0, 2.0, 0.5]), np.array([0.5, 1.5, 2.0])
    a = rng.normal([0, 1, 2], sa, size=(200_000, 3))
    b = rng.normal([1, 1, 0], sb, size=(200_000, 3))
    # for diagonal covariances: |mu1-mu2|^2 + sum (s1 - s2)^2 with s the standard deviations
    ref = (1 + 0 + 4) + ((sa - sb) ** 2).sum()
    assert abs(frechet_distance(a, b) - ref) < 0.05
    assert abs(frechet_distance(a, a)) < 1e-6


def test_frechet_distance_with_correlated_random_covariances():
    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    a = rng.normal(size=(100_000, 4)) @ A.T
    b = rng.normal(size=(100_000, 4)) @ B.T + 0.5
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # reference: tr(sqrtm(S1 S2)) via the eigenvalues of S1 S2 (real, non-negative)
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert abs(frechet_distance(a, b) - ref) < 1e-6 * max(1.0, ref)


def test_classifier_shapes_and_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ClipClassifier().eval()
    clips, labels = labelled_batch(np.random.default_rng(2), 3)
    out = model(clips)
    assert {k: v.shape for k, v in out.items()} == {k: (3, len(v)) for k, v in HEADS.items()}
    assert model.features(clips).shape == (3, 64)
    model.save(tmp_path)
    again = ClipClassifier.load(tmp_path)
    for k in HEADS:
        torch.testing.assert_close(again(clips)[k], out[k])
    pred = again.predict(clips)
    assert set(pred) == set(HEADS) and all(len(v) == 3 for v in pred.values())
    assert set(pred["colour"]) <= set(W.COLOURS)


def test_shipped_classifier_reads_real_clips():
    from pathlib import Path

    from capture.models.world_classifier import accuracy

    model = ClipClassifier.load(Path(__file__).resolve().parent.parent / "data" / "demo" / "classifier")
    rng = np.random.default_rng(777)  # clips the training never rendered
    for split in ("train", "heldout"):
        specs = [W.sample_spec(rng, split) for _ in range(100)]
        clips = np.stack([W.render(s, int(rng.integers(2**31))) for s in specs])
        acc = accuracy(model, clips, specs)
        assert min(acc.values()) >= 0.95, (split, acc)


def test_frechet_distance_of_a_single_sample_is_nan_not_an_error():
    rng = np.random.default_rng(1)
    assert np.isnan(frechet_distance(rng.normal(size=(1, 8)), rng.normal(size=(5, 8))))
    assert np.isfinite(frechet_distance(rng.normal(size=(2, 8)), rng.normal(size=(5, 8))))
