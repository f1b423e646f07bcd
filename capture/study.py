"""The paper's one-layer-at-a-time study (arXiv 2504.12027, §3.3): replace each self-attention
layer's map with the identity (I) or the uniform map (U), one layer per run, and report which layers
matter for structure, temporal consistency and quality, and whether entropy predicts it.

``attnlens study`` plans and runs the sweep (resumable, like any sweep) and writes a Markdown report
with figures; ``write_report`` alone re-renders it from a root. The text's statements are computed
from the measured numbers, never fixed in advance.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from . import dims
from . import effects as E
from .naming import short_name
from .sweep import SweepSpec
from .sweep_exec import is_demo_world_model

log = logging.getLogger(__name__)

# Demo-world prompts (all four shapes, four motions, three backgrounds; none needs a second shape).
DEMO_PROMPTS = (
    "a large red circle moving right on a plain background",
    "a small blue square moving up on a striped background",
    "a large yellow triangle moving left on a checkered background",
    "a large green diamond moving down on a plain background",
)
STRUCTURE, TEMPORAL, QUALITY = "ssim_mean", "temporal_flicker", "sharpness_mean"
WORLD = ("world_colour_correct", "world_shape_correct", "world_motion_correct")


def study_spec(name: str = "paper-study", model: str = "demo", prompts=DEMO_PROMPTS, seeds=(0, 1),
               steps: int | None = None, call: dict | None = None) -> SweepSpec:
    """The one-layer I/U sweep over every self-attention layer; ``call`` overrides generation
    arguments (steps, frames, height, width, guidance)."""
    metrics = ("weight_free", "world") if is_demo_world_model(model) else ("weight_free",)
    call = {**({"steps": steps} if steps else {}), **(call or {})}
    return SweepSpec(name=name, model=model, prompts=tuple(prompts), seeds=tuple(seeds), layer_sets=("each:self",),
                     perturbations=("I", "U"), windows=("all",), metrics=metrics, call=call,
                     capture={"layers": ("self",), "maps": False})


def permutation_p(x: pd.Series, y: pd.Series, *, n: int = 2000, seed: int = 0) -> float | None:
    """Two-sided permutation p-value of Spearman's rank correlation."""
    d = pd.DataFrame({"x": x, "y": y}).dropna()
    rho = E.rank_correlation(d["x"], d["y"])
    if rho is None:
        return None
    rx, ry = d["x"].rank().to_numpy(), d["y"].rank().to_numpy()
    rng = np.random.default_rng(seed)
    perm = np.array([np.corrcoef(rx, rng.permutation(ry))[0, 1] for _ in range(n)])
    return float((np.sum(np.abs(perm) >= abs(rho) - 1e-12) + 1) / (n + 1))


# -- figures (matplotlib, Agg) -------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _kinds(summ):
    return [k for k in ("spatial", "temporal", "joint") if k in set(summ["kind"])]


