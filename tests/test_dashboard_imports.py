"""The dashboard never imports torch (it runs where no model does)."""

import subprocess
import sys


def test_dashboard_does_not_import_torch():
    code = ("import sys\n"
            "import dashboard.data, dashboard.figures, dashboard.notes, dashboard.rules, dashboard.cli\n"
            "import dashboard.cache, dashboard.state\n"
            "import dashboard.words, dashboard.serve\n"
            "dashboard.serve.preload()\n"
            "from dashboard.views import runs, layer_step, proportions, maps, compare, selection, notes_view\n"
            "from dashboard.views import perturbation\n"
            "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"dashboard imported {out.stdout.strip()}"
