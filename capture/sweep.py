"""Perturbation sweeps: the spec (TOML/JSON or flags) and its expansion into runs.

A sweep is prompts × seeds × layer sets × perturbations × step windows, plus one unperturbed
baseline per (prompt, seed). Layer sets::

    each:SELECTION    one run per layer the selection matches (the paper's one-layer-at-a-time study)
    SELECTION         one run perturbing every matched layer together (e.g. kind=spatial)

Perturbations are ``I``, ``U`` or ``T=f`` (capture.perturb kinds); windows are ``all`` or ``A-B``
(inclusive step indices). Every planned run has a key derived from its content, so the same spec
always plans the same keys: a rerun skips the keys that already have a complete run (resume), and
two sweeps into one root never collide (the sweep id is part of every run id).

Planning validates everything before any generation: unknown layers, empty selections, bad
windows and unknown metrics are one-line errors.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .layers import LayerInfo, LayerSelectionError, select
from .perturb_spec import PerturbSpec, PerturbSpecError, parse_steps

# world: the demo world's classifier metrics (demo model only); optional: LPIPS, CLIP score,
# aesthetic, DINO consistency from local weights (capture.metrics_optional), where available
METRICS = ("weight_free", "world", "optional")


class SweepSpecError(ValueError):
    """A sweep spec that cannot run; one line for the user."""


# the settings a spec's `call` and `capture` tables may hold, with their types
CALL_FIELDS = {"steps": (int,), "guidance": (int, float), "frames": (int,), "height": (int,), "width": (int,)}
CAPTURE_FIELDS = {"layers": (str, list), "every": (int,), "maps": (bool,), "grid": (int,), "maps_every": (int,)}


def _type_words(types: tuple, key: str) -> str:
    if bool in types:
        return "true or false"
    if float in types:
        return "a finite number >= 0"
    if int in types:
        return "an integer >= 1"
    return "a string or a list of strings"


@dataclass(frozen=True)
class SweepSpec:
    name: str
    model: str
    prompts: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    layer_sets: tuple[str, ...] = ("each:self",)
    perturbations: tuple[str, ...] = ("I", "U")
    windows: tuple[str, ...] = ("all",)
    branch: str | None = None  # None: every CFG branch
    metrics: tuple[str, ...] = ("weight_free",)
    call: dict = field(default_factory=dict)  # steps, guidance, frames, height, width
    capture: dict = field(default_factory=dict)  # layers, every, maps, grid

    @classmethod
    def from_dict(cls, d: dict, base_dir: Path | None = None) -> "SweepSpec":
        d = dict(d)
        known = set(cls.__dataclass_fields__) | {"prompts_file"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SweepSpecError(f"unknown sweep field {unknown[0]!r}; fields: {', '.join(sorted(known))}")
        if "prompts_file" in d:
            p = Path(d.pop("prompts_file"))
            p = p if p.is_absolute() or base_dir is None else base_dir / p
            if not p.is_file():
                raise SweepSpecError(f"prompts file {p} not found")
            lines = [ln.strip() for ln in p.read_text().splitlines()]
            d["prompts"] = [ln for ln in lines if ln and not ln.startswith("#")] + list(d.get("prompts", []))
        for k in ("name", "model"):
            if not d.get(k):
                raise SweepSpecError(f"a sweep needs a {k!r}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(d["name"])):
            raise SweepSpecError(f"sweep name {d['name']!r}: use letters, digits, '.', '_' or '-'")
        for k in ("prompts", "seeds", "layer_sets", "perturbations", "windows", "metrics"):
            if k in d:
                v = d[k]
                d[k] = tuple(v) if isinstance(v, (list, tuple)) else (v,)
        for k in ("name", "model"):
            if not isinstance(d[k], str):
                raise SweepSpecError(f"sweep field {k!r} must be a string, not {d[k]!r}")
        for k in ("prompts", "layer_sets", "perturbations", "windows", "metrics"):
            bad = [v for v in d.get(k, ()) if not isinstance(v, str) or not v.strip()]
            if bad:
                raise SweepSpecError(f"sweep field {k!r} must hold non-empty strings, not {bad[0]!r}")
        if not d.get("prompts"):
            raise SweepSpecError("a sweep needs at least one prompt")
        bad = [s for s in d.get("seeds", (0,)) if isinstance(s, bool) or not isinstance(s, int) or s < 0]
        if bad:
            raise SweepSpecError(f"sweep field 'seeds' must hold integers >= 0, not {bad[0]!r}")
        d["seeds"] = tuple(d.get("seeds", (0,)))
        if d.get("branch") not in (None, "cond", "uncond"):
            raise SweepSpecError(f"sweep field 'branch' must be cond or uncond, not {d['branch']!r}")
        for k, types in (("call", CALL_FIELDS), ("capture", CAPTURE_FIELDS)):
            v = d.get(k, {})
            if not isinstance(v, dict):
                raise SweepSpecError(f"sweep field {k!r} must be a table of settings, not {v!r}")
            for key, val in v.items():
                if key not in types:
                    raise SweepSpecError(f"unknown key {key!r} in sweep field {k!r}; keys: {', '.join(types)}")
                want = types[key]
                ok = isinstance(val, want) and not (isinstance(val, bool) and bool not in want)
                if ok and isinstance(val, (int, float)) and not isinstance(val, bool):
                    ok = math.isfinite(val) and (val >= 0 if key == "guidance" else val >= 1)
                if not ok:
                    raise SweepSpecError(f"sweep field {k}.{key} must be {_type_words(want, key)}, not {val!r}")
        return cls(**d)

    @classmethod
    def read(cls, path) -> dict:
        """A spec file's fields, unchecked: flags are merged in before from_dict checks them."""
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise SweepSpecError(f"cannot read sweep spec {p}: {e.strerror}") from None
        try:
            d = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, ValueError) as e:
            raise SweepSpecError(f"sweep spec {p} is not valid {'TOML' if p.suffix == '.toml' else 'JSON'}: {e}") \
                from None
        if not isinstance(d, dict):
            raise SweepSpecError(f"sweep spec {p} must be a table of fields")
        if "prompts_file" in d and not Path(d["prompts_file"]).is_absolute():
            d["prompts_file"] = str(p.parent / d["prompts_file"])
        return d

    @classmethod
    def load(cls, path) -> "SweepSpec":
        return cls.from_dict(cls.read(path), Path(path).parent)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Task:
    """One planned run: a baseline (no perturbations) or perturbed."""
    key: str
    prompt: str
    seed: int
    perturb: tuple[str, ...]  # capture.perturb spec strings
    layer_set: str | None = None
    layers: tuple[str, ...] = ()
    perturbation: str | None = None
    window: str | None = None

    @property
    def baseline(self) -> bool:
        return not self.perturb

    def run_id(self, sweep: str) -> str:
        return f"{sweep}-{self.key}"


