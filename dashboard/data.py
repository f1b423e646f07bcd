"""Data access for the dashboard: DuckDB queries over a trace root's catalog and lazy map reads.

Scalar queries read only the ``stats.parquet`` files of the runs they concern (one small file per
run), so their cost does not grow with the size of the root; maps are read one (step, layer)
chunk at a time straight from the run's Zarr store. Everything is resolved inside the root given
to ``TraceRoot``; a run id that would leave it is refused.

Plain Python: no streamlit, no torch.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from capture import dims
from capture import effects, ranking
from capture.catalog import STATS_FILE, Catalog
from capture.store import RUNS_DIR, STORE_NAME, StoreError, read_attrs

from . import rules

# a run id is its directory's name: one path component (people copy runs as "run (1)" or
# "it's a run"); where it leads is checked in run_dir (no symlink, inside <root>/runs)
_RUN_ID = re.compile(r"^(?!\.\.?\Z)[^/\\\x00-\x1f]+\Z")
STATS = {dims.ENTROPY: "entropy (nats)", dims.ENTROPY_NORM: "normalized entropy", dims.ENERGY: "energy",
         dims.VALUE_ENERGY: "value energy", dims.MASS: "mass in part"}
KIND_ORDER = {k: i for i, k in enumerate(dims.KINDS)}


class RunUnavailable(Exception):
    """A run that cannot be shown (incomplete, failed, unreadable, unknown); one-line message."""


@dataclass
class MapData:
    """One stored attention map: ``kind`` 'spatial' (query/key cells of a gy x gx grid) or
    'temporal' (query/key frames), a joint layer's too; rows sum to 1."""
    kind: str
    values: np.ndarray  # (q, k)
    gy: int
    gx: int


