"""Sweeps end to end on the tiny model: resume, retries, metrics against baselines, the process
pool giving the same runs as sequential execution."""

import numpy as np
import pytest

from capture.catalog import Catalog
from capture.metrics import run_video
from capture.store import read_attrs, run_dir
from capture.sweep import SweepSpec
from capture.sweep_exec import execute

pytestmark = pytest.mark.slow


def _spec(name="sw"):
    return SweepSpec.from_dict(dict(
        name=name, model="tiny-animatediff", prompts=["a red circle moving left"], seeds=[0],
        layer_sets=["each:mid_block.*attn1"], perturbations=["U"], windows=["all"],
        call={"steps": 2, "frames": 4, "height": 32, "width": 32}, capture={"maps": False}))


def test_sweep_runs_resumes_retries_and_measures(tmp_path):
    seen = []
    s = execute(_spec(), tmp_path, threads=1, progress=lambda d, t, r: seen.append((d, t, r["ok"])))
    assert s["planned"] == 3 and s["ran"] == 3 and s["ok"] == 3 and not s["failed"]  # baseline + 2 layers
    assert seen[-1] == (3, 3, True)
    cat = Catalog(tmp_path)
    runs = cat.query("SELECT run, perturbation FROM runs ORDER BY run")
    assert all(r.startswith("sw-") for r in runs["run"]) and (runs["perturbation"] != "").sum() == 2
    base = runs.loc[runs["perturbation"] == "", "run"].iloc[0]
    m = cat.query("SELECT run, baseline, value FROM metrics WHERE metric = 'ssim_mean'")
    assert len(m) == 2 and set(m["baseline"]) == {base}
    assert (m["value"] < 1).all()  # a perturbed layer changes the video
    assert read_attrs(run_dir(tmp_path, base))["sweep"] == "sw"

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/metrics.parquet")}
    again = execute(_spec(), tmp_path, threads=1)
    assert again["ran"] == 0 and again["skipped"]["complete"] == 3
    assert len(stamps) == 3 and {p: p.stat().st_mtime_ns for p in stamps} == stamps  # not measured again

    # a run that failed is retried under a new attempt id, the failed one is kept
    victim = runs.loc[runs["perturbation"] != "", "run"].iloc[0]
    store = run_dir(tmp_path, victim) / "trace.zarr" / "zarr.json"
    store.write_text(store.read_text().replace('"status": "complete"', '"status": "failed"'))
    retry = execute(_spec(), tmp_path, threads=1)
    assert retry["ran"] == 1 and retry["skipped"]["retried"] == 1 and retry["ok"] == 1
    assert (tmp_path / "runs" / f"{victim}-r2").is_dir() and (tmp_path / "runs" / victim).is_dir()


def test_process_pool_gives_identical_runs(tmp_path):
    seq = execute(_spec(), tmp_path / "seq", threads=1)
    pool = execute(_spec(), tmp_path / "pool", workers=2, threads=1)
    for s in (seq, pool):
        assert s["ok"] == 3, s["failed"]
    ids = sorted(p.name for p in (tmp_path / "seq" / "runs").iterdir())
    assert ids == sorted(p.name for p in (tmp_path / "pool" / "runs").iterdir())
    for rid in ids:
        assert np.array_equal(run_video(run_dir(tmp_path / "seq", rid)), run_video(run_dir(tmp_path / "pool", rid)))


