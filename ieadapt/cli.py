"""``attnlens select``: registered with the ``attnlens.commands`` entry point."""

from __future__ import annotations

import sys

from capture.store import ROOT_ENV, trace_root


def cmd_select(args) -> int:
    from dashboard.data import TraceRoot

    from .select import select

    sel = select(TraceRoot(trace_root(args.root)), stat=args.stat, rule=args.rule, kind=args.kind,
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


def register(sub) -> None:
    p = sub.add_parser("select", help="choose layers for IE-Adapt from stored statistics or sweep effects")
    p.add_argument("--root", help=f"trace root (default ${ROOT_ENV} or data/traces)")
    p.add_argument("--runs", nargs="+", help="calibration runs (default: every complete unperturbed run)")
    p.add_argument("--stat", default="entropy_norm",
                   help="entropy_norm, entropy, energy, energy_proportion or effect:SWEEP:METRIC[:I|U]")
    p.add_argument("--rule", default="bottom:0.5", help="top:F, bottom:F, threshold:>=X, threshold:<=X, names:a,b")
    p.add_argument("--kind", help="spatial, temporal, cross or joint (default: all kinds together)")
    p.add_argument("--branch", default="cond")
    p.add_argument("--model", help="model name to record (default: the source runs' model)")
    p.add_argument("-o", "--output", default="-", help="selection JSON file (default: print it)")
    p.set_defaults(func=cmd_select)
