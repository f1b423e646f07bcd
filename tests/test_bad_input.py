"""Bad input never becomes a run (issue 14): every entry point checks its input before anything is
generated or any run directory exists; the error is one line naming the value, exit status != 0,
no raw exception type, and the trace root is exactly as before."""

from __future__ import annotations

import json

import pytest

from capture.catalog_index import INDEX_DIR

from capture.cli import main
from capture.selection import Selection

from .test_store import write_run

CAP = ["capture", "--model", "tiny-animatediff", "--prompt", "p", "--steps", "2", "--quiet"]
ENH = ["apply", "enhance", "--model", "tiny-animatediff", "--prompt", "p", "--steps", "2", "--quiet"]

CASES = {
    # sizes and steps
    "steps 0": (CAP[:-3] + ["--steps", "0", "--quiet"], "--steps must be a positive integer"),
    "steps -1": (CAP[:-3] + ["--steps", "-1", "--quiet"], "--steps must be a positive integer"),
    "steps 100000": (CAP[:-3] + ["--steps", "100000", "--quiet"], "between 1 and 1000"),
    # DDIM, steps_offset 1, 'leading' spacing: 1000 of 1000 steps index past alphas_cumprod (was an IndexError mid-run)
    "steps 1000": (CAP[:-3] + ["--steps", "1000", "--quiet"], "reaches timestep 1000, past its last training step (999)"),
    "frames 0": (CAP + ["--frames", "0"], "frames must be a positive integer"),
    "frames -3": (CAP + ["--frames", "-3"], "frames must be a positive integer"),
    "height 0": (CAP + ["--height", "0"], "height must be a positive integer"),
    "width -8": (CAP + ["--width", "-8"], "width must be a positive integer"),
    "height 33": (CAP + ["--height", "33"], "height 33 must be a positive multiple of 8"),
    "maps every 0": (CAP + ["--maps-every", "0"], "--maps-every must be >= 1"),
    # scales and temperatures
    "guidance nan": (CAP + ["--guidance", "nan"], "guidance scale nan must be finite"),
    "guidance -1": (CAP + ["--guidance", "-1"], "must be finite and >= 0"),
    "T=inf": (CAP + ["--perturb", "T=inf@all"], "temperature factor must be finite"),
    "T=1e999": (CAP + ["--perturb", "T=1e999@all"], "temperature factor must be finite"),
    "T=-1": (CAP + ["--perturb", "T=-1@all"], "temperature factor must be finite"),
    "enhance scale nan": (ENH + ["--scale", "nan"], "guidance scale s must be finite"),
    "enhance factor 0": (ENH + ["--mode", "temperature", "--factor", "0"], "temperature factor must be finite and > 0"),
    "compare fraction 2": (["compare", "--model", "tiny-animatediff", "--fraction", "2", "--clips", "1", "--quiet"],
                           "--fraction 2.0 must be in (0, 1]"),
    # layers and perturbation specs
    "layer pattern": (CAP + ["--layers", "nothing*here"], "matches no layer"),
    "perturb syntax": (CAP + ["--perturb", "X@all"], "bad perturbation"),
    "step window": (CAP + ["--perturb", "U@all:steps=5-6"], "starts after the last step"),
    "unknown model": (["capture", "--model", "tiny-nothing", "--prompt", "p"], "unknown model"),
    # roots and selections
    "missing root": (["runs", "--root", "{tmp}/nonexistent"], "does not exist"),
    "select other model": (["select", "--model", "demo"], "no complete unperturbed runs of model 'demo'"),
}

SWEEPS = {
    "prompts = 5": ("name = 's'\nprompts = 5\n", "'prompts' must hold non-empty strings"),
    "seed 1.5": ("name = 's'\nprompts = ['p']\nseeds = [1.5]\n", "'seeds' must hold integers >= 0"),
    "seed true": ("name = 's'\nprompts = ['p']\nseeds = [true]\n", "'seeds' must hold integers >= 0"),
    "unknown call key": ("name = 's'\nprompts = ['p']\n[call]\nstepz = 2\n", "unknown key 'stepz' in sweep field 'call'"),
    "call steps 0": ("name = 's'\nprompts = ['p']\n[call]\nsteps = 0\n", "call.steps must be an integer >= 1"),
    "capture maps 1": ("name = 's'\nprompts = ['p']\n[capture]\nmaps = 1\n", "capture.maps must be true or false"),
    "capture maps_every 0": ("name = 's'\nprompts = ['p']\n[capture]\nmaps_every = 0\n",
                             "capture.maps_every must be an integer >= 1"),
    "unknown field": ("name = 's'\nprompts = ['p']\nmodle = 'demo'\n", "unknown sweep field 'modle'"),
    "bad branch": ("name = 's'\nprompts = ['p']\nbranch = 'both'\n", "'branch' must be cond or uncond"),
}


