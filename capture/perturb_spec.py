"""Perturbation specs: the grammar, parsing and description (torch-free, so the dashboard and the
sweep planner can read specs without loading torch; capture.perturb computes the outputs).

    KIND@LAYERS[:steps=A-B][:branch=cond|uncond][:video=K][:text=1]
    KIND = I | U | T=<factor> | M=<video>

See capture.perturb for what each kind does.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

KINDS = ("I", "U", "T", "M")


class PerturbSpecError(ValueError):
    pass


@dataclass(frozen=True)
class PerturbSpec:
    kind: str
    layers: str
    factor: float | None = None
    steps: tuple[int, int] | None = None  # inclusive
    branch: str | None = None  # None = every branch
    text: bool = False
    source: int | None = None  # M: the video whose maps are used
    video: int | None = None  # only this video of a batched call (None: every video)

    @classmethod
    def parse(cls, spec: str) -> "PerturbSpec":
        m = re.fullmatch(r"\s*([IUTM])(?:=([^@]+))?@([^:]+)((?::[^:]+)*)\s*", spec)
        if not m:
            raise PerturbSpecError(
                f"bad perturbation {spec!r}: expected I@LAYERS, U@LAYERS, T=FACTOR@LAYERS or M=VIDEO@LAYERS, "
                "optionally followed by :steps=A-B :branch=cond|uncond :video=K :text=1"
            )
        kind, factor, layers, opts = m.groups()
        kw: dict = {}
        if kind == "T":
            try:
                kw["factor"] = float(factor)
            except (TypeError, ValueError):
                raise PerturbSpecError(f"bad perturbation {spec!r}: T needs a numeric factor, e.g. T=0.5@...") from None
            if not (math.isfinite(kw["factor"]) and kw["factor"] >= 0):  # 0: every logit 0, i.e. uniform
                raise PerturbSpecError(f"bad perturbation {spec!r}: the temperature factor must be finite and >= 0")
        elif kind == "M":
            if factor is None or not factor.strip().isdigit():
                raise PerturbSpecError(f"bad perturbation {spec!r}: M needs the source video's index, e.g. M=0@...")
            kw["source"] = int(factor)
        elif factor is not None:
            raise PerturbSpecError(f"bad perturbation {spec!r}: only T and M take a value")
        for opt in filter(None, opts.split(":")):
            key, _, val = opt.partition("=")
            if key == "steps":
                kw["steps"] = parse_steps(val)
            elif key == "branch":
                if val not in ("cond", "uncond"):
                    raise PerturbSpecError(f"bad perturbation {spec!r}: branch must be cond or uncond")
                kw["branch"] = val
            elif key == "video":
                if not val.isdigit():
                    raise PerturbSpecError(f"bad perturbation {spec!r}: video must be a batch index >= 0")
                kw["video"] = int(val)
            elif key == "text":
                kw["text"] = val in ("1", "true", "yes")
            else:
                raise PerturbSpecError(f"bad perturbation {spec!r}: unknown option {key!r}")
        return cls(kind=kind, layers=layers.strip(), **kw)

    def __str__(self) -> str:
        s = self.kind + (f"={self.factor:g}" if self.factor is not None else "")
        s += (f"={self.source}" if self.source is not None else "") + "@" + self.layers
        if self.steps:
            s += f":steps={self.steps[0]}-{self.steps[1]}"
        if self.branch:
            s += f":branch={self.branch}"
        if self.video is not None:
            s += f":video={self.video}"
        if self.text:
            s += ":text=1"
        return s

    def describe(self) -> str:
        """The spec in words, e.g. "identity map (I) on kind=temporal, steps 0–3, cond branch only"."""
        what = {"I": "identity map (I)", "U": "uniform map (U)"}.get(self.kind) or (
            f"logits × {self.factor:g} (T)" if self.kind == "T" else f"maps of video {self.source} injected (M)")
        parts = [f"{what} on {self.layers}", f"steps {self.steps[0]}–{self.steps[1]}" if self.steps else "every step",
                 f"{self.branch} branch only" if self.branch else "both CFG branches"]
        if self.video is not None:
            parts.append(f"video {self.video} only")
        if self.text:
            parts.append("text rows too")
        return ", ".join(parts)

    def active(self, step: int) -> bool:
        return self.steps is None or self.steps[0] <= step <= self.steps[1]

    def applies_to(self, video: int) -> bool:
        """Whether this spec changes video ``video`` of a batched call."""
        if self.video is not None and video != self.video:
            return False
        return not (self.kind == "M" and video == self.source)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["spec"] = str(self)
        return d


def parse_steps(text: str, n_steps: int | None = None) -> tuple[int, int]:
    """'A-B' (inclusive) or 'A' -> (A, B). Raises on negative, reversed or out-of-range windows."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text or "")
    if not m:
        raise PerturbSpecError(f"bad step window {text!r}: expected A-B with 0 <= A <= B, e.g. 0-10")
    a = int(m.group(1))
    b = int(m.group(2)) if m.group(2) is not None else a
    if b < a:
        raise PerturbSpecError(f"bad step window {text!r}: end before start")
    if n_steps is not None and a >= n_steps:
        raise PerturbSpecError(f"step window {text!r} starts after the last step ({n_steps - 1})")
    return a, b
