"""Layer selection for IE-Adapt (SPEC §5.1): rank layers by a statistic of calibration runs or by a
measured perturbation effect of a sweep, choose by rule, per layer kind, and write the selection
file (``capture.selection``: the same format the dashboard exports and ``apply`` reads).

Statistics are ranked exactly as the dashboard's Layer selection view ranks them (its
``TraceRoot.per_layer``: heads averaged per step, then steps, then runs; one branch, part "all").
``energy_proportion`` is a layer's energy over the total energy of its kind. ``effect:SWEEP:METRIC``
ranks by a sweep's mean per-layer effect (``capture.effects``), e.g. ``effect:paper-study:ssim_mean``
(optionally ``:I`` or ``:U`` to take one perturbation, else the mean over them).

Torch-free.
"""

from __future__ import annotations

import difflib

import pandas as pd

from capture import dims
from capture import effects as E
from capture.selection import Selection, SelectionError, apply_rule

STATS = (dims.ENTROPY_NORM, dims.ENTROPY, dims.ENERGY, "energy_proportion")


def layer_values(tr, stat: str, runs: list[str] | None = None, *, branch: str = "cond",
                 model: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """(layer_name, kind, value) rows for ``stat`` and the source runs used (only ``model``'s runs
    when given). ``tr`` is a ``dashboard.data.TraceRoot``."""
    if stat.startswith("effect:"):
        parts = stat.split(":")
        if len(parts) not in (3, 4):
            raise SelectionError(f"statistic {stat!r}: write effect:SWEEP:METRIC[:PERTURBATION]")
        sweep, metric = parts[1], parts[2]
        summ = E.layer_summary(E.layer_effects(tr.catalog, sweep))
        if summ.empty:
            raise SelectionError(f"sweep {sweep!r} has no measured one-layer runs in {tr.root}")
        d = summ[summ["metric"] == metric]
        if d.empty:
            raise SelectionError(f"sweep {sweep!r} has no metric {metric!r}; it has "
                                 f"{', '.join(sorted(set(summ['metric'])))}")
        if len(parts) == 4:
            d = d[d["perturbation"] == parts[3]]
            if d.empty:
                raise SelectionError(f"sweep {sweep!r} has no perturbation {parts[3]!r}")
        vals = d.groupby(["layer_name", "kind"], as_index=False)["effect"].mean().rename(columns={"effect": "value"})
        src = list(tr.catalog.query("SELECT run FROM runs WHERE sweep = ? AND status = ? ORDER BY run",
                                    [sweep, dims.COMPLETE])["run"])
        _check_model(tr, src, model)
        return vals, src
    if stat not in STATS:
        raise SelectionError(f"unknown statistic {stat!r}; one of {', '.join(STATS)}, effect:SWEEP:METRIC")
    complete = list(tr.runs(status=[dims.COMPLETE])["run"])
    if not runs:  # default: every complete unperturbed run that is not an IE-Adapt method run (plain CFG ones count)
        runs = list(tr.catalog.query(f"""SELECT run FROM runs WHERE status = '{dims.COMPLETE}'
                                        AND coalesce(perturbation, '') = '' AND sweep_layers IS NULL
                                        AND coalesce(ieadapt, 'cfg') = 'cfg'
                                        AND (? IS NULL OR model = ?) ORDER BY run""", [model, model])["run"])
        if not runs and model is not None:
            raise SelectionError(f"no complete unperturbed runs of model {model!r} in {tr.root}")
    missing = [r for r in runs if r not in complete]
    if missing:
        raise SelectionError(f"no complete run {missing[0]!r} in {tr.root}")
    if not runs:
        raise SelectionError(f"no complete runs in {tr.root}")
    _check_model(tr, runs, model)
    base = dims.ENERGY if stat == "energy_proportion" else stat
    vals = tr.per_layer(runs, base, branch=branch)[["layer_name", "kind", "value"]]
    if stat == "energy_proportion":
        vals = vals.assign(value=vals["value"] / vals.groupby("kind")["value"].transform("sum"))
    return vals, runs


def _check_model(tr, runs: list[str], model: str | None) -> None:
    """With a model named, every source run must be that model's: a selection is never pooled
    across models under one model's label."""
    if model is None:
        return
    r = tr.runs()
    other = r[r["run"].isin(runs) & (r["model"].astype(str) != model)]
    if len(other):
        raise SelectionError(f"run {other['run'].iloc[0]} is of model {other['model'].iloc[0]!r}, not {model!r}")


def select(tr, *, stat: str, rule: str, kind: str | None = None, runs: list[str] | None = None,
           branch: str = "cond", model: str | None = None) -> Selection:
    """The selection ``rule`` makes among the ranked layers (of ``kind`` when given); with
    ``model``, from that model's runs only."""
    vals, src = layer_values(tr, stat, runs, branch=branch, model=model)
    if kind is not None:
        kinds_present = sorted(set(vals["kind"]))
        if kind not in kinds_present:
            raise SelectionError(f"no {kind} layers to select from; kinds here: {', '.join(kinds_present)}")
    values = dict(zip(vals["layer_name"], vals["value"]))
    kinds = dict(zip(vals["layer_name"], vals["kind"]))
    layers = apply_rule(values, kinds, rule, kind)
    if not layers:
        raise SelectionError(f"rule {rule!r} selects no layer" + (f" of kind {kind}" if kind else ""))
    if model is None:
        models = sorted(set(tr.runs()[lambda r: r["run"].isin(src)]["model"].dropna().astype(str)))
        if len(models) > 1:
            raise SelectionError(f"the source runs come from several models ({', '.join(models)}); give --model")
        model = models[0] if models else "unknown"
    return Selection(model=model, layers=layers, rule=rule, statistic=stat, kind=kind, source_runs=src,
                     values={n: values[n] for n in layers},
                     options={"branch": branch, "head_agg": "mean", "step_agg": "mean", "part": "all"})


def check_layers(selection: Selection, available, model: str | None = None) -> None:
    """Raise a one-line SelectionError if the selection was made for another model or names layers
    that ``available`` (the target model's qualified layer names) lacks, naming the nearest ones."""
    available = list(available)
    if model is not None and selection.model != model:
        raise SelectionError(f"the selection was made for model {selection.model!r}, not {model!r}")
    for name in selection.layers:
        if name not in available:
            near = difflib.get_close_matches(name, available, n=3, cutoff=0.0)
            raise SelectionError(f"layer {name!r} is not in the model; nearest: {', '.join(near)}")
