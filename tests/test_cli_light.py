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
import importlib.metadata as md
scans = []
real_entry_points = md.entry_points
md.entry_points = lambda *a, **k: (scans.append(1), real_entry_points(*a, **k))[1]
from capture.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in ("pandas", "numpy", "pyarrow", "zarr", "xarray", "torch") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
print("SCANNED=" + str(bool(scans)), file=sys.stderr)
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


def test_first_party_commands_run_without_the_entry_point_scan(tmp_path):
    make_root(tmp_path)
    got = _run("select", "--root", str(tmp_path), "--model", "m1")
    assert got.returncode == 0, got.stderr
    assert "SCANNED=False" in got.stderr
    assert json.loads(got.stdout)["layers"]
    assert "SCANNED=False" in _run("runs", "--root", str(tmp_path)).stderr
    # not a known command: every installed package is asked, and the error lists their commands
    typo = _run("no-such-command").stderr
    assert "invalid choice" in typo and "'select'" in typo and "'dashboard'" in typo


def test_first_party_table_matches_the_declared_entry_points():
    """capture.cli.FIRST_PARTY is what this distribution's entry points register, command for command."""
    import argparse
    import importlib
    import tomllib
    from pathlib import Path

    from capture import cli

    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    declared = meta["project"]["entry-points"][cli.ENTRY_POINT_GROUP]
    found = {}
    for target in declared.values():
        module, func = target.split(":")
        sub = argparse.ArgumentParser().add_subparsers()
        getattr(importlib.import_module(module), func)(sub)
        found.update({name: module for name in sub.choices})
    assert found == cli.FIRST_PARTY