def test_batched_variants_equal_one_by_one(tmp_path):
    """--batch 3: the baseline and both one-layer variants of the prompt and seed in one call; the
    same run ids, attributes and catalog rows as sequential runs, statistics and videos equal."""
    from capture.store import open_run

    seq = execute(_spec(), tmp_path / "seq", threads=1)
    bat = execute(_spec(), tmp_path / "bat", threads=1, batch=3)
    assert bat["ok"] == 3 and bat["ran"] == 3, bat["failed"]
    ids = sorted(p.name for p in (tmp_path / "seq" / "runs").iterdir())
    assert ids == sorted(p.name for p in (tmp_path / "bat" / "runs").iterdir())
    for rid in ids:
        a, b = open_run(run_dir(tmp_path / "seq", rid)), open_run(run_dir(tmp_path / "bat", rid))
        for name in ("entropy", "entropy_norm", "energy"):
            np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(a["perturbed"].values, b["perturbed"].values)
        assert np.abs(run_video(run_dir(tmp_path / "seq", rid)).astype(int)
                      - run_video(run_dir(tmp_path / "bat", rid))).max() <= 1
        assert a.attrs["sweep_task"] == b.attrs["sweep_task"] and a.attrs["perturbation"] == b.attrs["perturbation"]
    q = "SELECT run, perturbation, sweep_layers, sweep_perturbation FROM runs ORDER BY run"
    assert Catalog(tmp_path / "seq").query(q).equals(Catalog(tmp_path / "bat").query(q))
    m = "SELECT run, metric, baseline, value FROM metrics WHERE frame IS NULL ORDER BY run, metric"
    ms, mb = Catalog(tmp_path / "seq").query(m), Catalog(tmp_path / "bat").query(m)
    assert ms[["run", "metric", "baseline"]].equals(mb[["run", "metric", "baseline"]])
    np.testing.assert_allclose(ms["value"], mb["value"], rtol=0.02, atol=1e-3)


def test_sweep_cli(tmp_path, capsys):
    from capture.cli import main

    spec = tmp_path / "s.toml"
    spec.write_text('name = "cli"\nmodel = "tiny-animatediff"\nprompts = ["a red circle moving left"]\n'
                    'layer_sets = ["mid_block.*attn1"]\nperturbations = ["I"]\n'
                    '[call]\nsteps = 2\nframes = 4\nheight = 32\nwidth = 32\n[capture]\nmaps = false\n')
    assert main(["sweep", str(spec), "--root", str(tmp_path / "r"), "--quiet"]) == 0
    assert "2 runs planned, 2 run now (2 ok, 0 failed)" in capsys.readouterr().out
    assert main(["sweep", str(spec), "--root", str(tmp_path / "r"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "0 run now" in out and "2 already complete" in out
    assert main(["sweep", str(spec), "--root", str(tmp_path / "r"), "--metric", "nope"]) == 2
    assert "unknown metric 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()


def test_dask_cluster_gives_identical_runs(tmp_path):
    distributed = pytest.importorskip("distributed")
    seq = execute(_spec(), tmp_path / "seq", threads=1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        dk = execute(_spec(), tmp_path / "dask", threads=1, scheduler=cluster.scheduler_address)
        assert dk["ok"] == 3 and not dk["failed"], dk["failed"]
        again = execute(_spec(), tmp_path / "dask", threads=1, scheduler=cluster.scheduler_address)
        assert again["ran"] == 0 and again["skipped"]["complete"] == 3
    ids = sorted(p.name for p in (tmp_path / "seq" / "runs").iterdir())
    assert seq["ok"] == 3 and ids == sorted(p.name for p in (tmp_path / "dask" / "runs").iterdir())
    for rid in ids:
        assert np.array_equal(run_video(run_dir(tmp_path / "seq", rid)), run_video(run_dir(tmp_path / "dask", rid)))
    m = Catalog(tmp_path / "dask").query("SELECT count(*) AS n FROM metrics WHERE metric = 'ssim_mean'")
    assert m["n"][0] == 2


def test_a_run_claimed_by_a_concurrent_sweep_is_not_a_failure(tmp_path, monkeypatch):
    """Two sweeps of one name race for the same runs: the one that loses a run's claim counts it as
    running elsewhere, not as failed (every run completes once)."""
    from capture import sweep_exec

    first = execute(_spec("race"), tmp_path, threads=1)
    assert first["ok"] == 3
    # the second sweep planned before the first claimed its runs: it sees no attempts yet
    monkeypatch.setattr(sweep_exec, "attempts", lambda root, sweep: {})
    second = execute(_spec("race"), tmp_path, threads=1)
    assert not second["failed"] and second["skipped"]["running elsewhere"] == 3 and second["ran"] == 0
