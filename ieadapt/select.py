"""Layer selection for IE-Adapt (SPEC §5.1): rank layers by a statistic of calibration runs or by a
measured perturbation effect of a sweep, choose by rule, per layer kind, and write the selection
file (``capture.selection``: the same format the dashboard exports and ``apply`` reads).

Statistics are ranked exactly as the dashboard's Layer selection view ranks them: the same query
(``capture.ranking``: heads averaged per step, then steps, then runs; one branch, part "all") over
the same files, run on the catalog as plain rows, so ``attnlens select`` never imports pandas.
``energy_proportion`` is a layer's energy over the total energy of its kind. ``effect:SWEEP:METRIC``
ranks by a sweep's mean per-layer effect (``capture.effects``), e.g. ``effect:paper-study:ssim_mean``
(optionally ``:I`` or ``:U`` to take one perturbation, else the mean over them).

Torch-free; pandas is imported only for a sweep's effects and by ``layer_values``.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import TYPE_CHECKING

from capture import dims, ranking
from capture.catalog import STATS_FILE
from capture.selection import Selection, SelectionError, apply_rule

if TYPE_CHECKING:  # pandas only for a sweep's effects and for layer_values' frame
    import pandas as pd

STATS = (dims.ENTROPY_NORM, dims.ENTROPY, dims.ENERGY, "energy_proportion")


def _catalog(source):
    """The capture.catalog.Catalog of a catalog or of a dashboard.data.TraceRoot."""
    return getattr(source, "catalog", source)


def _in_runs(column: str = "run") -> str:
    return f"{column} IN (SELECT unnest(?::VARCHAR[]))"


def layer_rows(source, stat: str, runs: list[str] | None = None, *, branch: str = "cond",
               model: str | None = None) -> tuple[list[tuple[str, str, float]], list[str]]:
    """(layer_name, kind, value) per layer for ``stat``, in model order, and the source runs used
    (only ``model``'s runs when given). ``source``: a Catalog or a dashboard.data.TraceRoot."""
    cat = _catalog(source)
    if stat.startswith("effect:"):
        return _effect_rows(cat, stat, model)
    if stat not in STATS:
        raise SelectionError(f"unknown statistic {stat!r}; one of {', '.join(STATS)}, effect:SWEEP:METRIC")
    complete = set(cat.rows("SELECT run FROM runs WHERE state = ?", [dims.COMPLETE]).column("run"))
    if not runs:  # default: every complete unperturbed run that is not an IE-Adapt method run (plain CFG ones count)
        runs = cat.rows("""SELECT run FROM runs WHERE state = ? AND coalesce(perturbation, '') = ''
                           AND sweep_layers IS NULL AND coalesce(ieadapt, 'cfg') = 'cfg'
                           AND (? IS NULL OR model = ?) ORDER BY run""", [dims.COMPLETE, model, model]).column("run")
        if not runs and model is not None:
            raise SelectionError(f"no complete unperturbed runs of model {model!r} in {cat.root}")
    missing = [r for r in runs if r not in complete]
    if missing:
        raise SelectionError(f"no complete run {missing[0]!r} in {cat.root}")
    if not runs:
        raise SelectionError(f"no complete runs in {cat.root}")
    _check_model(cat, runs, model)
    paths = dict(cat.rows(f"SELECT run, path FROM runs WHERE {_in_runs()}", [list(runs)]).data)
    files = []
    for r in runs:  # the same files, in the same order, as the dashboard's per-layer views read
        f = Path(paths[r]) / STATS_FILE
        if not f.is_file():
            raise SelectionError(f"run {r} has no statistics table ({STATS_FILE}); rebuild the catalog")
        files.append(str(f))
    base = dims.ENERGY if stat == "energy_proportion" else stat
    sql, params = ranking.per_layer_sql(ranking.files_source(files), base, branch=branch)
    got = cat.rows(sql, params)
    vals = [(r[1], r[2], float(r[3])) for r in got.data]
    if stat == "energy_proportion":  # a layer's share of the energy of its kind
        totals: dict[str, float] = {}
        for _, kind, v in vals:
            totals[kind] = totals.get(kind, 0.0) + v
        vals = [(n, kind, v / totals[kind] if totals[kind] else math.nan) for n, kind, v in vals]
    return vals, list(runs)


def _effect_rows(cat, stat: str, model: str | None) -> tuple[list[tuple[str, str, float]], list[str]]:
    """``effect:SWEEP:METRIC[:PERTURBATION]``: a sweep's mean per-layer effect (capture.effects)."""
    from capture import effects as E

    parts = stat.split(":")
    if len(parts) not in (3, 4):
        raise SelectionError(f"statistic {stat!r}: write effect:SWEEP:METRIC[:PERTURBATION]")
    sweep, metric = parts[1], parts[2]
    summ = E.layer_summary(E.layer_effects(cat, sweep))
    if summ.empty:
        raise SelectionError(f"sweep {sweep!r} has no measured one-layer runs in {cat.root}")
    d = summ[summ["metric"] == metric]
    if d.empty:
        raise SelectionError(f"sweep {sweep!r} has no metric {metric!r}; it has "
                             f"{', '.join(sorted(set(summ['metric'])))}")
    if len(parts) == 4:
        d = d[d["perturbation"] == parts[3]]
        if d.empty:
            raise SelectionError(f"sweep {sweep!r} has no perturbation {parts[3]!r}")
    vals = d.groupby(["layer_name", "kind"], as_index=False)["effect"].mean()
    src = cat.rows("SELECT run FROM runs WHERE sweep = ? AND status = ? ORDER BY run", [sweep, dims.COMPLETE]).column("run")
    _check_model(cat, src, model)
    return [(n, k, float(v)) for n, k, v in zip(vals["layer_name"], vals["kind"], vals["effect"])], src


def layer_values(source, stat: str, runs: list[str] | None = None, *, branch: str = "cond",
                 model: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """``layer_rows`` as a DataFrame (columns layer_name, kind, value) and the source runs."""
    import pandas as pd

    vals, src = layer_rows(source, stat, runs, branch=branch, model=model)
    return pd.DataFrame(vals, columns=["layer_name", "kind", "value"]), src


def _check_model(cat, runs: list[str], model: str | None) -> None:
    """With a model named, every source run must be that model's: a selection is never pooled
    across models under one model's label."""
    if model is None:
        return
    other = cat.rows(f"""SELECT run, model FROM runs WHERE {_in_runs()} AND (model IS NULL OR model <> ?)
                         ORDER BY created, run LIMIT 1""", [list(runs), model]).data
    if other:
        raise SelectionError(f"run {other[0][0]} is of model {other[0][1]!r}, not {model!r}")


def select(source, *, stat: str, rule: str, kind: str | None = None, runs: list[str] | None = None,
           branch: str = "cond", model: str | None = None) -> Selection:
    """The selection ``rule`` makes among the ranked layers (of ``kind`` when given); with
    ``model``, from that model's runs only. ``source``: a Catalog or a dashboard.data.TraceRoot."""
    cat = _catalog(source)
    vals, src = layer_rows(cat, stat, runs, branch=branch, model=model)
    if kind is not None:
        kinds_present = sorted({k for _, k, _ in vals})
        if kind not in kinds_present:
            raise SelectionError(f"no {kind} layers to select from; kinds here: {', '.join(kinds_present)}")
    values = {n: v for n, _, v in vals}
    kinds = {n: k for n, k, _ in vals}
    layers = apply_rule(values, kinds, rule, kind)
    if not layers:
        raise SelectionError(f"rule {rule!r} selects no layer" + (f" of kind {kind}" if kind else ""))
    if model is None:
        models = sorted(str(m) for m in cat.rows(f"SELECT DISTINCT model FROM runs WHERE {_in_runs()} "
                                                 "AND model IS NOT NULL", [list(src)]).column("model"))
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