def _key(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def _perturbation(p: str) -> tuple[str, float | None]:
    m = re.fullmatch(r"\s*(I|U|T=([0-9.eE+-]+))\s*", p)
    if not m:
        raise SweepSpecError(f"unknown perturbation {p!r}: use I, U or T=FACTOR")
    if m.group(2) is not None:
        try:
            f = float(m.group(2))
        except ValueError:
            raise SweepSpecError(f"unknown perturbation {p!r}: T needs a number") from None
        if f < 0:
            raise SweepSpecError(f"perturbation {p!r}: the temperature factor must be >= 0")
        return "T", f
    return m.group(1), None


def _window(w: str, n_steps: int | None) -> str | None:
    if w == "all":
        return None
    try:
        a, b = parse_steps(w, n_steps)
    except PerturbSpecError as e:
        raise SweepSpecError(str(e)) from None
    return f"{a}-{b}"


def plan(spec: SweepSpec, layers: list[LayerInfo], n_steps: int | None = None) -> list[Task]:
    """Every run of the sweep (baselines first), validated against the model's layer inventory."""
    bad = [m for m in spec.metrics if m not in METRICS]
    if bad:
        raise SweepSpecError(f"unknown metric {bad[0]!r}; metrics: {', '.join(METRICS)}")
    if spec.branch not in (None, "cond", "uncond"):
        raise SweepSpecError(f"branch must be cond or uncond, not {spec.branch!r}")
    kinds = [_perturbation(p) for p in spec.perturbations]
    windows = [_window(w, n_steps) for w in spec.windows]
    groups: list[tuple[str, tuple[str, ...]]] = []
    for ls in spec.layer_sets:
        each = ls.startswith("each:")
        sel = ls[5:] if each else ls
        try:
            chosen = select(layers, sel)
        except LayerSelectionError as e:
            raise SweepSpecError(f"layer set {ls!r}: {e}") from None
        if not chosen:
            raise SweepSpecError(f"layer set {ls!r} selects no layer")
        if each:
            groups += [(ls, (l.name,)) for l in chosen]
        else:
            groups.append((ls, tuple(l.name for l in chosen)))
    for _, names in groups:
        cross = [n for n in names if next(l for l in layers if l.name == n).kind == "cross"]
        if cross and any(k == "I" for k, _ in kinds):
            raise SweepSpecError(f"I needs self-attention, but the layer set includes cross-attention {cross[0]}")
    tasks: list[Task] = []
    for prompt in spec.prompts:
        for seed in spec.seeds:
            tasks.append(Task(_key(spec.model, prompt, seed, spec.call), prompt, seed, ()))
            for ls, names in groups:
                for (kind, factor), p in zip(kinds, spec.perturbations):
                    for w_text, w in zip(spec.windows, windows):
                        specs = []
                        for n in names:
                            s = ("T=" + f"{factor:g}" if kind == "T" else kind) + "@" + n
                            s += f":steps={w}" if w else ""
                            s += f":branch={spec.branch}" if spec.branch else ""
                            specs.append(str(PerturbSpec.parse(s)))
                        key = _key(spec.model, prompt, seed, spec.call, specs)
                        tasks.append(Task(key, prompt, seed, tuple(specs), ls, names, p, w_text))
    keys = [t.key for t in tasks]
    if len(set(keys)) != len(keys):  # the same layer in two sets: plan each run once
        seen, unique = set(), []
        for t in tasks:
            if t.key not in seen:
                seen.add(t.key)
                unique.append(t)
        tasks = unique
    return tasks
