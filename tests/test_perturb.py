"""I / U / temperature outputs against explicit attention matrices; spec parsing."""

import pytest
import torch
import torch.nn.functional as F

from capture.perturb import (
    PerturbSpec,
    PerturbSpecError,
    identity_output,
    parse_steps,
    perturbed_output,
    uniform_output,
)


def qkv(seed, B=2, H=3, N=7, D=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, N, D, generator=g), torch.randn(B, H, N, D, generator=g),
            torch.randn(B, H, N, D + 2, generator=g))


def test_identity_equals_identity_matrix_product():
    q, k, v = qkv(0)
    eye = torch.eye(7).expand(2, 3, 7, 7)
    torch.testing.assert_close(identity_output(v, 7), eye @ v)


def test_identity_rejects_cross_attention():
    _, _, v = qkv(1)
    with pytest.raises(PerturbSpecError, match="same tokens"):
        identity_output(v, 4)


def test_uniform_equals_uniform_matrix_product():
    q, k, v = qkv(2)
    u = torch.full((7, 7), 1 / 7)
    torch.testing.assert_close(uniform_output(v, 7, None), u @ v)


@pytest.mark.parametrize("as_bool", [True, False])
def test_uniform_over_allowed_keys_only(as_bool):
    q, k, v = qkv(3)
    g = torch.Generator().manual_seed(4)
    allowed = torch.rand(2, 1, 7, 7, generator=g) > 0.5
    allowed[..., 0] = True
    mask = allowed if as_bool else torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    w = allowed.double() / allowed.double().sum(-1, keepdim=True)
    torch.testing.assert_close(uniform_output(v, 7, mask).double(), w @ v.double())


def test_uniform_is_sdpa_with_equal_logits():
    q, k, v = qkv(5)
    ref = F.scaled_dot_product_attention(torch.zeros_like(q), k, v)
    torch.testing.assert_close(uniform_output(v, 7, None), ref)


def test_temperature_scales_logits():
    q, k, v = qkv(6)
    spec = PerturbSpec.parse("T=0.25@x")
    out = perturbed_output(spec, F.scaled_dot_product_attention, q, k, v, None, 5**-0.5, None, 0)
    a = torch.softmax((q @ k.transpose(-1, -2)) * 5**-0.5 * 0.25, -1)
    torch.testing.assert_close(out, a @ v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["I", "U"])
def test_joint_layers_keep_text_rows_and_keys(kind):
    T = 3
    q, k, v = qkv(7, N=11)
    orig = F.scaled_dot_product_attention(q, k, v)
    spec = PerturbSpec.parse(f"{kind}@x")
    out = perturbed_output(spec, F.scaled_dot_product_attention, q, k, v, None, 5**-0.5, orig, T)
    torch.testing.assert_close(out[..., :T, :], orig[..., :T, :])
    if kind == "I":
        torch.testing.assert_close(out[..., T:, :], v[..., T:, :])
    else:
        u = torch.full((8, 8), 1 / 8)
        torch.testing.assert_close(out[..., T:, :], (u @ v[..., T:, :]).expand_as(out[..., T:, :]))
    # text=1 perturbs the whole sequence
    spec_all = PerturbSpec.parse(f"{kind}@x:text=1")
    out_all = perturbed_output(spec_all, F.scaled_dot_product_attention, q, k, v, None, 5**-0.5, orig, T)
    ref = v if kind == "I" else torch.full((11, 11), 1 / 11) @ v
    torch.testing.assert_close(out_all, ref)


def test_spec_round_trip_and_options():
    s = PerturbSpec.parse("U@down_blocks.*attn1:steps=0-10:branch=cond")
    assert (s.kind, s.layers, s.steps, s.branch) == ("U", "down_blocks.*attn1", (0, 10), "cond")
    assert PerturbSpec.parse(str(s)) == s
    t = PerturbSpec.parse("T=0.5@kind=temporal")
    assert t.factor == 0.5 and t.layers == "kind=temporal"
    assert s.active(0) and s.active(10) and not s.active(11)


@pytest.mark.parametrize(
    "bad",
    ["X@a", "I", "T@a", "I=3@a", "U@a:steps=5-2", "U@a:steps=x", "U@a:branch=both", "U@a:colour=red", "T=-1@a"],
)
def test_bad_specs_are_one_line_errors(bad):
    with pytest.raises(PerturbSpecError) as e:
        PerturbSpec.parse(bad)
    assert "\n" not in str(e.value)


def test_step_windows():
    assert parse_steps("3") == (3, 3)
    assert parse_steps("0-10") == (0, 10)
    with pytest.raises(PerturbSpecError):
        parse_steps("10-3")
    with pytest.raises(PerturbSpecError):
        parse_steps("30-40", n_steps=25)


def test_map_of_another_video_equals_explicit_product():
    """M=0: each item uses the source item's softmax(q kᵀ) with its own values."""
    q, k, v = qkv(7, B=4)  # items: (video 0, video 1) x 2 branches, one item per video
    src = torch.tensor([0, 0, 2, 2])
    spec = PerturbSpec.parse("M=0@x")
    out = perturbed_output(spec, F.scaled_dot_product_attention, q, k, v, None, 0.4, None, 0, src)
    a = torch.softmax(q @ k.transpose(-1, -2) * 0.4, dim=-1)  # (B,H,N,N)
    torch.testing.assert_close(out, a[src] @ v)
    assert spec.applies_to(1) and not spec.applies_to(0)
    assert str(spec) == "M=0@x" and PerturbSpec.parse("I@x:video=2").video == 2
    with pytest.raises(PerturbSpecError, match="source video"):
        PerturbSpec.parse("M@x")
