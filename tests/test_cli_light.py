"""The listing commands (`runs`, `sql`, `select`, `catalog`) answer without pandas or numpy, and
print plain rows: aligned text, or JSON with NULL/NaN as null."""

import json
import math
import subprocess
import sys

from capture.table import Rows, to_json, to_text
from tests.dashboard_root import make_root

PROBE = """
import sys
from capture.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in ("pandas", "numpy", "pyarrow", "zarr", "xarray", "torch") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
sys.exit(rc)
"""


def _run(*argv):
    return subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True)


def test_listing_commands_import_no_pandas_or_numpy(tmp_path):
    make_root(tmp_path)
    for argv in (["runs"], ["catalog"], ["sql", "SELECT kind, avg(entropy) AS h FROM stats GROUP BY kind"],
                 ["runs", "--json"]):
        got = _run(*argv, "--root", str(tmp_path))
        assert got.returncode == 0, got.stderr
        assert "HEAVY=\n" in got.stderr, (argv, got.stderr)
    rows = json.loads(_run("runs", "--json", "--root", str(tmp_path)).stdout)
    assert rows and {"run", "status", "model", "prompt", "seed", "perturbation", "path"} <= set(rows[0])


def test_rows_as_text_and_json():
    rows = Rows(("name", "n", "x"), [("a", 1, 0.5), ("long name", None, math.nan), ("c", 22, 1 / 3)])
    text = to_text(rows).splitlines()
    assert text[0].split() == ["name", "n", "x"]
    assert text[1].startswith("a ") and text[1].endswith("0.5")
    assert "NULL" in text[2] and text[2].endswith("NaN")
    assert text[3].endswith("0.333333") and len({len(t) for t in text[1:]}) == 1  # aligned
    assert json.loads(to_json(rows)) == [{"name": "a", "n": 1, "x": 0.5}, {"name": "long name", "n": None, "x": None},
                                         {"name": "c", "n": 22, "x": 1 / 3}]
    assert to_text(Rows(("a",), [])) == "(no rows)"
