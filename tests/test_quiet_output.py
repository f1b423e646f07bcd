"""Ordinary commands print what the user asked for and nothing else: no third-party deprecation or
environment warnings, no loading bars with --quiet, run ids on stdout only."""

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _run(args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


def test_quiet_capture_prints_only_the_run_id(tmp_path):
    p = _run(["-m", "capture.cli", "capture", "--model", "demo", "--prompt", "a red circle moving left",
              "--steps", "2", "--quiet", "--root", str(tmp_path)], tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""  # no FutureWarning (torch_dtype), no accelerate notice, no loading bar
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}\n", p.stdout)


def test_progress_goes_to_stderr_and_run_ids_to_stdout(tmp_path):
    p = _run(["-m", "capture.cli", "capture", "--model", "tiny-animatediff", "--prompt", "a red circle", "--seed",
              "0", "1", "--steps", "2", "--root", str(tmp_path)], tmp_path)
    assert p.returncode == 0, p.stderr
    assert len(re.findall(r"^\d{8}-\d{6}-[0-9a-f]{6}$", p.stdout, re.M)) == 2 and "step" not in p.stdout
    assert "run 2/2" in p.stderr and "Warning" not in p.stderr


def test_quiet_module_tools_are_silent(tmp_path):
    p = _run(["-m", "capture.models.demo_eval", "--clips", "2", "--steps", "2", "--no-random-baseline", "--quiet"],
             tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stderr == "", p.stderr
    assert '"accuracy"' in p.stdout
