"""The README's Python API example runs as written in a fresh interpreter (only the trace root is
pointed at a temporary folder), and the run records the preset's name."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.slow


def test_python_api_example_runs(tmp_path):
    text = README.read_text()
    section = text[text.index("### Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "from capture import load_pipeline, trace" in code
    code = code.replace('root="data/traces"', f'root={str(tmp_path)!r}')
    code += "\nassert ds.attrs['model'] == 'tiny-animatediff', ds.attrs['model']\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert re.match(r"\d{8}-\d{6}-[0-9a-f]{6}", p.stdout.strip().splitlines()[0])
