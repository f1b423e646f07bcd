"""Run attributes in words for tables and captions (a perturbation or capture config is a dict in
the store; people read sentences). No streamlit, no torch."""

from __future__ import annotations

from capture.perturb_spec import PerturbSpec, PerturbSpecError


def perturbation(value) -> str:
    """A run's ``perturbation`` attribute (a list of spec dicts, or spec strings) in words."""
    specs = value if isinstance(value, (list, tuple)) else ([value] if value else [])
    out = []
    for s in specs:
        text = s.get("spec") if isinstance(s, dict) else str(s)
        try:
            out.append(PerturbSpec.parse(text).describe())
        except (PerturbSpecError, TypeError):
            out.append(str(text))
    return "; ".join(out) if out else "none"


def capture(value) -> str:
    """A run's ``capture`` attribute in words: mode, layers, steps and maps."""
    if not isinstance(value, dict):
        return "" if value is None else str(value)
    layers = value.get("layers") or ["self"]
    parts = [f"{value.get('mode', 'exact')} statistics", "layers " + ", ".join(map(str, layers))]
    every = value.get("every") or 1
    steps = value.get("steps")
    parts.append(("every step" if every == 1 else f"every {every} steps")
                 + (f" of {steps[0]}–{steps[1]}" if steps else ""))
    if value.get("sample_rows"):
        parts.append(f"{value['sample_rows']} sampled rows")
    maps_every = value.get("maps_every") or 1
    parts.append(f"maps on ≤ {value.get('grid', 8)}×{value.get('grid', 8)} cells"
                 + ("" if maps_every == 1 else f" every {maps_every} steps") if value.get("maps", True) else "no maps")
    return ", ".join(parts)


FORMATTERS = {"perturbation": perturbation, "capture": capture}


def attribute(key: str, value) -> str:
    """One attribute's value for a table cell."""
    if key in FORMATTERS:
        return FORMATTERS[key](value)
    return "" if value is None else str(value)
