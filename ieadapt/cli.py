"""``attnlens select`` and ``attnlens apply``: registered with the ``attnlens.commands`` entry point."""

from __future__ import annotations

import sys

from capture.root import ROOT_ENV, trace_root, writable_root


def cmd_select(args) -> int:
    from capture.catalog import Catalog

    from .select import select

    root = trace_root(args.root)
    if not root.is_dir():
        raise FileNotFoundError(f"trace root {root.resolve()} does not exist")
    sel = select(Catalog(root), stat=args.stat, rule=args.rule, kind=args.kind,
                 runs=args.runs, branch=args.branch, model=args.model)
    if args.output == "-":
        print(sel.to_json())
    else:
        sel.save(args.output)
        print(f"{len(sel.layers)} layer(s) by {sel.rule} on {sel.statistic}"
              + (f" among {sel.kind} layers" if sel.kind else "") + f" -> {args.output}", file=sys.stderr)
        for n in sel.layers:
            print(f"  {n}  {sel.values[n]:.4g}", file=sys.stderr)
    return 0


def _call(args, defaults: dict, preset) -> dict:
    from capture.models.presets import pipeline_call

    return pipeline_call(preset, defaults, steps=args.num_steps, frames=args.frames, guidance=args.guidance,
                         height=args.height, width=args.width)


def cmd_apply_enhance(args) -> int:
    from tqdm.auto import tqdm

    from capture.models.presets import load_pipeline
    from capture.perturb import parse_steps

    from .enhance import EnhanceConfig, enhance

    sel = _read_selection(args.selection)
    writable_root(args.root)  # a root this user may not write: refused before the model loads
    pipe, preset, defaults = load_pipeline(args.model, dtype=args.dtype, device=args.device, quiet=args.quiet)
    call = _call(args, defaults, preset)
    n = call["num_inference_steps"]
    window = parse_steps(args.steps, n) if args.steps else None
    cfg = EnhanceConfig(mode=args.mode, scale=args.scale, perturb=args.perturb, steps=window,
                        schedule=args.schedule, factor=args.factor)
    sel = _selection(sel, pipe, None if args.any_model else args.model)
    runs = [("cfg", EnhanceConfig(mode="cfg"))] if args.baseline else []
    runs.append((args.mode, cfg))
    bar = tqdm(total=n * len(runs), unit="step", disable=args.quiet, file=sys.stderr)
    results = []
    for label, c in runs:
        bar.set_description(label)
        r = enhance(pipe, sel.layers, c, prompt=args.prompt, seed=args.seed, call=call, root=args.root,
                    model=args.model, on_step=lambda i, t: bar.update(1),
                    attrs={"ieadapt": {"selection": {"file": str(args.selection), "rule": sel.rule,
                                                     "statistic": sel.statistic, "model": sel.model}}})
        results.append((label, r))
    bar.close()
    for label, r in results:
        extra = f"  {r.extra_calls} extra denoiser calls ({r.extra_seconds:.2f} s)" if r.extra_calls else ""
        print(f"{r.run_id}  {label}  {r.seconds:.2f} s{extra}", flush=True)
    if args.baseline:
        from capture.metrics import measure_run

        rows = measure_run(results[-1][1].run_dir, results[0][1].run_dir)
        means = rows[rows["frame"].isna()]
        print("vs baseline: " + "  ".join(f"{m}={v:.4g}" for m, v in zip(means["metric"], means["value"])))
    return 0


