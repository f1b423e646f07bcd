"""Running a planned sweep: skip what is done, run the rest in this process, on a local process
pool or on a Dask distributed cluster (``scheduler``: its address; workers need attnlens installed
and the trace root on a shared filesystem), then measure every run's metrics against its baseline.

Each task writes its own run directory (``<sweep>-<key>``, retries ``<sweep>-<key>-r2`` …), so no
two writers share a file, a rerun of the same spec skips keys with a complete run, and a run that
another live process is writing is left alone. Results do not depend on the executor: every task
loads the same pipeline, seeds its own generator and runs with the same number of torch threads.
Tasks sharing a process take turns on its one pipeline (a lock), since a pipeline cannot be traced
twice at once.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

from . import dims
from .catalog import run_row
from .store import list_run_dirs, run_dir, trace_root
from .sweep import SweepSpec, Task, plan

log = logging.getLogger(__name__)

_PIPES: dict[str, tuple] = {}  # per process: model spec -> (pipe, preset, defaults)
# One pipeline object per process is shared by every task there; a Dask worker may run tasks on
# several threads at once, and a pipeline cannot be traced twice at the same time.
_LOCK = threading.RLock()


def _pipeline(model: str):
    with _LOCK:
        if model not in _PIPES:
            from .models.presets import load_pipeline

            _PIPES[model] = load_pipeline(model)
        return _PIPES[model]


def call_args(spec: SweepSpec, preset, defaults: dict) -> dict:
    from .models.presets import pipeline_call

    c = spec.call
    return pipeline_call(preset, defaults, steps=c.get("steps"), frames=c.get("frames"), guidance=c.get("guidance"),
                         height=c.get("height"), width=c.get("width"))


def run_task(job: dict) -> list[dict]:
    """Run one job (one task, or a batch of variants of one prompt and seed) in this process (pool
    workers call this); one result per run, never raises."""
    ids = [v["run_id"] for v in job["variants"]]
    try:
        with _LOCK:
            _run_locked(job)
        return [{"run": r, "ok": True} for r in ids]
    except FileExistsError:
        return [{"run": r, "ok": False, "error": TAKEN} for r in ids]
    except Exception as e:  # noqa: BLE001 - reported in the summary; the run itself is marked failed
        return [{"run": r, "ok": False, "error": f"{type(e).__name__}: {e}"} for r in ids]


TAKEN = "taken by another process"  # another sweep claimed the run first


def _run_locked(job: dict) -> None:
    """One pipeline call. Several variants (perturbations of one prompt and seed) go in one
    batched call: video i gets variant i's perturbations, its own identically seeded generator
    and its own run (``split_videos``), recorded exactly as if it had run alone."""
    import torch

    from .tracer import CaptureConfig, Tracer

    torch.set_num_threads(job["threads"])
    pipe, _, _ = _pipeline(job["model"])
    variants = job["variants"]
    batched = len(variants) > 1
    perturb = [f"{p}:video={i}" if batched else p for i, v in enumerate(variants) for p in v["perturb"]]
    tracer = Tracer(pipe, root=job["root"], config=CaptureConfig(**job["capture"]), perturb=perturb,
                    model=job["model"], attrs={"sweep": job["sweep"]}, split_videos=batched)
    tracer.next_run_ids = [v["run_id"] for v in variants]
    tracer.next_video_attrs = [{"sweep_task": v["task"]} for v in variants]
    if not batched:
        tracer.extra_attrs["sweep_task"] = variants[0]["task"]
    gens = [torch.Generator().manual_seed(job["seed"]) for _ in variants]
    torch.manual_seed(job["seed"])  # some pipelines (I2VGenXL) also draw from the global generator
    with tracer:
        pipe(prompt=[job["prompt"]] * len(variants) if batched else job["prompt"], generator=gens if batched else gens[0],
             **job["call"])


def batch_jobs(todo: list[tuple[Task, str]], batch: int) -> list[list[tuple[Task, str]]]:
    """Tasks grouped into jobs of at most ``batch`` variants sharing a prompt and seed (plan order kept)."""
    groups: dict[tuple, list] = {}
    for t, rid in todo:
        groups.setdefault((t.prompt, t.seed), []).append((t, rid))
    return [g[i:i + batch] for g in groups.values() for i in range(0, len(g), max(1, batch))]


def attempts(root, sweep: str) -> dict[str, list[dict]]:
    """Existing runs of a sweep by task key: [{run, state}, ...] in attempt order."""
    pat = re.compile(rf"^{re.escape(sweep)}-([0-9a-f]{{12}})(?:-r(\d+))?$")
    out: dict[str, list[dict]] = {}
    for d in list_run_dirs(root):
        m = pat.match(d.name)
        if m:
            row = run_row(d)
            out.setdefault(m.group(1), []).append({"run": d.name, "state": row["state"],
                                                   "attempt": int(m.group(2) or 1)})
    for v in out.values():
        v.sort(key=lambda a: a["attempt"])
    return out


def schedule(tasks: list[Task], root, sweep: str) -> tuple[list[tuple[Task, str]], dict]:
    """(task, run id) pairs still to run, and counts of what is skipped and why."""
    done = attempts(root, sweep)
    todo, skipped = [], {"complete": 0, "running elsewhere": 0, "retried": 0}
    for t in tasks:
        prev = done.get(t.key, [])
        states = [a["state"] for a in prev]
        if dims.COMPLETE in states:
            skipped["complete"] += 1
        elif dims.RUNNING in states:
            skipped["running elsewhere"] += 1
        else:
            rid = t.run_id(sweep) if not prev else f"{t.run_id(sweep)}-r{prev[-1]['attempt'] + 1}"
            skipped["retried"] += bool(prev)
            todo.append((t, rid))
    return todo, skipped


def completed_run(root, sweep: str, key: str, done: dict | None = None) -> Path | None:
    """The complete attempt of a task, if any; ``done`` is ``attempts(root, sweep)`` when the
    caller already has it (it reads every run of the root)."""
    for a in (done if done is not None else attempts(root, sweep)).get(key, []):
        if a["state"] == dims.COMPLETE:
            return run_dir(root, a["run"])
    return None


def execute(spec: SweepSpec, root=None, *, workers: int = 1, threads: int | None = None, scheduler: str | None = None,
            progress=None, batch: int = 1) -> dict:
    """Plan, run what is missing, measure. ``progress(done, total, result)`` after every run.
    ``batch``: variants of one prompt and seed generated together in one batched call."""
    root = str(trace_root(root))
    pipe, preset, defaults = _pipeline(spec.model)
    from .layers import inventory
    from .models.families import family_of

    fam = family_of(pipe)
    call = call_args(spec, preset, defaults)
    tasks = plan(spec, inventory(pipe, fam), n_steps=call["num_inference_steps"])
    todo, skipped = schedule(tasks, root, spec.name)
    threads = threads or max(1, (os.cpu_count() or 1) // max(1, workers))
    capture = {"layers": tuple(spec.capture.get("layers", ("self",))), "every": int(spec.capture.get("every", 1)),
               "maps": bool(spec.capture.get("maps", True)), "grid": int(spec.capture.get("grid", 8)),
               "maps_every": int(spec.capture.get("maps_every", 1))}
    jobs = [dict(root=root, model=spec.model, sweep=spec.name, prompt=g[0][0].prompt, seed=g[0][0].seed, call=call,
                 capture=capture, threads=threads,
                 variants=[dict(run_id=rid, perturb=list(t.perturb), task=asdict(t)) for t, rid in g])
            for g in batch_jobs(todo, batch)]
    results = []

    def note(rs):
        for r in rs:
            results.append(r)
            if progress:
                progress(len(results), len(todo), r)

    if scheduler:
        for r in _run_dask(scheduler, jobs):
            note(r)
    elif workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            for fut in as_completed([pool.submit(run_task, j) for j in jobs]):
                note(fut.result())
    else:
        for j in jobs:
            note(run_task(j))
    measured = measure(spec, tasks, root)
    # a run another process claimed first (a concurrent sweep of the same name) is its run, not a failure
    taken = [r for r in results if not r["ok"] and r.get("error") == TAKEN]
    failed = [r for r in results if not r["ok"] and r.get("error") != TAKEN]
    skipped["running elsewhere"] += len(taken)
    return {"sweep": spec.name, "planned": len(tasks), "ran": len(todo) - len(taken),
            "ok": len(todo) - len(taken) - len(failed), "failed": failed, "skipped": skipped, "measured": measured,
            "root": root}


def _run_dask(address: str, jobs: list[dict]):
    """Results of ``run_task`` over ``jobs`` on the Dask cluster at ``address``, as they finish.
    Each task asks for the resource ``attnlens-run`` = 1 when workers declare it (``dask worker
    --resources attnlens-run=1`` keeps one run per worker process at a time); a worker that
    declares none runs tasks on its threads, which take turns on its one pipeline."""
    try:
        from distributed import Client, as_completed as dask_completed
    except ImportError:
        raise ImportError("--scheduler needs the distributed package: pip install 'attnlens[dask]'") from None
    try:
        client = Client(address, timeout="30s")
    except OSError as e:
        raise ConnectionError(f"cannot reach the Dask scheduler at {address}: {e}") from None
    with client:
        declared = any("attnlens-run" in (w.get("resources") or {})
                       for w in client.scheduler_info().get("workers", {}).values())
        kw = {"resources": {"attnlens-run": 1}} if declared else {}
        futures = [client.submit(run_task, j, key=f"attnlens-{j['variants'][0]['run_id']}", pure=False, **kw)
                   for j in jobs]
        for fut in dask_completed(futures):
            yield fut.result()


def measure(spec: SweepSpec, tasks: list[Task], root) -> int:
    """Metrics of every complete run of the sweep (perturbed ones paired with their baseline)."""
    from .metrics import measure_run

    done = attempts(root, spec.name)
    baselines = {(t.prompt, t.seed): completed_run(root, spec.name, t.key, done) for t in tasks if t.baseline}
    n = 0
    for t in tasks:
        d = completed_run(root, spec.name, t.key, done)
        if d is None:
            continue
        base = None if t.baseline else baselines.get((t.prompt, t.seed))
        have = stored_metrics(d)  # a resumed sweep does not measure its complete runs again
        if "weight_free" in spec.metrics and not (("temporal_flicker", "") in have and (
                base is None or ("ssim_mean", base.name) in have)):
            measure_run(d, base)
        if "world" in spec.metrics and ("world_motion_correct", "") not in have:
            world_metrics(d, t.prompt)
        if "optional" in spec.metrics:
            from .metrics_optional import measure_run as measure_optional

            measure_optional(d, base)
        n += 1
    return n


def stored_metrics(run_path: Path) -> set[tuple[str, str]]:
    """(metric, baseline) pairs already stored with a run."""
    from .catalog import read_run_metrics

    rows = read_run_metrics(run_path)
    return set(zip(rows["metric"], rows["baseline"].fillna("")))


def is_demo_world_model(model: str | None) -> bool:
    """Whether runs of this model draw the demo world (the shipped demo model or a copy of it)."""
    return bool(model) and (model == "demo" or model.startswith("demo:"))


def world_metrics(run_path: Path, prompt: str) -> None:
    """The demo world's exact metrics of one run: whether the classifier reads the prompt's colour,
    shape and motion from the video (1/0 per attribute)."""
    import pandas as pd

    from .catalog import write_run_metrics
    from .metrics import run_video
    from .models import world as W
    from .models.demo_eval import DEFAULT_CLASSIFIER
    from .models.world_classifier import HEADS, ClipClassifier

    try:
        target = W.parse_prompt(prompt).main
    except ValueError:
        log.warning("world metrics skipped for %s: not a demo-world prompt", run_path.name)
        return
    clf = _classifier(str(DEFAULT_CLASSIFIER), ClipClassifier)
    pred = clf.predict(run_video(run_path)[None])
    rows = pd.DataFrame([(f"world_{k}_correct", float(pred[k][0] == getattr(target, k)), None) for k in HEADS],
                        columns=["metric", "value", "frame"])
    write_run_metrics(run_path, rows)


_CLASSIFIERS: dict = {}


def _classifier(path: str, cls):
    if path not in _CLASSIFIERS:
        _CLASSIFIERS[path] = cls.load(Path(path))
    return _CLASSIFIERS[path]
