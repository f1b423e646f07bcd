"""Several videos in one batched call, each a run of its own (``split_videos``): statistics and
videos equal to running them one by one; per-video perturbations; maps taken from another video."""

import numpy as np
import pytest
import torch

from capture.store import open_run
from capture.tracer import trace

from .conftest import ANIM_CALL

P0, P1 = "a red circle moving left", "a blue square moving up"
STATS = ("entropy", "entropy_norm", "energy", "value_energy")


def _one(pipe, root, prompt, seed, perturb=()):
    with trace(pipe, root=root, perturb=perturb) as tr:
        out = pipe(prompt, generator=torch.Generator().manual_seed(seed), **ANIM_CALL).frames
    return tr.run_dirs[-1], out[0]


def _batched(pipe, root, prompts, seeds, perturb=()):
    with trace(pipe, root=root, perturb=perturb, split_videos=True) as tr:
        out = pipe(prompts, generator=[torch.Generator().manual_seed(s) for s in seeds], **ANIM_CALL).frames
    return tr.run_dirs[-len(prompts):], out


def _same_run(a, b, atol):
    da, db = open_run(a), open_run(b)
    for name in STATS:
        np.testing.assert_allclose(da[name].values, db[name].values, rtol=1e-4, atol=atol, err_msg=name)
    np.testing.assert_array_equal(da["perturbed"].values, db["perturbed"].values)
    assert da.attrs["prompt"] == db.attrs["prompt"] and da.attrs["seed"] == db.attrs["seed"]
    assert [p["spec"] for p in da.attrs["perturbation"]] == [p["spec"] for p in db.attrs["perturbation"]]
    assert np.abs(da["video"].values.astype(int) - db["video"].values).max() <= 1


def test_two_prompts_in_one_call_equal_two_calls(anim_pipe, root):
    dirs, frames = _batched(anim_pipe, root, [P0, P1], [5, 6])
    for d, (p, s), f in zip(dirs, [(P0, 5), (P1, 6)], frames):
        one, ref = _one(anim_pipe, root, p, s)
        _same_run(d, one, atol=1e-4)
        np.testing.assert_allclose(f, ref, atol=1e-4)
        assert open_run(d).attrs["batch"]["videos"] == 2


def test_batched_perturbation_variants_equal_one_by_one(anim_pipe, root):
    """Variants of one prompt and seed: video 0 plain, 1 with I, 2 with U on other layers."""
    specs = ["I@kind=temporal:video=1", "U@down_blocks.0.*attn1:steps=1-2:branch=cond:video=2"]
    dirs, _ = _batched(anim_pipe, root, [P0] * 3, [4] * 3, specs)
    for d, variant in zip(dirs, [[], [specs[0].replace(":video=1", "")], [specs[1].replace(":video=2", "")]]):
        one, _ = _one(anim_pipe, root, P0, 4, variant)
        da, db = open_run(d), open_run(one)
        for name in STATS:
            np.testing.assert_allclose(da[name].values, db[name].values, rtol=1e-4, atol=1e-4, err_msg=name)
        np.testing.assert_array_equal(da["perturbed"].values, db["perturbed"].values)
        assert np.abs(da["video"].values.astype(int) - db["video"].values).max() <= 1
    flags = [open_run(d)["perturbed"].values.any() for d in dirs]
    assert flags == [False, True, True]


def test_map_injection_with_identical_prompts_reproduces_the_source(anim_pipe, root):
    """Same prompt, two different seeds: with every self-attention map injected from video 0 the
    target differs from its own plain generation; with no injection it equals it."""
    dirs, frames = _batched(anim_pipe, root, [P0, P0], [1, 1], ["M=0@self"])
    np.testing.assert_allclose(frames[0], frames[1], atol=1e-5)  # identical inputs: injection is a no-op
    dirs, frames = _batched(anim_pipe, root, [P0, P1], [1, 1], ["M=0@self"])
    _, plain1 = _one(anim_pipe, root, P1, 1)
    assert np.abs(frames[1] - plain1).max() > 1e-3
    assert open_run(dirs[1])["perturbed"].values.any() and not open_run(dirs[0])["perturbed"].values.any()


def test_map_injection_needs_two_videos(anim_pipe, root):
    from capture.perturb import PerturbSpecError

    with pytest.raises(PerturbSpecError, match="several videos"):
        _one(anim_pipe, root, P0, 0, ["M=0@self"])