def cmd_apply_edit(args) -> int:
    from tqdm.auto import tqdm

    from capture.layers import inventory
    from capture.models.families import family_of
    from capture.models.presets import load_pipeline

    from .edit import edit, injected_layers, measure_edit

    sel = _read_selection(args.selection)
    writable_root(args.root)  # a root this user may not write: refused before the model loads
    pipe, preset, defaults = load_pipeline(args.model, dtype=args.dtype, device=args.device, quiet=args.quiet)
    call = _call(args, defaults, preset)
    n = call["num_inference_steps"]
    sel = _selection(sel, pipe, None if args.any_model else args.model)
    fam = family_of(pipe)
    kinds = {l.name: l.kind for l in inventory(pipe, fam)}
    layers = injected_layers(sel.layers, kinds, args.temporal, args.cross)
    if not layers:
        from capture.selection import SelectionError

        raise SelectionError(f"the selection has no spatial layers to inject into ({len(sel.layers)} layers of other "
                             "kinds); select spatial layers or add --temporal")
    latents = frames = None
    if args.source_video:  # read (and fail on a bad file) before any progress is shown
        from .invert import ddim_invert, read_video

        frames = read_video(args.source_video)
        call["num_frames"] = frames.shape[0]
        call["height"], call["width"] = frames.shape[1:3]
    bar = tqdm(total=n * (2 if args.source_video else 1), unit="step", disable=args.quiet, file=sys.stderr)
    if frames is not None:
        bar.set_description("DDIM inversion")
        latents = ddim_invert(pipe, frames, args.source_prompt, n, progress=lambda i: bar.update(1))
    bar.set_description("edit")
    res = edit(pipe, layers, source_prompt=args.source_prompt, target_prompt=args.target_prompt, inject=args.inject,
               call=call, seed=None if latents is not None else args.source_seed, source_latents=latents,
               root=args.root, model=args.model, on_step=lambda i, t: bar.update(1),
               attrs={"ieadapt": {"selection": {"file": str(args.selection), "rule": sel.rule,
                                                "statistic": sel.statistic, "model": sel.model},
                                  "source_video": str(args.source_video) if args.source_video else None}})
    bar.close()
    m = measure_edit(res, args.target_prompt, args.metric_weights)
    print(f"{res.source_run}  source  {args.source_prompt}")
    print(f"{res.target_run}  target  {args.target_prompt}  ({len(layers)} layers injected for "
          f"{res.inject_steps}/{n} steps, {res.seconds:.2f} s)")
    keys = [k for k in ("ssim_mean", "psnr_mean", "lpips_mean", "temporal_flicker", "world_colour_correct",
                        "world_shape_correct", "world_motion_correct", "clip_score_mean") if k in m]
    print("target vs source: " + "  ".join(f"{k}={m[k]:.4g}" for k in keys))
    return 0


def cmd_compare(args) -> int:
    from tqdm.auto import tqdm

    from capture.models.presets import load_pipeline
    from capture.perturb import parse_steps
    from capture.store import trace_root

    from .compare import METHODS, CompareConfig, demo_pairs, frechet_by_method, run_comparison, write_report

    writable_root(args.root)  # a root this user may not write: refused before the model loads
    pipe, preset, defaults = load_pipeline(args.model, dtype=args.dtype, device=args.device, quiet=args.quiet)
    call = _call(args, defaults, preset)
    if args.prompts:
        prompts = [l.strip() for l in open(args.prompts) if l.strip() and not l.startswith("#")]
        pairs = [(p, s) for p in prompts for s in args.seed]
    else:
        pairs = demo_pairs(args.clips, args.seed)
    window = parse_steps(args.steps, call["num_inference_steps"]) if args.steps else None
    cfg = CompareConfig(scale=args.scale, perturb=args.perturb, fraction=args.fraction, factor=args.factor,
                        steps=window)
    bar = tqdm(total=len(pairs) * len(METHODS), unit="video", disable=args.quiet, file=sys.stderr)
    df, sets = run_comparison(pipe, pairs, call, trace_root(args.root), model=args.model, cfg=cfg,
                              progress=lambda m: (bar.set_description(m), bar.update(1)))
    bar.close()
    fd = frechet_by_method(df) if "world_colour" in df else None
    cmd = (f"attnlens compare --model {args.model}" + ("" if args.prompts else f" --clips {args.clips}")
           + f" --seed {' '.join(map(str, args.seed))} "
           f"--scale {args.scale:g} --perturb {args.perturb} --fraction {args.fraction:g}"
           + (f" --steps {args.steps}" if args.steps else "") + (f" --prompts {args.prompts}" if args.prompts else ""))
    path = write_report(df, sets, fd, args.out, model=args.model, cfg=cfg, call=call, command=cmd)
    print(path.read_text().split("## Entropy")[0])
    print(f"report: {path}")
    return 0


def _read_selection(path):
    """The selection file, read before the pipeline is loaded: a missing or damaged file is a
    one-line error at once, not after the model has loaded."""
    from capture.selection import Selection

    return Selection.load(path)


def _selection(sel, pipe, model: str | None):
    """The selection, checked against the pipeline's layers (and model name unless None)."""
    from capture.layers import inventory
    from capture.models.families import family_of

    from .select import check_layers

    fam = family_of(pipe)
    check_layers(sel, [l.name for l in inventory(pipe, fam)], model)
    return sel


