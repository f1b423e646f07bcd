"""Layer selections: ranking layers by a per-layer value, selection rules, and the selection file.

A selection file is JSON written by the dashboard's Layer selection view and by ``attnlens select``
and read by ``attnlens apply``; one format for all three::

    {"format": "attnlens.selection/1", "model": ..., "layers": [exact qualified names],
     "rule": "top:0.5", "statistic": "entropy_norm", "kind": "spatial" | null,
     "source_runs": [...], "options": {...recorded choices...}, "values": {name: value}, "created": ...}

Must not import torch (the dashboard uses it).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT = "attnlens.selection/1"

RULES = {
    "top": "top:F — the fraction F of layers with the highest values (per kind when a kind is chosen)",
    "bottom": "bottom:F — the fraction F of layers with the lowest values",
    "threshold": "threshold:>=X or threshold:<=X — layers whose value passes the bound",
    "names": "names:a,b,... — exactly these layers (hand-picked)",
}


class SelectionError(ValueError):
    """A rule or a selection file that cannot be used; the message is one line for the user."""


@dataclass
class Selection:
    model: str
    layers: list[str]
    rule: str
    statistic: str
    kind: str | None = None
    source_runs: list[str] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    created: str = ""
    format: str = FORMAT

    def to_json(self) -> str:
        d = asdict(self)
        d["created"] = d["created"] or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        d["values"] = {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v))
                       for k, v in d["values"].items()}
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Selection":
        try:
            d = json.loads(text)
        except ValueError as e:
            raise SelectionError(f"not a selection file (invalid JSON: {e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise SelectionError(f"not a selection file (format is not {FORMAT!r})")
        missing = [k for k in ("model", "layers", "rule", "statistic") if k not in d]
        if missing:
            raise SelectionError(f"selection file lacks {', '.join(missing)}")
        if not isinstance(d["layers"], list) or not all(isinstance(n, str) for n in d["layers"]):
            raise SelectionError("selection file's 'layers' must be a list of layer names")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path) -> Path:
        p = Path(path)
        p.write_text(self.to_json())
        return p

    @classmethod
    def load(cls, path) -> "Selection":
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise SelectionError(f"cannot read selection file {path}: {e.strerror}") from None
        return cls.from_json(text)

    def pag_applied_layers(self) -> list[str]:
        return pag_applied_layers(self.layers)


def pag_applied_layers(names) -> list[str]:
    """diffusers' ``pag_applied_layers`` selecting exactly these modules: PAG matches each entry
    with ``re.search`` against module names, so each name is escaped and anchored."""
    return ["^" + re.escape(n) + "$" for n in names]


def parse_rule(rule: str) -> tuple[str, object]:
    """'top:0.5' -> ('top', 0.5); 'threshold:>=0.6' -> ('threshold', ('>=', 0.6)); 'names:a,b' ->
    ('names', ['a', 'b'])."""
    name, sep, arg = rule.partition(":")
    if name not in RULES or not sep:
        raise SelectionError(f"unknown rule {rule!r}; rules: top:F, bottom:F, threshold:>=X, threshold:<=X, names:a,b")
    if name in ("top", "bottom"):
        try:
            frac = float(arg)
        except ValueError:
            raise SelectionError(f"rule {rule!r}: {arg!r} is not a fraction") from None
        if not 0.0 < frac <= 1.0:
            raise SelectionError(f"rule {rule!r}: the fraction must be in (0, 1]")
        return name, frac
    if name == "threshold":
        m = re.fullmatch(r"\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*", arg)
        if not m:
            raise SelectionError(f"rule {rule!r}: write threshold:>=X or threshold:<=X")
        return name, (m.group(1), float(m.group(2)))
    names = [n.strip() for n in arg.split(",") if n.strip()]
    if not names:
        raise SelectionError(f"rule {rule!r} names no layers")
    return name, names


def apply_rule(values: dict[str, float], kinds: dict[str, str], rule: str, kind: str | None = None) -> list[str]:
    """Layers chosen by ``rule`` among ``values`` (layer name -> value; NaN values never chosen),
    restricted to ``kind`` when given. Top/bottom fractions round to the nearest count, at least
    one layer. Returned in descending value order for top/threshold, ascending for bottom, given
    order for names."""
    name, arg = parse_rule(rule)
    pool = {n: v for n, v in values.items() if kind is None or kinds.get(n) == kind}
    if name == "names":
        unknown = [n for n in arg if n not in pool]
        if unknown:
            raise SelectionError(f"unknown layer {unknown[0]!r}" + (f" (not of kind {kind})" if kind else ""))
        return list(arg)
    finite = {n: v for n, v in pool.items() if v is not None and not math.isnan(v)}
    if name in ("top", "bottom"):
        order = sorted(finite, key=lambda n: (finite[n], n), reverse=(name == "top"))
        k = max(1, round(arg * len(order))) if order else 0
        return order[:k]
    op, x = arg
    test = {">=": x.__le__, "<=": x.__ge__, ">": x.__lt__, "<": x.__gt__}[op]
    return sorted((n for n, v in finite.items() if test(v)), key=lambda n: (-finite[n], n))
