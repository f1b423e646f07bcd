"""One value per layer from the statistics tables: heads aggregated per step, then steps, then the
mean over runs. This is the SQL that the dashboard's per-layer views (``TraceRoot.per_layer``) and
``attnlens select`` share, so a selection ranks layers exactly as the dashboard shows them.

Builds queries only; callers run them (as a DataFrame or as plain rows). Must not import pandas,
numpy or torch.
"""

from __future__ import annotations

from . import dims

# SQL aggregate of each named aggregation (the names are dashboard.rules.HEAD_AGG / STEP_AGG)
HEAD_AGG_SQL = {"mean": "avg", "max": "max", "min": "min"}
STEP_AGG_SQL = {"mean": "avg", "median": "median", "max": "max", "min": "min"}


def _literal(value) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def files_source(paths) -> str:
    """A FROM item over the given statistics files (one run's stats.parquet each)."""
    return "read_parquet([" + ", ".join(_literal(p) for p in paths) + "])"


def per_layer_sql(src: str, stat: str, *, step: int | None = None, branch: str = "cond", part: str = "all",
                  head_agg: str = "mean", step_agg: str = "mean") -> tuple[str, list]:
    """(sql, params) giving columns layer, layer_name, kind, value, runs, one row per layer in model
    order; NULL and NaN values are left out. ``src``: a FROM item (``files_source``)."""
    if stat not in dims.SCALAR_STATS:
        raise ValueError(f"unknown statistic {stat!r}; choose one of {list(dims.SCALAR_STATS)}")
    for name, options in ((head_agg, HEAD_AGG_SQL), (step_agg, STEP_AGG_SQL)):
        if name not in options:
            raise ValueError(f"unknown option {name!r}; choose one of {sorted(options)}")
    hagg, sagg = HEAD_AGG_SQL[head_agg], STEP_AGG_SQL[step_agg]
    where = f"{dims.BRANCH} = ? AND {dims.PART} = ? AND {stat} IS NOT NULL AND NOT isnan({stat})"
    params: list = [branch, part]
    if step is not None:
        where += f" AND {dims.STEP} = ?"
        params.append(int(step))
    sql = f"""WITH h AS (SELECT run, {dims.LAYER}, {dims.LAYER_NAME}, kind, {dims.STEP}, {hagg}({stat}) AS v
                         FROM {src} WHERE {where} GROUP BY ALL),
                   s AS (SELECT run, {dims.LAYER}, {dims.LAYER_NAME}, kind, {sagg}(v) AS v FROM h GROUP BY ALL)
              SELECT min({dims.LAYER}) AS {dims.LAYER}, {dims.LAYER_NAME}, kind, avg(v) AS value,
                     count(*) AS runs
              FROM s GROUP BY {dims.LAYER_NAME}, kind ORDER BY 1"""
    return sql, params
