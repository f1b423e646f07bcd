"""Layer inventory of a pipeline and layer selection by pattern.

Names are the model's own qualified module names (``denoiser.named_modules()``). A selection is a
comma-separated list of terms; a layer is selected when any term matches it:

- a glob over the qualified name: ``down_blocks.*attn1``, ``*motion_modules*``, an exact name;
- ``kind=temporal`` (spatial | temporal | cross | joint | other), ``block=up.1``; on a model of
  the generic family kinds are inferred at run time, so before a run only ``kind=cross`` and
  ``kind=self`` select there;
- ``all`` (every attention layer, cross-attention included), ``self`` (spatial + temporal + joint).

The default selection is ``self``. A selection matching nothing is an error that names the
closest valid names. Layers without an attention map (softmax-free linear attention) are listed in
the inventory with the reason and never selected.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import asdict, dataclass

from . import dims
from .models.families import Family

DEFAULT_SELECTION = "self"


class LayerSelectionError(ValueError):
    pass


@dataclass(frozen=True)
class LayerInfo:
    name: str  # qualified module name inside the denoiser (``module.label`` for one SDPA call of several)
    kind: str  # spatial | temporal | cross | joint | other; "self" until inferred (generic family)
    block: str
    heads: int
    index: int  # position in the model's full attention-layer list
    module: str = ""  # the attention module's qualified name (= name unless a sub-layer)
    call: int | None = None  # which SDPA call of the module's forward (sub-layers only)
    not_capturable: str | None = None  # why the layer has no attention map (softmax-free attention)

    def __post_init__(self):
        if not self.module:
            object.__setattr__(self, "module", self.name)

    def as_dict(self) -> dict:
        return asdict(self)


def inventory(pipe_or_denoiser, family: Family) -> list[LayerInfo]:
    """Every attention layer of the pipeline's denoiser(s) (or of a denoiser passed directly); a
    module that makes several SDPA calls per forward (declared by its family) is listed once per
    call, as ``module.label``. With several denoisers (Wan 2.2's two experts) every name starts
    with the denoiser's attribute (``transformer.`` / ``transformer_2.``)."""
    out = []
    for prefix, mod, name, kind, block in family.all_attention_layers(pipe_or_denoiser):
        heads = int(getattr(mod, "heads", 0) or getattr(mod, "num_heads", 0))
        name = prefix + name
        labels = family.calls(name, mod)
        if not labels:
            out.append(LayerInfo(name=name, kind=kind, block=block, heads=heads, index=len(out),
                                 not_capturable=family.not_capturable(name, mod)))
        for ci, label in enumerate(labels):
            out.append(LayerInfo(name=f"{name}.{label}", kind=kind, block=block, heads=heads, index=len(out),
                                 module=name, call=ci))
    return out


def _term_matches(term: str, layer: LayerInfo) -> bool:
    if term == "all":
        return True
    if term == "self":
        return layer.kind in dims.SELF_KINDS or layer.kind == "self"
    if "=" in term:
        key, _, value = term.partition("=")
        key, value = key.strip(), value.strip()
        if key == "kind":
            return layer.kind == value
        if key == "block":
            return fnmatch.fnmatchcase(layer.block, value)
        raise LayerSelectionError(f"unknown selector {key!r} in {term!r}: use kind=, block= or a name glob")
    return fnmatch.fnmatchcase(layer.name, term)


def _check_term(term: str, layers: list[LayerInfo]) -> None:
    if "=" in term:
        key, _, value = term.partition("=")
        if key.strip() == "kind" and value.strip() not in dims.KINDS + ("self",):
            raise LayerSelectionError(f"unknown layer kind {value.strip()!r}; kinds are {', '.join(dims.KINDS)}")


def split_terms(selection: str | list[str] | None) -> list[str]:
    if selection is None:
        return [DEFAULT_SELECTION]
    if isinstance(selection, str):
        selection = [selection]
    terms = [t.strip() for s in selection for t in s.split(",")]
    return [t for t in terms if t]


def select(layers: list[LayerInfo], selection: str | list[str] | None = None) -> list[LayerInfo]:
    """Layers matching any term, in model order. Raises LayerSelectionError if a term matches none."""
    terms = split_terms(selection)
    if not terms:
        raise LayerSelectionError("empty layer selection")
    chosen = set()
    for term in terms:
        _check_term(term, layers)
        matched = [l for l in layers if _term_matches(term, l)]
        hits = {l.name for l in matched if not l.not_capturable}
        if not hits:
            if matched:  # only layers without an attention map (e.g. SanaVideo's linear attention)
                raise LayerSelectionError(f"layer pattern {term!r} matches only layers that cannot be captured: "
                                          f"{matched[0].name}: {matched[0].not_capturable}")
            raise LayerSelectionError(f"layer pattern {term!r} matches no layer{near_misses(term, layers)}")
        chosen |= hits
    return [l for l in layers if l.name in chosen]


def near_misses(term: str, layers: list[LayerInfo], n: int = 3) -> str:
    names = [l.name for l in layers]
    plain = term.replace("*", "").replace("?", "")
    close = difflib.get_close_matches(plain, names, n=n, cutoff=0.4)
    if not close:
        close = [nm for nm in names if any(part and part in nm for part in plain.split("."))][:n] or names[:n]
    return "; closest: " + ", ".join(close) if close else ""


def resolve_names(layers: list[LayerInfo], names: list[str]) -> list[LayerInfo]:
    """Exact qualified names -> layers; unknown names are an error naming the nearest valid ones."""
    by_name = {l.name: l for l in layers}
    missing = [n for n in names if n not in by_name]
    if missing:
        hints = "; ".join(f"{m!r} (closest: {', '.join(difflib.get_close_matches(m, by_name, n=3, cutoff=0.3)) or '-'})"
                          for m in missing[:3])
        raise LayerSelectionError(f"{len(missing)} unknown layer name(s): {hints}")
    return [by_name[n] for n in names]