def register(sub) -> None:
    p = sub.add_parser("select", help="choose layers for IE-Adapt from stored statistics or sweep effects")
    p.add_argument("--root", help=f"trace root (default ${ROOT_ENV} or data/traces)")
    p.add_argument("--runs", nargs="+", help="calibration runs (default: every complete unperturbed run, IE-Adapt method runs left out)")
    p.add_argument("--stat", default="entropy_norm",
                   help="entropy_norm, entropy, energy, energy_proportion or effect:SWEEP:METRIC[:I|U]")
    p.add_argument("--rule", default="bottom:0.5", help="top:F, bottom:F, threshold:>=X, threshold:<=X, names:a,b")
    p.add_argument("--kind", help="spatial, temporal, cross or joint (default: all kinds together)")
    p.add_argument("--branch", default="cond")
    p.add_argument("--model", help="use only this model's runs, and record it (default: the source runs' one model)")
    p.add_argument("-o", "--output", default="-", help="selection JSON file (default: print it)")
    p.set_defaults(func=cmd_select)

    register_compare(sub)
    ap = sub.add_parser("apply", help="apply IE-Adapt (enhancement, editing) with a layer selection")
    asub = ap.add_subparsers(dest="method", required=True, metavar="METHOD")
    e = asub.add_parser("enhance", help="guidance away from a perturbed prediction, or temperature, on the selected layers")
    _add_common(e)
    e.add_argument("--prompt", required=True)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--mode", choices=["guidance", "temperature"], default="guidance")
    e.add_argument("--scale", type=float, default=3.0, help="guidance scale s of the perturbed-prediction term")
    e.add_argument("--perturb", choices=["I", "U"], default="I", help="the degraded prediction's map (guidance)")
    e.add_argument("--steps", help="step window A-B (inclusive, default every step)")
    e.add_argument("--schedule", choices=["constant", "linear", "cosine"], default="constant",
                   help="how s changes over the window (guidance)")
    e.add_argument("--factor", type=float, default=0.8,
                   help="temperature mode: logits x factor (< 1 raises the layers' entropy)")
    e.add_argument("--baseline", action="store_true",
                   help="also capture plain CFG with the same seed and print metrics against it")
    e.set_defaults(func=cmd_apply_enhance)

    d = asub.add_parser("edit", help="text-guided editing: the target takes the source's maps in the selected layers")
    _add_common(d)
    d.add_argument("--source-prompt", required=True)
    d.add_argument("--target-prompt", required=True)
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--source-seed", type=int, help="generate the source from this seed")
    src.add_argument("--source-video", help="invert this video with DDIM (a run directory, .npy, .gif or .mp4); "
                                            "use --guidance 1 for a faithful source")
    d.add_argument("--inject", type=float, default=0.5, help="fraction of steps, from the first, with injected maps")
    d.add_argument("--temporal", action="store_true", help="inject temporal maps too")
    d.add_argument("--cross", action="store_true",
                   help="inject cross-attention maps too (prompt-to-prompt style; prompts whose words line up)")
    d.add_argument("--metric-weights", help="local weights of the optional metrics (LPIPS, CLIP score)")
    d.set_defaults(func=cmd_apply_edit)


def _add_common(p) -> None:
    p.add_argument("--model", default="demo", help="preset name or save_pretrained directory")
    p.add_argument("--selection", required=True, help="selection JSON (attnlens select or the dashboard's export)")
    p.add_argument("--any-model", action="store_true",
                   help="accept a selection made on another model name (its layer names must still exist)")
    p.add_argument("--root", help=f"trace root (default ${ROOT_ENV} or data/traces)")
    p.add_argument("--num-steps", type=int, help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="CFG scale w (default: the model's; <= 1 turns CFG off)")
    p.add_argument("--frames", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device", help="cpu, cuda, ...")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def register_compare(sub) -> None:
    c = sub.add_parser("compare", help="IE-Adapt vs CFG, PAG and random layers over prompts x seeds, with a report")
    c.add_argument("--model", default="demo")
    c.add_argument("--root", help=f"trace root (default ${ROOT_ENV} or data/traces)")
    c.add_argument("--prompts", help="prompts file (default: --clips held-out demo-world prompts)")
    c.add_argument("--clips", type=int, default=16, help="number of demo-world prompts when no file is given")
    c.add_argument("--seed", type=int, nargs="+", default=[0, 1])
    c.add_argument("--scale", type=float, default=3.0)
    c.add_argument("--perturb", choices=["I", "U"], default="I")
    c.add_argument("--fraction", type=float, default=0.5, help="share of each kind's layers for ie-high / ie-low")
    c.add_argument("--factor", type=float, default=0.8, help="ie-temp-high: logits x factor")
    c.add_argument("--steps", help="guidance step window A-B")
    c.add_argument("--out", default="build/ieadapt",
                   help="report directory; the shipped docs/ieadapt is rewritten only when named")
    for a in ("--num-steps", "--frames", "--height", "--width"):
        c.add_argument(a, type=int)
    c.add_argument("--guidance", type=float)
    c.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    c.add_argument("--device")
    c.add_argument("-q", "--quiet", action="store_true")
    c.set_defaults(func=cmd_compare)