def _snapshot(root):
    """Every path of the root's runs (the catalog's index, derived and rewritable by any reader that
    opens the root, is not a stored run)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.relative_to(root).parts[0] != INDEX_DIR) if root.exists() else []


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "traces"
    write_run(r, 0)  # one existing run of model "fake": nothing may change it or add to it
    return r


def _check(argv, needle, root, capsys):
    before = _snapshot(root)
    rc = main([*argv, "--root", str(root)] if "--root" not in argv else argv)
    err = capsys.readouterr().err.strip()
    assert rc != 0, err
    assert len(err.splitlines()) == 1 and needle in err, err
    assert "error (" not in err and "Traceback" not in err  # no raw internal exception type
    assert _snapshot(root) == before


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_is_refused_before_anything_is_stored(case, root, tmp_path, capsys):
    argv, needle = CASES[case]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[:2] == ["apply", "enhance"]:
        sel = tmp_path / "sel.json"
        Selection(model="tiny-animatediff", layers=["mid_block.attentions.0.transformer_blocks.0.attn1"],
                  rule="names", statistic="entropy_norm").save(sel)
        argv = argv + ["--selection", str(sel)]
    _check(argv, needle, root, capsys)


@pytest.mark.parametrize("case", list(SWEEPS), ids=list(SWEEPS))
def test_bad_sweep_specs_name_the_field(case, root, tmp_path, capsys):
    text, needle = SWEEPS[case]
    spec = tmp_path / "spec.toml"
    spec.write_text(text)
    _check(["sweep", str(spec), "--model", "tiny-animatediff", "--quiet"], needle, root, capsys)


def test_flags_override_a_spec_without_model(tmp_path):
    from capture.sweep import SweepSpec

    spec = tmp_path / "spec.toml"
    spec.write_text("name = 's'\nprompts = ['p']\n")
    d = {**SweepSpec.read(spec), "model": "tiny-animatediff"}
    assert SweepSpec.from_dict(d).model == "tiny-animatediff"
    assert json.loads(json.dumps(SweepSpec.from_dict(d).as_dict()))["prompts"] == ["p"]


@pytest.mark.slow
def test_a_run_whose_latents_turn_non_finite_is_failed(tmp_path, anim_pipe):
    """Non-finite latents (here forced by a callback) give a failed run with the reason, not a
    complete run with a black video."""
    import torch

    from capture import dims, open_run
    from capture.tracer import trace

    from .conftest import ANIM_CALL

    def poison(pipe, i, t, kw):
        return {"latents": torch.full_like(kw["latents"], float("nan"))} if i == 1 else {}

    from capture.tracer import NonFiniteError

    with pytest.raises(NonFiniteError, match="non-finite"):
        with trace(anim_pipe, root=tmp_path) as tr:
            anim_pipe("p", generator=torch.Generator().manual_seed(0), callback_on_step_end=poison,
                      callback_on_step_end_tensor_inputs=["latents"], **ANIM_CALL)
    ds = open_run(tr.run_dirs[-1])
    assert ds.attrs["status"] == dims.FAILED and "non-finite" in ds.attrs["error"]


@pytest.mark.parametrize("method", ["enhance", "edit"])
@pytest.mark.parametrize("content", [None, "{not json"])
def test_apply_reads_the_selection_before_loading_the_model(method, content, root, tmp_path, capsys, monkeypatch):
    """A missing or damaged selection file is refused at once, before the pipeline loads."""
    import capture.models.presets as presets

    def no_load(*a, **k):
        raise AssertionError("the pipeline was loaded before the selection file was read")

    monkeypatch.setattr(presets, "load_pipeline", no_load)
    sel = tmp_path / "sel.json"
    if content is not None:
        sel.write_text(content)
    argv = ["apply", method, "--model", "tiny-animatediff", "--quiet", "--selection", str(sel)]
    argv += ["--prompt", "p"] if method == "enhance" else ["--source-prompt", "p", "--target-prompt", "q",
                                                          "--source-seed", "0"]
    _check(argv, "selection", root, capsys)
