"""The demo world: determinism, the fixed split, the prompt grammar, motion that matches words."""

import numpy as np
import pytest

from capture.models import world as W


def test_render_is_deterministic_and_seed_dependent():
    spec = W.parse_prompt("a small red circle moving left on a striped background")
    a = W.render(spec, seed=3)
    assert a.shape == (8, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, W.render(spec, seed=3))
    assert not np.array_equal(a, W.render(spec, seed=4))
    assert W.render(spec, seed=3, frames=12, size=48).shape == (12, 48, 48, 3)


def test_split_is_fixed_and_compositional():
    objs = W.all_objects()
    held = [o for o in objs if W.held_out(o)]
    assert 0.15 < len(held) / len(objs) < 0.25
    train = [o for o in objs if not W.held_out(o)]
    for attr, values in (("colour", W.COLOURS), ("shape", W.SHAPES), ("motion", W.MOTIONS)):
        assert {getattr(o, attr) for o in train} == set(values)
    rng = np.random.default_rng(0)
    assert all(not W.held_out(W.sample_spec(rng, "train").main) for _ in range(200))
    assert all(W.held_out(W.sample_spec(rng, "heldout").main) for _ in range(200))
    with pytest.raises(ValueError):
        W.sample_spec(rng, "test")


def test_prompt_grammar_round_trips():
    rng = np.random.default_rng(1)
    for _ in range(100):
        spec = W.sample_spec(rng, "train", two_objects_p=0.5)
        assert W.parse_prompt(spec.prompt) == spec
    with pytest.raises(ValueError):
        W.parse_prompt("a photo of a cat")
    with pytest.raises(ValueError):
        W.parse_prompt("a small mauve circle moving left on a plain background")


@pytest.mark.parametrize("motion", W.MOTIONS)
@pytest.mark.parametrize("shape", W.SHAPES)
def test_the_shape_moves_as_the_prompt_says(motion, shape):
    spec = W.ClipSpec((W.Obj("red", shape, motion, "small"),), "plain")
    clip = W.render(spec, seed=7).astype(int)
    red = (clip[..., 0] > 200) & (clip[..., 1] < 80)  # (F, H, W)
    assert red.sum(axis=(1, 2)).min() > 10  # visible in every frame, never clipped away
    ys, xs = [], []
    for f in range(clip.shape[0]):
        y, x = np.nonzero(red[f])
        ys.append(y.mean())
        xs.append(x.mean())
    dy, dx = ys[-1] - ys[0], xs[-1] - xs[0]
    expected = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0), "still": (0, 0)}[motion]
    for got, want in ((dy, expected[0]), (dx, expected[1])):
        if want == 0:
            assert abs(got) < 0.5
        else:
            assert np.sign(got) == want and abs(got) > 5