def _per_kind(summ: pd.DataFrame, metric: str, path: Path, draw, *, panel=(5, 3.2), stacked=False) -> None:
    """One panel per layer kind (stacked or side by side); ``draw(ax, rows of that kind)`` fills
    it with the ``metric`` rows; saved to ``path``."""
    plt = _plt()
    kinds = _kinds(summ)
    d = summ[summ["metric"] == metric]
    n = len(kinds)
    shape, size = ((n, 1), (panel[0], panel[1] * n)) if stacked else ((1, n), (panel[0] * n, panel[1]))
    fig, axes = plt.subplots(*shape, figsize=size, squeeze=False)
    for ax, kind in zip(axes.flat, kinds):
        draw(ax, d[d["kind"] == kind])
        ax.set_title(f"{kind} layers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fig_layers(summ: pd.DataFrame, metric: str, path: Path) -> None:
    def draw(ax, d):
        names = list(dict.fromkeys(d["layer_name"]))
        x = np.arange(len(names))
        for i, p in enumerate(sorted(set(d["perturbation"]))):
            v = d[d["perturbation"] == p].set_index("layer_name").reindex(names)
            ax.bar(x + (i - 0.5) * 0.4, v["effect"], 0.4, yerr=v["effect_std"], label=p, capsize=2)
        ax.set_xticks(x, [short_name(n) for n in names], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(E.label(metric))
        ax.legend(title="map replaced by", fontsize=8, loc="lower left")

    _per_kind(summ, metric, path, draw, panel=(10, 3.2), stacked=True)


def fig_histograms(summ: pd.DataFrame, metric: str, path: Path) -> None:
    """The paper's Figure 2: how the per-layer effect is distributed, I vs U, per layer kind."""
    d = summ[summ["metric"] == metric]
    bins = np.linspace(d["effect"].min(), d["effect"].max(), 16) if len(d) else 10
    perts = sorted(set(d["perturbation"]))

    def draw(ax, dk):
        for p in perts:
            ax.hist(dk[dk["perturbation"] == p]["effect"], bins=bins, alpha=0.6, label=p)
        ax.set_xlabel(E.label(metric))
        ax.set_ylabel("layers")
        ax.legend(title="map replaced by", fontsize=8)

    _per_kind(summ, metric, path, draw)


def fig_entropy(summ: pd.DataFrame, metric: str, path: Path) -> None:
    perts = sorted(set(summ.loc[summ["metric"] == metric, "perturbation"]))

    def draw(ax, dk):
        for p in perts:
            v = dk[dk["perturbation"] == p]
            rho = E.rank_correlation(v["entropy"], v["effect"])
            ax.scatter(v["entropy"], v["effect"], s=18, label=f"{p} (ρ = {rho:.2f})" if rho is not None else p)
        ax.set_xlabel("normalized entropy of the layer (baseline runs)")
        ax.set_ylabel(E.label(metric))
        ax.legend(fontsize=8)

    _per_kind(summ, metric, path, draw, panel=(5, 3.4))


# -- the report ----------------------------------------------------------------------------------
def _table(df: pd.DataFrame, cols: dict, fmt: str = "{:.3f}") -> str:
    head = "| " + " | ".join(cols.values()) + " |\n|" + "---|" * len(cols) + "\n"
    rows = []
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if c == "layer_name":
                cells.append(f"`{short_name(v)}`")
            elif isinstance(v, (float, np.floating)):
                cells.append(fmt.format(v))
            else:
                cells.append(str(v))
        rows.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def _top(summ, metric, kind, pert, n, ascending):
    d = summ[(summ["metric"] == metric) & (summ["kind"] == kind) & (summ["perturbation"] == pert)]
    return d.sort_values("effect", ascending=ascending).head(n)


def entropy_findings(summ: pd.DataFrame, metric: str = STRUCTURE) -> list[dict]:
    """Per (kind, perturbation): Spearman ρ between layer entropy and the effect, its permutation
    p-value, and what the sign says for ``metric`` (higher = less change for SSIM/PSNR)."""
    out = []
    d = summ[summ["metric"] == metric]
    for kind in _kinds(summ):
        for p in sorted(set(d["perturbation"])):
            v = d[(d["kind"] == kind) & (d["perturbation"] == p)]
            rho = E.rank_correlation(v["entropy"], v["effect"])
            out.append({"kind": kind, "perturbation": p, "layers": len(v), "rho": rho,
                        "p": permutation_p(v["entropy"], v["effect"]) if rho is not None else None})
    return out


def _finding_sentence(f: dict) -> str:
    if f["rho"] is None:
        return f"- {f['kind']} layers, {f['perturbation']}: too few layers or no spread to correlate."
    strong = f["p"] is not None and f["p"] < 0.05
    if f["rho"] > 0:
        what = ("lower-entropy layers change the video more when replaced (the paper's claim: low entropy "
                "carries structure)")
    else:
        what = "higher-entropy layers change the video more when replaced (against the paper's claim)"
    return (f"- {f['kind']} layers, {f['perturbation']}: Spearman ρ(entropy, SSIM vs baseline) = {f['rho']:+.2f} "
            f"over {f['layers']} layers, permutation p {_p(f['p'])}: {what}"
            f"{'' if strong else '; not significant at 0.05 with this many layers and prompts'}.")


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def write_report(cat, sweep: str, out_dir, *, title: str = "The paper's one-layer I/U study on the demo model",
                 command: str | None = None) -> Path:
    """Render ``<out_dir>/README.md`` and its figures from the sweep's runs in the catalog."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    eff = E.layer_effects(cat, sweep)
    if eff.empty:
        raise ValueError(f"sweep {sweep!r} has no measured one-layer runs in {cat.root}")
    summ = E.with_entropy(E.layer_summary(eff), E.layer_entropy(cat, sweep))
    runs = cat.query("SELECT * FROM runs WHERE sweep = ? AND status = ?", [sweep, dims.COMPLETE])
    base = runs[runs["sweep_layers"].isna()]
    figs = {"layers": "fig_layers_ssim.png", "hist": "fig_hist_ssim.png", "entropy": "fig_entropy_ssim.png",
            "flicker": "fig_layers_flicker.png"}
    fig_layers(summ, STRUCTURE, out / figs["layers"])
    fig_histograms(summ, STRUCTURE, out / figs["hist"])
    fig_entropy(summ, STRUCTURE, out / figs["entropy"])
    fig_layers(summ, TEMPORAL, out / figs["flicker"])
    kinds = _kinds(summ)
    perts = sorted(set(summ["perturbation"]))
    lines = [f"# {title}", ""]
    model = runs["model"].dropna().iloc[0] if len(runs) else "?"
    lines += [f"Sweep `{sweep}` on model `{model}`: {len(base)} baselines (prompt × seed), "
              f"{eff['run'].nunique()} one-layer runs ({summ['layer_name'].nunique()} self-attention layers × "
              f"{', '.join(perts)}), {int(base['steps'].iloc[0]) if len(base) else '?'} denoising steps, every "
              "metric compared with the unperturbed run of the same prompt and seed and averaged over "
              "prompts and seeds. Entropy is each layer's mean normalized entropy on the conditional branch "
              "of the baseline runs.", ""]
    if command:
        lines += ["Reproduce (`<root>`: the trace root, e.g. `data/traces`):", "", "```", command, "```", ""]
    lines += ["Prompts: " + "; ".join(f"“{p}”" for p in sorted(set(base["prompt"]))) + ".", ""]
    lines += ["## Which layers matter for structure", "",
              f"SSIM of the perturbed video against the baseline (1 = unchanged). ![per-layer SSIM]({figs['layers']})",
              ""]
    for kind in kinds:
        for p in perts:
            t = _top(summ, STRUCTURE, kind, p, 5, True)
            lines += [f"Largest structural change, {kind} layers, {p}:", "",
                      _table(t, {"layer_name": "layer", "effect": "SSIM vs baseline", "entropy": "entropy"})]
    lines += ["Distribution over layers (the paper's Figure 2):", "", f"![histograms]({figs['hist']})", ""]
    lines += ["## Which layers matter for temporal consistency", "",
              "Change of VBench's temporal-flickering score (1 − mean absolute difference of consecutive frames "
              "/ range: 1 = frames identical, higher = steadier), perturbed − baseline; negative = less "
              f"temporally consistent than the baseline. ![flicker]({figs['flicker']})", ""]
    for kind in kinds:
        t = pd.concat([_top(summ, TEMPORAL, kind, p, 3, True) for p in perts])
        lines += [f"Largest loss of temporal consistency, {kind} layers:", "",
                  _table(t, {"layer_name": "layer", "perturbation": "map", "effect": "Δ flickering score"},
                         "{:+.4f}")]
    lines += ["## Which layers matter for quality", ""]
    world = [m for m in WORLD if m in set(summ["metric"])]
    if world:
        lines += ["The demo world's classifier reads colour, shape and motion from each video; the effect is the "
                  "change in the share read correctly (−1 = every prompt × seed lost the attribute).", ""]
        w = summ[summ["metric"].isin(world)].pivot_table(index=["layer_name", "kind", "perturbation"],
                                                         columns="metric", values="effect").reset_index()
        w["worst"] = w[world].min(axis=1)
        w["total"] = w[world].sum(axis=1)
        for kind in kinds:
            t = w[(w["kind"] == kind) & (w["worst"] < 0)].sort_values(["worst", "total"]).head(5)
            if t.empty:
                lines += [f"No single {kind} layer's I or U replacement lowered how often the classifier reads "
                          "the prompt's colour, shape or motion.", ""]
                continue
            lines += [f"Largest fidelity loss, {kind} layers:", "",
                      _table(t, {"layer_name": "layer", "perturbation": "map",
                                 **{m: m.split("_")[1] for m in world}}, "{:+.2f}")]
    for kind in kinds:
        t = pd.concat([_top(summ, QUALITY, kind, p, 3, True) for p in perts])
        lines += [f"Largest sharpness loss (Δ variance of the Laplacian of the luma, range 1), {kind} layers:", "",
                  _table(t, {"layer_name": "layer", "perturbation": "map", "effect": "Δ sharpness"}, "{:+.5f}")]
    lines += ["## Does low entropy mean structure here?", "", f"![entropy vs SSIM]({figs['entropy']})", ""]
    lines += [_finding_sentence(f) for f in entropy_findings(summ)]
    kind_means = summ[summ["metric"] == STRUCTURE].groupby(["kind", "perturbation"])["effect"].mean()
    lines += ["", "Mean SSIM vs baseline by layer kind and map: " + "; ".join(
        f"{k} {p} {v:.3f}" for (k, p), v in kind_means.items()) + ".", ""]
    lines += ["Generated by `capture.study.write_report`; the numbers above are in the catalog "
              f"(`attnlens sql --root <root> \"SELECT * FROM metrics\"`, runs of sweep `{sweep}`).", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    summ.to_csv(out / "layer_effects.csv", index=False)
    log.info("study report written to %s", path)
    return path
