"""The attnlens CLI end to end: both tiny presets, listing and SQL, bad input, concurrency, SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from capture import dims
from capture.catalog import Catalog
from capture.store import open_run

pytestmark = pytest.mark.slow

ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


def attnlens(*args, check=True, timeout=300):
    p = subprocess.run([sys.executable, "-m", "capture.cli", *map(str, args)], capture_output=True, text=True,
                       env=ENV, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"attnlens {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr}")
    return p


def quick(root, model="tiny-animatediff", *extra):
    return ["capture", "--model", model, "--prompt", "a blue square moving up", "--steps", "2", "--root", root,
            "--quiet", *extra]


@pytest.mark.parametrize("model", ["tiny-animatediff", "tiny-cogvideox"])
def test_capture_cli_both_presets(model, root):
    p = attnlens(*quick(root, model, "--seed", "3", "4"))
    ids = p.stdout.split()
    assert len(ids) == 2
    for rid in ids:
        ds = open_run(root / "runs" / rid)
        assert ds.attrs["status"] == dims.COMPLETE and ds.attrs["model"] == model
        assert ds.sizes[dims.STEP] == 2
        assert (root / "runs" / rid / "video.gif").is_file()
    runs = json.loads(attnlens("runs", "--root", root, "--json").stdout)
    assert sorted(r["run"] for r in runs) == sorted(ids)
    assert {r["seed"] for r in runs} == {3, 4} and {r["status"] for r in runs} == {"complete"}
    q = "SELECT run, count(DISTINCT step) AS steps FROM stats WHERE part = 'all' GROUP BY run ORDER BY run"
    rows = json.loads(attnlens("sql", "--root", root, q, "--json").stdout)
    assert [r["steps"] for r in rows] == [2, 2]


def test_layers_command():
    out = attnlens("layers", "--model", "tiny-animatediff").stdout
    assert "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1  temporal" in out
    rows = json.loads(attnlens("layers", "--model", "tiny-cogvideox", "--json").stdout)
    assert {r["kind"] for r in rows} == {"joint"}
    assert rows[0]["query_tokens"] == 32 + 3 * 16  # text + latent frames x tokens per frame


def test_perturb_and_capture_flags(root):
    p = attnlens(*quick(root, "tiny-animatediff", "--perturb", "U@kind=temporal:steps=1-1", "--no-maps",
                        "--layers", "kind=temporal", "--every", "1"))
    ds = open_run(root / "runs" / p.stdout.strip())
    assert set(ds[dims.LAYER_KIND].values.tolist()) == {"temporal"}
    assert ds[dims.PERTURBED].values[1].all() and not ds[dims.PERTURBED].values[0].any()
    assert dims.MAP_SPATIAL not in ds
    ptb = json.loads(attnlens("runs", "--root", root, "--json").stdout)[0]["perturbation"]
    assert ptb == "U@kind=temporal:steps=1-1"


@pytest.mark.parametrize(
    "args,needle",
    [
        (["capture", "--model", "tiny-animatedif", "--prompt", "x"], "did you mean tiny-animatediff"),
        (["capture", "--model", "tiny-animatediff", "--prompt", "x", "--layers", "nonexistent.*"], "matches no layer"),
        (["capture", "--model", "tiny-animatediff", "--prompt", "x", "--perturb", "U@kind=temporal:steps=9-3"],
         "end before start"),
        (["capture", "--model", "tiny-animatediff", "--prompt", "x", "--steps", "4", "--perturb",
          "U@kind=temporal:steps=7-9"], "after the last step"),
        (["capture", "--model", "tiny-animatediff", "--prompts", "/nonexistent/prompts.txt"], "not found"),
        (["sql", "SELEKT 1"], "SQL error"),
    ],
)
def test_bad_input_is_one_line(args, needle, root):
    if args[0] == "sql":
        root.mkdir(parents=True, exist_ok=True)  # a missing root is an error of its own (test_root_faults)
    p = attnlens(*args, "--root", root, check=False) if args[0] == "sql" else attnlens(*args, check=False)
    assert p.returncode != 0
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and needle in err[0], p.stderr
    assert "Traceback" not in p.stderr
    assert not (root / "runs").exists() or not any((root / "runs").iterdir())


def test_unreadable_store_is_reported_not_fatal(root):
    attnlens(*quick(root))
    broken = root / "runs" / "20990101-000000-bad000" / "trace.zarr"
    broken.mkdir(parents=True)
    (broken / "zarr.json").write_text("{not json")
    runs = json.loads(attnlens("runs", "--root", root, "--json").stdout)
    states = sorted(r["status"] for r in runs)
    assert states == ["complete", "unreadable"]
    from capture.store import StoreError

    with pytest.raises(StoreError, match="unreadable run store"):
        open_run(broken.parent)
    p = attnlens("show", "20990101-000000-bad000", "--root", root, check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "unreadable run store" in p.stderr
    p = attnlens("show", "20990101-000000-bad00", "--root", root, check=False)
    assert p.returncode == 2 and "closest: 20990101-000000-bad000" in p.stderr
    good = runs[0]["run"] if runs[0]["status"] == "complete" else runs[1]["run"]
    out = attnlens("show", good, "--root", root).stdout
    assert "status: complete" in out and "down_blocks.0.attentions.0.transformer_blocks.0.attn1" in out


def test_four_concurrent_captures_into_one_root(root):
    procs = [
        subprocess.Popen([sys.executable, "-m", "capture.cli", *quick(root, "tiny-animatediff", "--seed", str(s))],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        for s in range(4)
    ]
    ids = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        ids.append(out.strip())
    cat = Catalog(root)
    runs = cat.runs()
    assert sorted(runs["run"]) == sorted(ids) and set(runs["status"]) == {"complete"}
    n = cat.query("SELECT count(DISTINCT run) AS n FROM stats")["n"][0]
    assert n == 4


def test_sigkill_mid_generation_leaves_run_incomplete_and_root_readable(root):
    attnlens(*quick(root))  # a complete neighbour
    before = set((root / "runs").iterdir())
    p = subprocess.Popen([sys.executable, "-m", "capture.cli", "capture", "--model", "tiny-animatediff", "--prompt",
                          "a long run", "--steps", "400", "--root", str(root), "--quiet"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    deadline = time.time() + 240
    victim = None
    while time.time() < deadline and victim is None:
        for d in set((root / "runs").iterdir()) - before:
            step_meta = d / "trace.zarr" / "step" / "zarr.json"
            if step_meta.is_file() and json.loads(step_meta.read_text())["shape"][0] >= 2:
                victim = d
        time.sleep(0.2)
    assert victim is not None, "the long run never wrote a step"
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    ds = open_run(victim)
    assert ds.attrs["status"] == dims.RUNNING
    assert ds.sizes[dims.STEP] >= 2
    runs = Catalog(root).runs().set_index("run")
    assert runs.loc[victim.name, "state"] == "interrupted" and runs.loc[victim.name, "status"] == "running"
    assert (runs["status"] == "complete").sum() == 1
    # the complete neighbour is intact and its stats are in the catalog, the killed run's are not
    stats_runs = set(Catalog(root).query("SELECT DISTINCT run FROM stats")["run"])
    assert victim.name not in stats_runs and len(stats_runs) == 1
