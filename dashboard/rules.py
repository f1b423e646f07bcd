"""The dashboard's recorded choices (SPEC §4.4), each a named option shown in the UI and saved
with every export: how heads and steps are aggregated, the proportion formulas, the red-line rule
and the threshold rules for attention maps.

Pure numpy/pandas; no streamlit, no torch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# How a layer's value at one step is formed from its heads.
HEAD_AGG = {"mean": "mean over heads", "max": "max over heads", "min": "min over heads"}
# How per-step values become one value per layer.
STEP_AGG = {"mean": "mean over steps", "median": "median over steps", "max": "max over steps", "min": "min over steps"}

# Proportion formulas: value of a layer relative to others.
PROPORTIONS = {
    "share_of_kind": "value / sum of values over layers of the same kind",
    "share_of_all": "value / sum of values over all layers",
    "minmax_of_kind": "(value - min) / (max - min) over layers of the same kind",
}
# Red-line rules: where the line between "top" and "bottom" layers lies.
RED_LINES = {
    "median": "median of the layers of the same kind (top 50 % / bottom 50 %)",
    "mean": "mean of the layers of the same kind",
}
# Threshold rules for attention maps.
THRESHOLDS = {
    "absolute": "keep entries >= t",
    "quantile": "keep entries >= the q-quantile of the map",
    "mean_std": "keep entries >= mean + k * std of the map",
}


def proportion(values: pd.Series, kinds: pd.Series, formula: str) -> pd.Series:
    """Per-layer proportion of ``values`` (index-aligned with ``kinds``) under a named formula."""
    if formula == "share_of_all":
        return values / values.sum()
    if formula == "share_of_kind":
        return values / values.groupby(kinds).transform("sum")
    if formula == "minmax_of_kind":
        g = values.groupby(kinds)
        lo, hi = g.transform("min"), g.transform("max")
        span = (hi - lo).where(hi > lo)
        return ((values - lo) / span).fillna(0.5)
    raise ValueError(f"unknown proportion formula {formula!r}; choose one of {sorted(PROPORTIONS)}")


def red_line(values: pd.Series, kinds: pd.Series, rule: str) -> pd.Series:
    """The red line's height for each layer (the value of its kind's split)."""
    if rule not in RED_LINES:
        raise ValueError(f"unknown red-line rule {rule!r}; choose one of {sorted(RED_LINES)}")
    return values.groupby(kinds).transform(rule)


def threshold_value(m: np.ndarray, rule: str, param: float) -> float:
    """The cut-off of a map under a named threshold rule (NaNs ignored)."""
    v = m[np.isfinite(m)]
    if v.size == 0:
        return float("nan")
    if rule == "absolute":
        return float(param)
    if rule == "quantile":
        if not 0.0 <= param <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], not {param}")
        return float(np.quantile(v, param))
    if rule == "mean_std":
        return float(v.mean() + param * v.std())
    raise ValueError(f"unknown threshold rule {rule!r}; choose one of {sorted(THRESHOLDS)}")


def apply_threshold(m: np.ndarray, rule: str, param: float) -> np.ndarray:
    """The map with entries below the cut-off set to 0 (the paper's Figure 3 "threshold" view)."""
    t = threshold_value(m, rule, param)
    return np.where(m >= t, m, 0.0)
