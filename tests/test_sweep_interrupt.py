"""A sweep killed mid-way (SIGKILL, or Ctrl-C = SIGINT) resumes without recomputing complete runs
and without duplicate or corrupt runs; two sweeps writing into one root at once do not collide."""

import os
import signal
import subprocess
import sys
import time

import pytest

from capture.catalog import Catalog
from capture.store import list_run_dirs, read_attrs
from capture.sweep import SweepSpec
from capture.sweep_exec import attempts, execute

pytestmark = pytest.mark.slow

SPEC = ('name = "{name}"\nmodel = "tiny-animatediff"\nprompts = ["a red circle moving left"]\nseeds = [0, 1]\n'
        'layer_sets = ["each:mid_block.*attn1"]\nperturbations = ["I", "U"]\n'
        '[call]\nsteps = 2\nframes = 4\nheight = 32\nwidth = 32\n[capture]\nmaps = false\n')
PLANNED = 2 * (1 + 2 * 2)  # seeds x (baseline + 2 layers x {I, U})
_CLI = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from capture.cli import main; sys.exit(main(sys.argv[1:]))")


def _start(tmp_path, root, name):
    spec = tmp_path / f"{name}.toml"
    spec.write_text(SPEC.format(name=name))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # `attnlens sweep`, with the KeyboardInterrupt handler a terminal gives it: a job started in the
    # background (CI under nohup or `&`) inherits SIGINT ignored, and Python then installs none
    cmd = [sys.executable, "-c", _CLI, "sweep", str(spec), "--root", str(root), "--quiet", "--threads", "1"]
    return spec, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _states(root, name):
    return {k: [a["state"] for a in v] for k, v in attempts(root, name).items()}


def _complete_stores(root):
    """run id -> modification time of its store's metadata, for complete runs."""
    out = {}
    for d in list_run_dirs(root):
        f = d / "trace.zarr" / "zarr.json"
        if f.is_file() and read_attrs(d / "trace.zarr").get("status") == "complete":
            out[d.name] = f.stat().st_mtime_ns
    return out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_killed_sweep_resumes_without_recomputing_or_duplicates(tmp_path, sig):
    root = tmp_path / "root"
    spec, proc = _start(tmp_path, root, "k")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(_complete_stores(root)) >= 2 if root.exists() else False:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be interrupted: " + proc.stdout.read().decode()
    proc.send_signal(sig)
    proc.wait(timeout=120)
    before = _complete_stores(root)
    assert 2 <= len(before) < PLANNED
    # resume: only what is missing runs; complete runs are not touched
    s = execute(SweepSpec.load(spec), root, threads=1)
    assert not s["failed"] and s["skipped"]["complete"] == len(before)
    assert s["ran"] == PLANNED - len(before)
    after = _complete_stores(root)
    assert {k: after[k] for k in before} == before
    # one complete run per planned task, no duplicates; an interrupted attempt is kept beside its retry
    states = _states(root, "k")
    assert len(states) == PLANNED
    assert all(v.count("complete") == 1 and v[-1] == "complete" for v in states.values()), states
    cat = Catalog(root)
    assert cat.query("SELECT count(*) AS n FROM runs WHERE state = 'complete'")["n"][0] == PLANNED
    # the killed attempt, if any: 'interrupted' (its process is gone), 'failed' (Ctrl-C is caught and
    # recorded) or 'unreadable' (killed while its store was being created)
    assert cat.query("SELECT count(*) AS n FROM runs WHERE state NOT IN ('complete', 'interrupted', 'failed', 'unreadable')"
                     )["n"][0] == 0
    # every complete run has its statistics and metrics (nothing half-written is counted)
    n = cat.query("SELECT count(DISTINCT run) AS n FROM stats")["n"][0]
    m = cat.query("SELECT count(DISTINCT run) AS n FROM metrics")["n"][0]
    assert n == m == PLANNED


def test_two_sweeps_into_one_root_do_not_collide(tmp_path):
    root = tmp_path / "root"
    _, a = _start(tmp_path, root, "a")
    _, b = _start(tmp_path, root, "b")
    outs = [p.communicate(timeout=600)[0].decode() for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    cat = Catalog(root)
    runs = cat.query("SELECT sweep, count(*) AS n, count(DISTINCT run) AS d FROM runs WHERE state = 'complete' "
                     "GROUP BY sweep ORDER BY sweep")
    assert list(runs["sweep"]) == ["a", "b"] and list(runs["n"]) == [PLANNED] * 2 and list(runs["d"]) == [PLANNED] * 2
    # the same spec under two names: the same videos, in different runs
    pairs = cat.query("SELECT ra.run AS a, rb.run AS b FROM runs ra JOIN runs rb USING (prompt, seed, perturbation) "
                      "WHERE ra.sweep = 'a' AND rb.sweep = 'b'")
    assert len(pairs) == PLANNED and not set(pairs["a"]) & set(pairs["b"])


def test_an_interrupt_after_a_run_is_complete_does_not_mark_it_failed(tmp_path):
    from capture.store import RunWriter

    w = RunWriter(tmp_path, {"model": "m"}, run_id="r1")
    w.complete()
    w.fail(KeyboardInterrupt())  # e.g. Ctrl-C while the metadata was being consolidated
    assert read_attrs(w.dir / "trace.zarr")["status"] == "complete"
    w2 = RunWriter(tmp_path, {"model": "m"}, run_id="r2")
    w2.fail(KeyboardInterrupt())
    assert read_attrs(w2.dir / "trace.zarr")["status"] == "failed"
