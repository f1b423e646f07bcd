"""The ``attnlens`` command line. Prints results and progress; errors are one line on stderr.

Subcommands of this package: capture, layers, runs, sql, catalog. Other packages add theirs
through the ``attnlens.commands`` entry-point group (a function ``register(subparsers)``), so this
module never imports them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from . import __version__

ENTRY_POINT_GROUP = "attnlens.commands"
# the commands this distribution's own packages register through that group (pyproject.toml), by
# the module whose register() adds them: run directly, without scanning every installed package
FIRST_PARTY = {"dashboard": "dashboard.cli", "select": "ieadapt.cli", "compare": "ieadapt.cli",
               "apply": "ieadapt.cli"}


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------------
def _read_prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts:
        p = Path(args.prompts)
        if not p.is_file():
            raise CLIError(f"prompts file not found: {p}")
        text = p.read_text()
        if p.suffix == ".json":
            data = json.loads(text)
            prompts += [d if isinstance(d, str) else d["prompt"] for d in data]
        else:
            prompts += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise CLIError("give --prompt TEXT or --prompts FILE")
    return prompts


def cmd_capture(args) -> int:
    from .models.presets import load_pipeline, pipeline_call
    from .perturb import PerturbSpec, parse_steps
    from .tracer import CaptureConfig, Tracer
    from .layers import split_terms

    import inspect

    from .models.presets import resolve

    preset_only, _, _ = resolve(args.model)  # an unknown model fails before anything else
    from .root import writable_root

    writable_root(args.root)  # and a root this user may not write, before the model loads
    image_only = bool(preset_only and preset_only.needs_image and not preset_only.takes_prompt)
    prompts = [None] if image_only and not (args.prompt or args.prompts) else _read_prompts(args)
    specs = [PerturbSpec.parse(s) for s in args.perturb or []]
    capture_steps = parse_steps(args.capture_steps) if args.capture_steps else None
    cfg = CaptureConfig(layers=tuple(split_terms(args.layers)), every=args.every, steps=capture_steps,
                        maps=not args.no_maps, grid=args.grid, sample_rows=args.sample_rows,
                        maps_every=args.maps_every)
    pipe, preset, defaults = load_pipeline(args.model, dtype=args.dtype, device=args.device, quiet=args.quiet)
    if "prompt" not in inspect.signature(type(pipe).__call__).parameters:
        if prompts != [None]:
            raise CLIError(f"{type(pipe).__name__} takes no prompt (it is conditioned on --image only)")
    steps = args.steps if args.steps is not None else defaults["steps"]
    if steps < 1:
        raise CLIError(f"--steps must be a positive integer, not {steps}")
    for s in specs:
        if s.steps and s.steps[0] >= steps:
            raise CLIError(f"perturbation {s}: step window starts after the last step ({steps - 1})")
    if capture_steps and capture_steps[0] >= steps:
        raise CLIError(f"--capture-steps {args.capture_steps} starts after the last step ({steps - 1})")
    call = pipeline_call(preset, defaults, steps=steps, frames=args.frames, guidance=args.guidance,
                         height=args.height, width=args.width, image=args.image)
    if args.negative_prompt:
        call["negative_prompt"] = args.negative_prompt
    from .models.presets import set_guider_scale

    set_guider_scale(pipe, preset, args.guidance if args.guidance is not None else defaults.get("guidance"))
    seeds = args.seed or [0]
    import torch
    from tqdm.auto import tqdm

    jobs = [(p, s) for p in prompts for s in seeds]
    progress = []  # the bar exists only once every input has been validated
    tracer = Tracer(pipe, root=args.root, config=cfg, perturb=specs, model=args.model,
                    on_step=lambda i, t: progress and progress[0].update(1))
    bar = tqdm(total=len(jobs) * steps, unit="step", disable=args.quiet, file=sys.stderr)
    progress.append(bar)
    run_ids = []
    with tracer:
        for k, (prompt, seed) in enumerate(jobs):
            bar.set_description(f"run {k + 1}/{len(jobs)}")
            gen = torch.Generator(device="cpu").manual_seed(seed)
            torch.manual_seed(seed)  # some pipelines (I2VGenXL) also draw from the global generator
            pipe(generator=gen, **call, **({} if prompt is None else {"prompt": prompt}))
            run_ids.append(tracer.run_id)
            bar.write(tracer.run_id, file=sys.stdout)  # above the bar, never inside it
            sys.stdout.flush()
    bar.close()
    return 0


DEMO_PROMPTS = Path(__file__).resolve().parent.parent / "data" / "prompts" / "demo.txt"


def cmd_demo(args) -> int:
    """Capture demo traces (prompts x 2 seeds, plus one I-perturbed run) and summarize them."""
    from .catalog import Catalog

    root = args.root
    prompts = str(DEMO_PROMPTS) if DEMO_PROMPTS.is_file() else None
    base = ["--model", args.model, "--seed", "0", "1"] + (["--root", root] if root else [])
    base += ["--prompts", prompts] if prompts else ["--prompt", "a red circle moving left"]
    print(f"capturing demo traces of {args.model} ...", flush=True)
    cmd_capture(build_parser().parse_args(["capture", *base]))
    first = _read_prompts(argparse.Namespace(prompt=None, prompts=prompts))[0] if prompts else "a red circle moving left"
    ptb = ["capture", "--model", args.model, "--prompt", first, "--seed", "0", "--perturb", "I@kind=temporal"]
    cmd_capture(build_parser().parse_args(ptb + (["--root", root] if root else [])))
    cat = Catalog(root)
    print("\nruns:")
    _print_table(cat.rows("SELECT run, state, prompt, seed, perturbation FROM runs ORDER BY created, run"), False)
    print("\nmean normalized entropy by layer kind and step (unperturbed runs):")
    _print_table(cat.rows(
        "SELECT kind, step, round(avg(entropy_norm), 4) AS entropy_norm, round(avg(energy), 2) AS energy "
        "FROM stats JOIN runs USING (run) WHERE part = 'all' AND runs.perturbation = '' "
        "GROUP BY kind, step ORDER BY kind, step"), False)
    print(f"\ntrace root: {cat.root.resolve()}")
    print(f"browse it: attnlens dashboard --root {cat.root}   (or `attnlens runs`, `attnlens sql`)")
    return 0


def cmd_sweep(args) -> int:
    from .sweep import SweepSpec

    d = {}
    if args.spec:  # the file's fields, then the flags over them, then one check of the whole
        d = SweepSpec.read(args.spec)
    over = {"name": args.name, "model": args.model, "seeds": args.seed, "layer_sets": args.layer_set,
            "perturbations": args.perturbation, "windows": args.window, "metrics": args.metric}
    d.update({k: v for k, v in over.items() if v})
    if args.prompt or args.prompts:
        d["prompts"] = _read_prompts(args)
    if args.steps is not None:
        d["call"] = {**d.get("call", {}), "steps": args.steps}
    d.setdefault("model", "demo")
    spec = SweepSpec.from_dict(d)
    if args.metric_weights:
        os.environ["ATTNLENS_METRIC_WEIGHTS"] = args.metric_weights
    summary = _run_sweep(spec, args)
    return 1 if summary["failed"] else 0


def _run_sweep(spec, args) -> dict:
    """Execute a sweep with a progress bar over runs; prints the summary line and failures."""
    from tqdm.auto import tqdm

    from .sweep_exec import execute

    bar = [None]

    def progress(done, total, result):
        if bar[0] is None:
            bar[0] = tqdm(total=total, unit="run", disable=args.quiet, file=sys.stderr)
        bar[0].update(1)
        if not result["ok"]:
            bar[0].write(f"failed: {result['run']}: {result['error']}")

    from .root import writable_root

    writable_root(args.root)
    summary = execute(spec, args.root, workers=args.workers, threads=args.threads,
                      scheduler=getattr(args, "scheduler", None), progress=progress, batch=args.batch)
    if bar[0] is not None:
        bar[0].close()
    sk = summary["skipped"]
    print(f"sweep {spec.name}: {summary['planned']} runs planned, {summary['ran']} run now ({summary['ok']} ok, "
          f"{len(summary['failed'])} failed), {sk['complete']} already complete, {sk['running elsewhere']} running "
          f"elsewhere, {sk['retried']} retried; metrics for {summary['measured']} runs in {summary['root']}")
    for f in summary["failed"]:
        print(f"  failed {f['run']}: {f['error']}")
    return summary


def cmd_study(args) -> int:
    from .catalog import Catalog
    from .root import trace_root
    from .study import DEMO_PROMPTS, study_spec, write_report

    prompts = _read_prompts(args) if (args.prompt or args.prompts) else DEMO_PROMPTS
    spec = study_spec(args.name, args.model, prompts, tuple(args.seed), args.steps)
    failed = False
    if not args.report_only:
        failed = bool(_run_sweep(spec, args)["failed"])
    parts = ["attnlens study", "--root <root>", f"--name {spec.name}", f"--model {spec.model}", f"--out {args.out}",
             "--seed " + " ".join(map(str, spec.seeds))]
    if args.steps:
        parts.append(f"--steps {args.steps}")
    if args.prompts:
        parts.append(f"--prompts {args.prompts}")
    parts += [f'--prompt "{p}"' for p in (args.prompt or [])]
    path = write_report(Catalog(trace_root(args.root)), spec.name, args.out, command=" ".join(parts))
    print(f"report: {path}")
    return 1 if failed else 0


def cmd_metrics(args) -> int:
    from .catalog import read_run_metrics
    from .metrics import measure_run
    from .store import list_run_dirs, read_attrs
    from .sweep_exec import is_demo_world_model, world_metrics

    dirs = {d.name: d for d in list_run_dirs(args.root)}
    missing = [r for r in [*args.runs, *([args.baseline] if args.baseline else [])] if r not in dirs]
    if missing:
        raise CLIError(f"no run {missing[0]} in {trace_root_of(args)}")
    base = dirs[args.baseline] if args.baseline else None
    failed = 0
    for r in args.runs:
        try:
            rows = measure_run(dirs[r], base)
            attrs = read_attrs(dirs[r])
            if is_demo_world_model(attrs.get("model")):  # the demo world's exact metrics too
                world_metrics(dirs[r], attrs.get("prompt") or "")
                rows = read_run_metrics(dirs[r])
                rows = rows[rows["baseline"].isin(["", args.baseline or ""])]
            if args.optional:
                from . import metrics_optional

                for a in metrics_optional.measure_run(dirs[r], base, args.metric_weights):
                    if not a.available:
                        print(f"  {a.line()}", file=sys.stderr)
                rows = read_run_metrics(dirs[r])
        except Exception as e:  # noqa: BLE001 - one unreadable run is reported; the others are measured
            if getattr(args, "debug", False):
                raise
            failed += 1
            print(f"attnlens: run {r} not measured: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}",
                  file=sys.stderr)
            continue
        means = rows[rows["frame"].isna()]
        print(r + "  " + "  ".join(f"{m}={v:.4g}" for m, v in zip(means["metric"], means["value"])), flush=True)
    return 1 if failed else 0


def trace_root_of(args):
    from .root import trace_root

    return trace_root(args.root)


def cmd_layers(args) -> int:
    from .models.presets import load_pipeline
    from .probe import probe_layers, text_tokens_for

    from .models.presets import pipeline_call

    pipe, preset, defaults = load_pipeline(args.model, dtype=args.dtype, device=args.device)
    frames = args.frames or defaults["frames"]
    height, width = args.height or defaults.get("height") or 512, args.width or defaults.get("width") or 512
    rows = probe_layers(
        pipe, frames=frames, height=height, width=width,
        text_tokens=text_tokens_for(pipe, preset.call_kwargs if preset else None),
        call=pipeline_call(preset, defaults, steps=1, frames=frames, height=height, width=width),
    )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    w = max(len(r["name"]) for r in rows)
    print(f"{'layer':<{w}}  {'kind':<9} {'block':<8} {'q_tokens':>8} {'k_tokens':>8} {'heads':>5}")
    for r in rows:
        kind = r["kind"] + ("*" if r.get("inferred") else "")
        print(f"{r['name']:<{w}}  {kind:<9} {r['block']:<8} {r['query_tokens']:>8} {r['key_tokens']:>8} {r['heads']:>5}"
              + (f"  not capturable: {r['not_capturable']}" if r.get("not_capturable") else ""))
    kinds = {}
    for r in rows:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    print(f"# {len(rows)} attention layers: " + ", ".join(f"{v} {k}" for k, v in kinds.items()))
    if any(r.get("inferred") for r in rows):
        print("# * kind inferred from the token counts of a short generation (generic family)")
    return 0


def _print_table(table, json_out: bool) -> None:
    """Print a capture.table.Rows (or a DataFrame) as an aligned table or, with --json, as JSON."""
    from .table import Rows, to_json, to_text

    rows = table if isinstance(table, Rows) else Rows.from_frame(table)
    print(to_json(rows) if json_out else to_text(rows))


def cmd_runs(args) -> int:
    from .catalog import Catalog

    cat = Catalog(_existing_root(args.root))
    _print_table(cat.rows("SELECT run, state AS status, model, prompt, seed, perturbation, path FROM runs "
                          "ORDER BY created, run"), args.json)
    _report_unreadable(cat)
    return 0


def cmd_show(args) -> int:
    """One run: attributes, dimensions and a per-kind summary; one-line errors for bad ids/stores."""
    import difflib

    from .store import list_run_dirs, open_run, trace_root

    dirs = {d.name: d for d in list_run_dirs(args.root)}
    if args.run not in dirs:
        close = difflib.get_close_matches(args.run, dirs, n=3, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise CLIError(f"no run {args.run!r} in {trace_root(args.root)}{hint}")
    ds = open_run(dirs[args.run])
    a = ds.attrs
    if args.json:
        print(json.dumps({"attrs": a, "dims": dict(ds.sizes), "variables": list(ds.data_vars)}, indent=1, default=str))
        return 0
    for key in ("run_id", "status", "model", "pipeline", "prompt", "negative_prompt", "seed", "num_frames", "height",
                "width", "num_inference_steps", "guidance_scale", "steps_captured", "seconds", "error"):
        if a.get(key) is not None:
            print(f"{key:>20}: {a[key]}")
    print(f"{'capture':>20}: {json.dumps(a.get('capture'))}")
    for p in a.get("perturbation") or []:
        print(f"{'perturbation':>20}: {p['spec']}")
    print(f"{'dims':>20}: {dict(ds.sizes)}")
    if "entropy_norm" in ds and ds.sizes.get("step", 0):
        import pandas as pd

        h = ds["entropy_norm"].sel(part="all").mean(["head", "branch"], skipna=True)
        df = pd.DataFrame({"layer": ds["layer_name"].values, "kind": ds["layer_kind"].values,
                           "entropy_norm (first step)": h.isel(step=0).values,
                           "entropy_norm (last step)": h.isel(step=-1).values})
        print()
        _print_table(df.round(4), False)
    return 0


def cmd_sql(args) -> int:
    import duckdb

    from .catalog import Catalog

    cat = Catalog(_existing_root(args.root))
    try:
        rows = cat.sandboxed(args.query)
    except duckdb.Error as e:
        raise CLIError(f"SQL error: {str(e).splitlines()[0]}") from None
    _print_table(rows, args.json)
    _report_unreadable(cat)
    return 0


def cmd_catalog(args) -> int:
    from .catalog import Catalog

    root = _existing_root(args.root)
    if args.rebuild:
        from .root import RUNS_DIR, read_only

        # each run's stats.parquet and the catalog's index are rewritten: on a root this user may
        # only read (a team's shared root), say so once instead of failing run by run
        locked = [p for p in (root, root / RUNS_DIR) if read_only(p)]
        if locked:
            raise CLIError(f"{locked[0]} is read-only for this user: --rebuild rewrites every run's table and "
                           f"the catalog's index there (list and query it without --rebuild, or rebuild a copy)")
    cat = Catalog(root)
    rc = 0
    if args.rebuild:
        from tqdm.auto import tqdm

        with tqdm(unit="run", desc="rebuilding", disable=args.quiet, file=sys.stderr) as bar:
            def progress(done, total):
                bar.total = total
                bar.update(done - bar.n)

            n = cat.rebuild(progress=progress)
        print(f"rebuilt statistics tables of {n} complete run(s)")
        for run, why in cat.problems.items():  # each kept its table (if it had one)
            print(f"attnlens: not rebuilt: {run}: {why}", file=sys.stderr)
        rc = 1 if cat.problems else 0
    _print_table(cat.rows("SELECT state AS status, count(*) AS runs FROM runs GROUP BY state ORDER BY state"),
                 args.json)
    _report_unreadable(cat)
    return rc


def _existing_root(root):
    """The trace root, which must exist: a mistyped --root is an error, not an empty root."""
    from .root import trace_root

    path = trace_root(root)
    if not path.is_dir():
        raise CLIError(f"trace root {path} does not exist")
    return path


def _report_unreadable(cat) -> None:
    """One stderr line per run that could not be read (every other run was used)."""
    for run, why in sorted(getattr(cat, "unreadable", {}).items()):
        print(f"attnlens: unreadable run {run}: {why}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------
def _add_model_args(p) -> None:
    p.add_argument("--model", default="demo", help="preset name or save_pretrained directory")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--frames", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)


def _add_root(p) -> None:
    p.add_argument("--root", help="trace root (default $ATTNLENS_ROOT or data/traces)")


def build_parser(plugins: bool = True, first_party: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with ``plugins`` False only this package's (``core_commands``),
    without reading the installed packages' entry points (about 0.06 s at every start), plus, where
    ``first_party`` names a command of FIRST_PARTY, the commands its module registers."""
    ap = argparse.ArgumentParser(prog="attnlens", description="Attention traces of video diffusion models.")
    ap.add_argument("--version", action="version", version=f"attnlens {__version__}")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("capture", help="generate with attention capture; prints one run id per run")
    _add_model_args(p)
    _add_root(p)
    p.add_argument("--prompt", action="append", help="prompt (repeatable)")
    p.add_argument("--prompts", help="file with one prompt per line (or a JSON list)")
    p.add_argument("--negative-prompt")
    p.add_argument("--image", help="conditioning image of an image-to-video model (default: a built-in test image)")
    p.add_argument("--seed", type=int, nargs="+", help="one run per seed (default 0)")
    p.add_argument("--steps", type=int, help="denoising steps")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    p.add_argument("--layers", action="append", help="layer selection (default: self; see README)")
    p.add_argument("--every", type=int, default=1, help="capture every K-th step")
    p.add_argument("--capture-steps", help="only capture steps A-B (inclusive)")
    p.add_argument("--no-maps", action="store_true", help="scalar statistics only")
    p.add_argument("--grid", type=int, default=8, help="maps pool onto at most GRID x GRID cells")
    p.add_argument("--maps-every", type=int, default=1, metavar="K",
                   help="maps only at every K-th step; statistics stay at every captured step")
    p.add_argument("--sample-rows", type=int, help="sampled mode: N evenly spaced query rows per map")
    p.add_argument("--perturb", action="append", help="I@LAYERS, U@LAYERS:steps=A-B:branch=cond, T=0.5@LAYERS")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser("demo", help="capture demo traces on the built-in model and summarize them")
    p.add_argument("--model", default="demo")
    _add_root(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("layers", help="attention-layer inventory of a model")
    _add_model_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("runs", help="list runs in a trace root")
    _add_root(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("show", help="one run: attributes, dimensions, per-layer entropy")
    _add_root(p)
    p.add_argument("run", help="run id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("sql", help="query the catalog with DuckDB SQL (tables: runs, stats)")
    _add_root(p)
    p.add_argument("query")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("sweep", help="perturbation sweep: prompts x seeds x layer sets x perturbations x windows")
    _add_root(p)
    p.add_argument("spec", nargs="?", help="sweep spec file (.toml or .json); flags below override its fields")
    p.add_argument("--name", help="sweep id (part of every run id)")
    p.add_argument("--model")
    p.add_argument("--prompt", action="append", help="prompt (repeatable)")
    p.add_argument("--prompts", help="prompts file, one per line")
    p.add_argument("--seed", type=int, nargs="+")
    p.add_argument("--layer-set", action="append", help="'each:SELECTION' (one run per layer) or 'SELECTION'")
    p.add_argument("--perturbation", action="append", help="I, U or T=FACTOR (repeatable)")
    p.add_argument("--window", action="append", help="'all' or A-B (repeatable)")
    p.add_argument("--metric", action="append", help="weight_free, world, optional (repeatable)")
    p.add_argument("--metric-weights", help="local weights directory of the optional metric tier "
                                            "(default $ATTNLENS_METRIC_WEIGHTS)")
    p.add_argument("--steps", type=int)
    p.add_argument("--scheduler", help="run on the Dask distributed cluster at this address (tcp://HOST:PORT); "
                                       "its workers need attnlens and the trace root")
    p.add_argument("--workers", type=int, default=1, help="local processes (default 1: this process)")
    p.add_argument("--threads", type=int, help="torch threads per run (default: cores / workers)")
    p.add_argument("--batch", type=int, default=1,
                   help="variants of one prompt and seed generated together in one batched call (default 1)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("study", help="the paper's one-layer-at-a-time I/U study and its Markdown report")
    _add_root(p)
    p.add_argument("--out", default="build/study",
                   help="report directory (README.md, figures, CSV); the shipped docs/study is rewritten only when named")
    p.add_argument("--name", default="paper-study", help="sweep id (rerun to resume)")
    p.add_argument("--model", default="demo")
    p.add_argument("--prompt", action="append", help="prompt (repeatable; default: four demo-world prompts)")
    p.add_argument("--prompts", help="prompts file, one per line")
    p.add_argument("--seed", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    p.add_argument("--workers", type=int, default=1, help="local processes (default 1: this process)")
    p.add_argument("--threads", type=int, help="torch threads per run (default: cores / workers)")
    p.add_argument("--batch", type=int, default=1,
                   help="variants of one prompt and seed generated together in one batched call (default 1)")
    p.add_argument("--report-only", action="store_true", help="only re-render the report from the root")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("metrics", help="weight-free video metrics of runs, stored in the catalog's metrics table")
    _add_root(p)
    p.add_argument("runs", nargs="+", help="run ids")
    p.add_argument("--baseline", help="run id of the paired baseline (adds PSNR and SSIM against it)")
    p.add_argument("--optional", action="store_true",
                   help="also the optional tier (LPIPS, CLIP score, aesthetic, DINO) where its weights are found")
    p.add_argument("--metric-weights", help="local weights directory of the optional tier "
                                            "(default $ATTNLENS_METRIC_WEIGHTS)")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("catalog", help="catalog summary; --rebuild rewrites it from the stores")
    _add_root(p)
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_catalog)

    ap.core_commands = frozenset(sub.choices)
    if first_party is not None:
        import importlib

        importlib.import_module(FIRST_PARTY[first_party]).register(sub)
    if not plugins:
        return ap
    from importlib import metadata

    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()(sub)
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break the core commands
            logging.getLogger(__name__).warning("command plugin %s failed to load: %s", ep.name, e)
    return ap


def _user_errors() -> tuple[type[BaseException], ...]:
    from .layers import LayerSelectionError
    from .perturb import PerturbSpecError
    from .root import StoreError

    errs = [CLIError, LayerSelectionError, PerturbSpecError, StoreError, FileNotFoundError, ConnectionError,
            ImportError]
    try:
        from .models.presets import ModelError

        errs.append(ModelError)
    except Exception:  # noqa: BLE001
        pass
    return tuple(errs)


def main(argv=None) -> int:
    from .console import quiet_libraries

    quiet_libraries()
    logging.basicConfig(level=os.environ.get("ATTNLENS_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    ap = build_parser(plugins=False, first_party=command if command in FIRST_PARTY else None)
    if command not in ap.core_commands and command not in FIRST_PARTY:  # another package's, --help or a typo
        ap = build_parser()
    args = ap.parse_args(argv)
    debug = args.debug or os.environ.get("ATTNLENS_DEBUG") == "1"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("attnlens: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line for the user; --debug shows the traceback
        if debug:
            raise
        known = isinstance(e, _user_errors()) or isinstance(e, (ValueError, PermissionError))
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, PermissionError) and e.filename:  # writing into a root this user may only read
            msg = f"permission denied: {e.filename}"
        prefix = "error" if known else f"error ({type(e).__name__})"
        print(f"attnlens: {prefix}: {msg}", file=sys.stderr)
        return 2 if known else 1


if __name__ == "__main__":
    sys.exit(main())
