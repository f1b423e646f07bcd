"""The real-checkpoint presets on a machine without the model: offline, with an empty hub cache,
each fails at once with one line naming what it tried to load (no traceback, no download)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from capture.models.presets import PRESETS

HUB = sorted(n for n, p in PRESETS.items() if not p.tiny and n != "demo")

SCRIPT = """
import json, sys
from capture.models.presets import ModelError, load_pipeline
out = {}
for name in sys.argv[1:]:
    try:
        load_pipeline(name, quiet=True)
        out[name] = "loaded"
    except ModelError as e:
        out[name] = "ModelError: " + str(e)
    except BaseException as e:
        out[name] = type(e).__name__ + ": " + str(e)
print(json.dumps(out))
"""


def test_hub_presets_offline_fail_with_one_line_naming_the_checkpoint(tmp_path):
    assert len(HUB) >= 10
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hub"))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *HUB], capture_output=True, text=True, env=env, timeout=600,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in HUB:
        msg = got[name]
        assert msg.startswith("ModelError: cannot load "), (name, msg)
        assert "offline, hub ids load only from the local cache" in msg and "\n" not in msg, (name, msg)
        assert "stacktrace" not in msg, (name, msg)


def test_a_device_this_machine_lacks_is_one_line_before_the_model_is_built(monkeypatch, capsys, tmp_path):
    """--device cuda on a CPU-only torch build (a laptop, CI), a GPU index past the last one, or
    a name torch does not know: one line saying why, before any model is built."""
    import torch

    from capture.cli import main
    from capture.models import presets

    def no_build(*a, **k):
        raise AssertionError("the model was built")

    import dataclasses

    monkeypatch.setitem(presets.PRESETS, "demo", dataclasses.replace(presets.PRESETS["demo"], load=no_build))
    cases = {"gpu": "unknown device 'gpu'; e.g. cpu, cuda, cuda:1, mps, xpu"}
    if not torch.cuda.is_available():
        cases["cuda"] = "device 'cuda' is not available: "
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n:
        cases[f"cuda:{n}"] = f"device 'cuda:{n}' is not available: this machine has {n} cuda device(s), numbered from 0"
    if not torch.backends.mps.is_available():
        cases["mps"] = "device 'mps' is not available: this machine or torch build has no MPS backend"
    for device, needle in cases.items():
        rc = main(["capture", "--model", "demo", "--prompt", "p", "--device", device, "--quiet",
                   "--root", str(tmp_path / "root")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith(f"attnlens: error: {needle}") and "\n" not in err, (device, err)
    assert not (tmp_path / "root").exists()
