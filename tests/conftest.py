"""Shared fixtures. No network: every model is built from a config or saved locally."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _keep_main_module():
    """streamlit's AppTest runs scripts as sys.modules['__main__'] and leaves them there; a later
    multiprocessing 'spawn' child would then re-run the dashboard script as its main module."""
    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main

ANIM_CALL = dict(num_frames=8, height=64, width=64, num_inference_steps=3, output_type="np", guidance_scale=7.5)
COG_CALL = dict(num_frames=9, height=64, width=64, num_inference_steps=3, output_type="np", guidance_scale=6.0,
                max_sequence_length=32)

WAN_CALL = dict(num_frames=9, height=64, width=64, num_inference_steps=3, output_type="np", guidance_scale=5.0,
                max_sequence_length=64)


@pytest.fixture(scope="module")
def wan_pipe():
    from capture.models.tiny import tiny_wan

    return tiny_wan(0)


@pytest.fixture(scope="module")
def anim_pipe():
    from capture.models.tiny import tiny_animatediff

    return tiny_animatediff(0)


@pytest.fixture(scope="module")
def cog_pipe():
    from capture.models.tiny import tiny_cogvideox

    return tiny_cogvideox(0)


@pytest.fixture
def root(tmp_path):
    return tmp_path / "traces"