class TraceRoot:
    """One trace root, read-only."""

    def __init__(self, root):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"trace root {self.root} does not exist")
        self.catalog = Catalog(self.root)
        self._groups: dict[str, object] = {}
        self._runs: dict[tuple, pd.DataFrame] = {}  # runs() results for the catalog as last read
        self._lock = threading.Lock()

    def refresh(self) -> None:
        self.catalog.refresh()
        with self._lock:
            self._groups.clear()
            self._runs.clear()

    def _q(self, sql: str, params=None) -> pd.DataFrame:
        return self.catalog.query(sql, params)

    # -- runs -----------------------------------------------------------------------------------
    def runs(self, *, model=None, prompt=None, seed=None, perturbation=None, status=None) -> pd.DataFrame:
        """The runs table, filtered: ``model``/``status`` lists of values, ``prompt`` a substring
        (case-insensitive), ``seed`` a list of ints, ``perturbation`` 'none', 'any' or a substring
        (of the perturbation specs or the IE-Adapt method label)."""
        where, params = [], []
        if model:
            where.append("model IN (SELECT unnest(?::VARCHAR[]))")
            params.append(list(model))
        if status:
            where.append("state IN (SELECT unnest(?::VARCHAR[]))")
            params.append(list(status))
        if prompt:
            where.append("prompt ILIKE ?")
            params.append(f"%{prompt}%")
        if seed:
            where.append("seed IN (SELECT unnest(?::BIGINT[]))")
            params.append([int(s) for s in seed])
        if perturbation == "none":
            where.append("coalesce(perturbation, '') = ''")
        elif perturbation == "any":
            where.append("coalesce(perturbation, '') <> ''")
        elif perturbation:
            where.append("(perturbation ILIKE ? OR ieadapt ILIKE ?)")
            params += [f"%{perturbation}%"] * 2
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created, run"
        # every view asks for the runs table on every script run (pickers, labels): the same answer
        # until the catalog is read again, so it is queried once per filter (a copy each time:
        # callers may change their frame)
        key = (sql, repr(params))
        with self._lock:
            got = self._runs.get(key)
        if got is None:
            got = self._q(sql, params)
            with self._lock:
                if len(self._runs) > 64:
                    self._runs.clear()
                self._runs[key] = got
        return got.copy()

    def run_dir(self, run_id: str) -> Path:
        if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
            raise RunUnavailable(f"{run_id!r} is not a run id")
        link = self.root / RUNS_DIR / run_id
        d = link.resolve()
        if link.is_symlink() or d.parent != (self.root / RUNS_DIR).resolve() or not d.is_dir():
            raise RunUnavailable(f"no run {run_id} in this trace root")
        return d

    def attrs(self, run_id: str) -> dict:
        try:
            return read_attrs(self.run_dir(run_id) / STORE_NAME)
        except StoreError as e:
            raise RunUnavailable(str(e)) from None

    def _complete(self, run_id: str) -> Path:
        """The run's stats file; RunUnavailable saying why a run cannot be read."""
        d = self.run_dir(run_id)
        row = self._q("SELECT state, error FROM runs WHERE run = ?", [run_id])
        state = row["state"].iloc[0] if len(row) else None
        if state is None:
            self.refresh()  # a run created since the catalog was built
            row = self._q("SELECT state, error FROM runs WHERE run = ?", [run_id])
            state = row["state"].iloc[0] if len(row) else "unknown"
        if state != dims.COMPLETE:
            why = {"running": "is still being captured", "interrupted": "was interrupted before it completed",
                   "failed": "failed", "unreadable": "cannot be read"}.get(state, f"has status {state}")
            err = row["error"].iloc[0] if len(row) else None
            raise RunUnavailable(f"run {run_id} {why}" + (f": {err}" if isinstance(err, str) and err else ""))
        f = d / STATS_FILE
        if not f.is_file():
            raise RunUnavailable(f"run {run_id} has no statistics table ({STATS_FILE}); rebuild the catalog")
        return f

    def _src(self, run_ids) -> str:
        if isinstance(run_ids, str):
            run_ids = [run_ids]
        if not run_ids:
            raise RunUnavailable("no runs chosen")
        return ranking.files_source(str(self._complete(r)) for r in run_ids)

    # -- per-run structure ----------------------------------------------------------------------
    def layers(self, run_id: str) -> pd.DataFrame:
        """layer, layer_name, kind, block of one run, in the model's order."""
        return self._q(f"SELECT DISTINCT {dims.LAYER}, {dims.LAYER_NAME}, kind, block FROM {self._src(run_id)} "
                       f"ORDER BY {dims.LAYER}")

    def steps(self, run_id: str) -> pd.DataFrame:
        return self._q(f"SELECT DISTINCT {dims.STEP}, {dims.TIMESTEP} FROM {self._src(run_id)} ORDER BY {dims.STEP}")

    def map_steps(self, run_id: str) -> list[int]:
        """The captured steps that hold maps: every one, unless the run was captured with
        ``maps_every`` K > 1 (then the multiples of K)."""
        k = self._group(run_id)["maps_every"]
        return [int(s) for s in self.steps(run_id)[dims.STEP] if int(s) % k == 0]

    def branches(self, run_id: str) -> list[str]:
        df = self._q(f"SELECT DISTINCT {dims.BRANCH} FROM {self._src(run_id)}")
        return sorted(df[dims.BRANCH], key=lambda b: (b != "cond", b))

    def heads(self, run_id: str) -> int:
        return int(self._q(f"SELECT max({dims.HEAD}) + 1 AS n FROM {self._src(run_id)}")["n"].iloc[0])

    # -- scalar statistics ----------------------------------------------------------------------
    def layer_step(self, run_id: str, stat: str, *, branch: str = "cond", part: str = "all", head: int | None = None,
                   head_agg: str = "mean") -> pd.DataFrame:
        """Long form (layer, layer_name, kind, step, timestep, value): one head, or heads aggregated."""
        _check_stat(stat)
        agg = _agg_sql(head_agg, rules.HEAD_AGG)
        where = f"{dims.BRANCH} = ? AND {dims.PART} = ?" + (f" AND {dims.HEAD} = ?" if head is not None else "")
        params = [branch, part] + ([int(head)] if head is not None else [])
        return self._q(
            f"SELECT {dims.LAYER}, {dims.LAYER_NAME}, kind, {dims.STEP}, {dims.TIMESTEP}, {agg}({stat}) AS value "
            f"FROM {self._src(run_id)} WHERE {where} AND {stat} IS NOT NULL AND NOT isnan({stat}) "
            f"GROUP BY ALL ORDER BY {dims.LAYER}, {dims.STEP}", params)

    def layer_step_diff(self, run_a: str, run_b: str, stat: str, **kw) -> pd.DataFrame:
        """value(a) − value(b) per layer name at the denoising steps both runs have, matched as
        :meth:`step_match` says (by timestep where both runs recorded theirs); rows keep run a's
        step and timestep."""
        key = self.step_match(run_a, run_b)["by"]
        a = self.layer_step(run_a, stat, **kw)
        b = self.layer_step(run_b, stat, **kw)
        m = a.merge(b[[dims.LAYER_NAME, key, "value"]], on=[dims.LAYER_NAME, key], suffixes=("_a", "_b"))
        m["value"] = m["value_a"] - m["value_b"]
        return m

    def step_match(self, run_a: str, run_b: str) -> dict:
        """How two runs' steps pair up for a difference. By timestep where both runs recorded one
        at every step, each at one step only: runs of different step counts, or captured every
        k-th step, reach the same noise level at different step indices (and share only some
        timesteps, or none); else by captured step index. Returns by (the column matched), steps_a, steps_b, common (how many
        steps of run a have a partner)."""
        sa, sb = self.steps(run_a), self.steps(run_b)
        # a timestep names a step only once per run (a chunked pipeline, Helios, starts its
        # schedule again for every chunk of frames: those runs pair by step)
        ts = [s[dims.TIMESTEP] for s in (sa, sb)]
        by = dims.TIMESTEP if all(t.notna().all() and t.is_unique for t in ts) else dims.STEP
        common = int(sa[by].isin(set(sb[by])).sum())
        return {"by": by, "steps_a": len(sa), "steps_b": len(sb), "common": common}

    def per_layer(self, run_ids, stat: str, *, step: int | None = None, branch: str = "cond", part: str = "all",
                  head_agg: str = "mean", step_agg: str = "mean") -> pd.DataFrame:
        """One value per layer: heads aggregated per step, then steps (or the one ``step``), then
        the mean over runs. Columns layer, layer_name, kind, value, runs."""
        _check_stat(stat)
        _check(head_agg, rules.HEAD_AGG)
        _check(step_agg, rules.STEP_AGG)
        sql, params = ranking.per_layer_sql(self._src(run_ids), stat, step=step, branch=branch, part=part,
                                            head_agg=head_agg, step_agg=step_agg)
        return self._q(sql, params)

    def proportions(self, run_ids, *, step: int | None = None, branch: str = "cond", formula: str = "share_of_kind",
                    red_line: str = "median", head_agg: str = "mean", step_agg: str = "mean",
                    part: str = "all", kinds=dims.SELF_KINDS) -> pd.DataFrame:
        """The paper's Figure 4 table: per layer (of ``kinds``; self-attention by default) its
        energy, energy proportion and normalized entropy proportion, with each proportion's red line
        and the half (top/bottom) it falls in."""
        kw = dict(step=step, branch=branch, part=part, head_agg=head_agg, step_agg=step_agg)
        e = self.per_layer(run_ids, dims.ENERGY, **kw).rename(columns={"value": dims.ENERGY})
        h = self.per_layer(run_ids, dims.ENTROPY_NORM, **kw)[[dims.LAYER_NAME, "value"]]
        df = e.merge(h.rename(columns={"value": dims.ENTROPY_NORM}), on=dims.LAYER_NAME, how="outer")
        if kinds:
            df = df[df["kind"].isin(list(kinds))]
        df = df.sort_values(["kind", dims.LAYER], key=lambda c: c.map(KIND_ORDER) if c.name == "kind" else c)
        df = df.reset_index(drop=True)
        for col in (dims.ENERGY, dims.ENTROPY_NORM):
            prop = rules.proportion(df[col], df["kind"], formula)
            df[f"{col}_prop"] = prop
            df[f"{col}_line"] = rules.red_line(prop, df["kind"], red_line)
            df[f"{col}_half"] = np.where(prop > df[f"{col}_line"], "top", "bottom")
        return df

    # -- maps -----------------------------------------------------------------------------------
    def _group(self, run_id: str) -> dict:
        """The run's open store and the small coordinate arrays maps need, read once per run."""
        import zarr

        with self._lock:
            meta = self._groups.get(run_id)
            if meta is None:
                self._complete(run_id)
                try:
                    g = zarr.open_group(str(self.run_dir(run_id) / STORE_NAME), mode="r")
                    meta = {"group": g, "steps": np.asarray(g[dims.STEP][:]),
                            "branches": [str(b) for b in g[dims.BRANCH][:]],
                            "names": [str(n) for n in g[dims.LAYER_NAME][:]],
                            "kinds": [str(k) for k in g[dims.LAYER_KIND][:]],
                            "gy": np.asarray(g["map_gy"][:]), "gx": np.asarray(g["map_gx"][:]),
                            "maps": {k: g[k] for k in (dims.MAP_SPATIAL, dims.MAP_TEMPORAL, dims.ENTROPY_MAP)
                                     if k in g},
                            "maps_every": int((g.attrs.get("capture") or {}).get("maps_every") or 1)}
                except Exception as e:  # noqa: BLE001 - a broken store is a message, not a traceback
                    raise RunUnavailable(f"run {run_id}: unreadable store ({type(e).__name__}: {e})") from None
                self._groups[run_id] = meta
            return meta

    def _index(self, run_id: str, step: int, layer: int, branch: str) -> tuple[dict, int, int, int]:
        meta = self._group(run_id)
        where = np.flatnonzero(meta["steps"] == int(step))
        if not where.size:
            raise RunUnavailable(f"run {run_id} has no captured step {step}")
        if branch not in meta["branches"]:
            raise RunUnavailable(f"run {run_id} has no branch {branch!r} (it has {', '.join(meta['branches'])})")
        if not 0 <= int(layer) < len(meta["names"]):
            raise RunUnavailable(f"run {run_id} has no layer {layer}")
        if not meta["maps"]:
            raise RunUnavailable(f"run {run_id} was captured without maps")
        if int(step) % meta["maps_every"]:
            raise RunUnavailable(f"run {run_id} has maps only every {meta['maps_every']} steps; step {step} has none")
        return meta, int(where[0]), int(layer), meta["branches"].index(branch)

    def attention_map(self, run_id: str, step: int, layer: int, branch: str = "cond", axis: str | None = None) -> MapData:
        """The stored map of a spatial or temporal layer; of a joint layer (attention across
        frames and positions at once) its map pooled over frames (``axis`` 'spatial', the
        default: cell to cell) or over positions ('temporal': frame to frame)."""
        meta, i, li, bi = self._index(run_id, step, layer, branch)
        kind = meta["kinds"][li]
        if kind == "joint":
            kind = axis or "spatial"
            if kind not in ("spatial", "temporal"):
                raise ValueError(f"axis must be 'spatial' or 'temporal', not {axis!r}")
        gy, gx = int(meta["gy"][li]), int(meta["gx"][li])
        if kind == "temporal":
            m = np.asarray(meta["maps"][dims.MAP_TEMPORAL][i, li, bi])
            n = int(np.isfinite(m[0]).sum()) if m.size else 0
            return MapData("temporal", m[:n, :n], gy, gx)
        if kind == "spatial":
            g2 = gy * gx
            return MapData("spatial", np.asarray(meta["maps"][dims.MAP_SPATIAL][i, li, bi])[:g2, :g2], gy, gx)
        raise RunUnavailable(f"layer {meta['names'][li]} is a {kind} layer: no stored query-key map")

    def entropy_map(self, run_id: str, step: int, layer: int, branch: str = "cond") -> np.ndarray:
        """(frames, gy, gx) pooled per-query entropy (nats); frames without data dropped."""
        meta, i, li, bi = self._index(run_id, step, layer, branch)
        gy, gx = int(meta["gy"][li]), int(meta["gx"][li])
        m = np.asarray(meta["maps"][dims.ENTROPY_MAP][i, li, bi])[:, :gy, :gx]
        keep = np.isfinite(m).any(axis=(1, 2))
        return m[keep]

    # -- perturbation studies (sweeps) -----------------------------------------------------------
    def sweeps(self) -> pd.DataFrame:
        """Sweeps with complete runs: sweep, single_layer (one-layer runs), baselines, model."""
        return effects.sweeps(self.catalog)

    def study(self, sweep: str, branch: str = "cond") -> pd.DataFrame:
        """Per (layer, kind, perturbation, window, metric): mean effect over prompts and seeds,
        its spread and count, and the layer's normalized entropy in the baseline runs."""
        return effects.with_entropy(effects.layer_summary(effects.layer_effects(self.catalog, sweep)),
                                    effects.layer_entropy(self.catalog, sweep, branch=branch))

    def study_pairs(self, sweep: str, layer_name: str, perturbation: str) -> pd.DataFrame:
        """The (perturbed run, baseline run, prompt, seed) pairs of one layer and perturbation, with
        every per-video metric's effect as a column."""
        e = effects.layer_effects(self.catalog, sweep)
        e = e[(e["layer_name"] == layer_name) & (e["perturbation"] == perturbation)]
        if e.empty:
            return pd.DataFrame(columns=["run", "baseline_run", "prompt", "seed"])
        return e.pivot_table(index=["run", "baseline_run", "prompt", "seed"], columns="metric",
                             values="effect").reset_index()

    def video_file(self, run_id: str) -> Path | None:
        """The run's video file: a regular file inside the run directory (a symlink is not
        followed, so nothing outside the root is ever served)."""
        from capture.store import inside_root

        d = self.run_dir(run_id)
        for name in ("video.mp4", "video.gif"):
            if inside_root(d / name, d):
                return d / name
        return None


def _check(value: str, options: dict) -> str:
    if value not in options:
        raise ValueError(f"unknown option {value!r}; choose one of {sorted(options)}")
    return value


def _check_stat(stat: str) -> None:
    if stat not in dims.SCALAR_STATS:
        raise ValueError(f"unknown statistic {stat!r}; choose one of {list(dims.SCALAR_STATS)}")


def _agg_sql(name: str, options: dict) -> str:
    return ranking.HEAD_AGG_SQL[_check(name, options)]


def pivot(df: pd.DataFrame) -> pd.DataFrame:
    """Long (layer, layer_name, kind, step, value) -> layers x steps, layers grouped by kind in
    model order."""
    order = df.drop_duplicates(dims.LAYER_NAME).sort_values(
        ["kind", dims.LAYER], key=lambda c: c.map(KIND_ORDER) if c.name == "kind" else c)
    p = df.pivot_table(index=dims.LAYER_NAME, columns=dims.STEP, values="value", aggfunc="first")
    return p.reindex(order[dims.LAYER_NAME])
