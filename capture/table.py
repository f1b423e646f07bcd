"""Query results as plain rows, and their text and JSON forms for the command line.

``attnlens runs``, ``sql`` and ``select`` answer in a fraction of a second only if they never
import pandas (about 0.4 s with pyarrow, more than the query itself on a 2,000-run root), so the
catalog hands the CLI a ``Rows`` (column names and tuples, straight from DuckDB) and this module
prints it. Must not import pandas, numpy or torch.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import json
import math
from dataclasses import dataclass

MAX_WIDTH = 60  # a longer cell is cut, as pandas' display.max_colwidth did


@dataclass(frozen=True)
class Rows:
    """A query's result: ``columns`` names, ``data`` one tuple per row."""

    columns: tuple[str, ...]
    data: list[tuple]

    @classmethod
    def of(cls, result) -> "Rows":
        """From an executed DuckDB cursor or relation."""
        return cls(tuple(d[0] for d in result.description), result.fetchall())

    @classmethod
    def from_frame(cls, df) -> "Rows":
        """From a pandas DataFrame (missing values become None)."""
        cols = tuple(str(c) for c in df.columns)
        data = [tuple(None if _missing(v) else v for v in row) for row in df.itertuples(index=False, name=None)]
        return cls(cols, data)

    def column(self, name: str) -> list:
        i = self.columns.index(name)
        return [r[i] for r in self.data]

    def records(self) -> list[dict]:
        return [dict(zip(self.columns, r)) for r in self.data]

    def __len__(self) -> int:
        return len(self.data)


def _missing(v) -> bool:
    if v is None:
        return True
    try:
        return bool(v != v)  # NaN, pandas' NA and NaT
    except (TypeError, ValueError):
        return False


def _jsonable(v):
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (_dt.datetime, _dt.date, _dt.time)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if v is None or isinstance(v, (str, int, bool)):
        return v
    if _missing(v):
        return None
    if hasattr(v, "item"):  # a numpy scalar
        return _jsonable(v.item())
    return str(v)


def to_json(rows: Rows) -> str:
    """One JSON object per row; NULL, NaN and infinities as null, times in ISO 8601."""
    return json.dumps([{c: _jsonable(v) for c, v in zip(rows.columns, r)} for r in rows.data], indent=1)


def _cell(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return "NaN" if v != v else f"{v:.6g}"
    if isinstance(v, (_dt.datetime, _dt.date, _dt.time)):
        return v.isoformat(sep=" ") if isinstance(v, _dt.datetime) else v.isoformat()
    text = str(v).replace("\n", " ")
    return text if len(text) <= MAX_WIDTH else text[:MAX_WIDTH - 3] + "..."


def to_text(rows: Rows) -> str:
    """An aligned table: numbers right-aligned, text left-aligned, NULL for missing values."""
    if not rows.data:
        return "(no rows)"
    cells = [[_cell(v) for v in r] for r in rows.data]
    numeric = [all(r[i] is None or (isinstance(r[i], (int, float, decimal.Decimal)) and not isinstance(r[i], bool))
                   for r in rows.data) for i in range(len(rows.columns))]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(rows.columns)]

    def line(values):
        out = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(out).rstrip()

    return "\n".join([line(rows.columns), *(line(r) for r in cells)])
