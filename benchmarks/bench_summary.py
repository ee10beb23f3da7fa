"""`grain bench grounding`'s summary: per (set, variant) mean ± std over seeds of both arms, GRAIN − CLIP,
the localisation precondition, and the table (markdown) and figure (PNG) made from them."""

from __future__ import annotations

import math

HELDOUT_NOTE = "held-out"

# ---------------------------------------------------------------------------------------------

def _mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def summarize(runs: dict[tuple[str, int], dict], cfg: dict, metric: str = "acc1") -> dict:
    """Per (set, variant): per-arm mean/std of ``metric`` (in %) over seeds, and GRAIN − CLIP with
    CLIP's ``descriptors`` row as the reference for GRAIN-only fusion rows; ``delta_std``: the std over
    seeds of the per-seed differences (seed i of GRAIN − seed i of CLIP), when both arms have the same seeds."""
    vals: dict[tuple[str, str, str], list[float]] = {}
    for (arm, _seed), run in sorted(runs.items()):
        for r in run["results"]:
            vals.setdefault((r["dataset"], r["variant"], arm), []).append(100.0 * r["metrics"][metric])
    rows = []
    heldout = cfg["eval"].get("heldout_sets", [])
    for ds in cfg["eval"]["sets"]:
        variants = sorted({v for (d, v, _) in vals if d == ds}, key=lambda v: (v != "names", v != "descriptors", v))
        for v in variants:
            row = {"set": ds, "variant": v, "heldout": ds in heldout}
            for arm in ("clip", "grain"):
                xs = vals.get((ds, v, arm))
                if xs:
                    row[arm] = dict(zip(("mean", "std"), _mean_std(xs)), n=len(xs), values=xs)
            ref = row.get("clip") or (vals.get((ds, "descriptors", "clip")) and
                                      dict(zip(("mean", "std"), _mean_std(vals[(ds, "descriptors", "clip")]))))
            if "grain" in row and ref:
                row["delta"] = row["grain"]["mean"] - ref["mean"]
                row["delta_vs"] = v if "clip" in row else "descriptors"
                if "clip" in row and row["clip"]["n"] == row["grain"]["n"] > 1:  # same seeds: paired per seed
                    diffs = [g - c for g, c in zip(row["grain"]["values"], row["clip"]["values"])]
                    row["delta_std"] = _mean_std(diffs)[1]
            rows.append(row)
    primary = cfg["eval"].get("primary_variant", "descriptors")
    closing = {r["set"]: r["delta"] for r in rows if r["variant"] == primary and "delta" in r}
    locs = {seed: run["localisation"] for (arm, seed), run in sorted(runs.items()) if arm == "grain" and run.get("localisation")}
    loc = None
    if locs:
        threshold = float(cfg["eval"].get("grounded_max_ratio", 0.85))
        ratio = _mean_std([v["ratio"] for v in locs.values()])
        spread = _mean_std([v["spread"] for v in locs.values()])
        loc = {"per_seed": {str(k): v for k, v in locs.items()}, "ratio": dict(zip(("mean", "std"), ratio)),
               "spread": dict(zip(("mean", "std"), spread)), "threshold": threshold, "grounded": ratio[0] <= threshold}
    return {"metric": metric, "rows": rows, "primary_variant": primary, "grain_minus_clip": closing, "localisation": loc}


def localisation_line(summary: dict) -> str:
    """The precondition, in words: GRAIN's boxes vs the best fixed layout on canvases never trained on."""
    loc = summary.get("localisation")
    if not loc:
        return "Localisation: not measured (eval.localisation_canvases: 0, or no GRAIN run)."
    seeds = ", ".join(f"seed {k} {v['ratio']:.2f}" for k, v in loc["per_seed"].items())
    verdict = ("**grounded**" if loc["grounded"] else
               f"**not grounded** (above {loc['threshold']:.2f}): GRAIN − CLIP below compares a region branch that does not localise")
    return (f"Localisation (precondition): GRAIN boxes / best fixed layout {loc['ratio']['mean']:.2f} ± {loc['ratio']['std']:.2f} "
            f"({seeds}; spread {loc['spread']['mean']:.3f}) on unseen multi-object canvases: {verdict}.")


def summary_markdown(summary: dict, command: str) -> str:
    fmt = lambda a: f"{a['mean']:.1f} ± {a['std']:.1f}" if a else "—"  # noqa: E731
    loc = summary.get("localisation")
    ungrounded = bool(loc) and not loc["grounded"]
    lines = [f"Top-1 accuracy (%), mean ± std over seeds. Command: `{command}`", "", localisation_line(summary), "",
             "| eval set | variant | CLIP | GRAIN | GRAIN − CLIP |", "|---|---|---|---|---|"]
    for r in summary["rows"]:
        tag = f"{r['set']} ({HELDOUT_NOTE})" if r["heldout"] else r["set"]
        d = (f"{r['delta']:+.1f}" + (f" ± {r['delta_std']:.1f}" if "delta_std" in r else "")
             + ("" if r.get("delta_vs") == r["variant"] else " (vs CLIP descriptors)")) if "delta" in r else "—"
        if ungrounded and "delta" in r:
            d += " (not grounded)"
        lines.append(f"| {tag} | {r['variant']} | {fmt(r.get('clip'))} | {fmt(r.get('grain'))} | {d} |")
    lines += ["", f"GRAIN − CLIP top-1 ({summary['primary_variant']}): " +
              ", ".join(f"{k} {v:+.1f}" for k, v in summary["grain_minus_clip"].items())]
    return "\n".join(lines) + "\n"


def summary_png(summary: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One group per evaluation set: both arms on the primary variant, and GRAIN's fusion rows beside them
    # (the full table, every variant, is summary.md).
    primary = summary.get("primary_variant", "descriptors")
    sets = list(dict.fromkeys(r["set"] for r in summary["rows"]))
    by = {(r["set"], r["variant"]): r for r in summary["rows"]}
    fusions = sorted({r["variant"] for r in summary["rows"] if r["variant"].startswith("fusion_")}, reverse=True)
    bars = [("CLIP " + primary, primary, "clip"), ("GRAIN " + primary, primary, "grain")]
    bars += [(f"GRAIN {v.replace('fusion_a', 'fusion α=')}", v, "grain") for v in fusions]
    loc = summary.get("localisation")
    fig, (lax, ax) = plt.subplots(1, 2, figsize=(4 + 1.3 * len(sets), 4.8), gridspec_kw={"width_ratios": [1.2, max(3, len(sets))]})
    if loc:  # localisation first: the accuracy panel only means something when the boxes follow the objects
        seeds = list(loc["per_seed"])
        lax.bar(range(len(seeds)), [loc["per_seed"][k]["ratio"] for k in seeds], 0.6, color="tab:orange")
        lax.axhline(1.0, color="grey", ls="--", lw=1, label="fixed layout")
        lax.axhline(loc["threshold"], color="tab:red", ls=":", lw=1, label=f"grounded ≤ {loc['threshold']:.2f}")
        lax.set_xticks(range(len(seeds)), [f"seed {k}" for k in seeds], fontsize=7)
        lax.set_ylim(0, max(1.2, max(loc["per_seed"][k]["ratio"] for k in seeds) + 0.1))
        lax.set_title("localisation: GRAIN boxes /\nbest fixed layout (lower = better)", fontsize=8)
        lax.legend(fontsize=6, loc="upper left")
    else:
        lax.text(0.5, 0.5, "localisation\nnot measured", ha="center", va="center")
        lax.set_axis_off()
    width = 0.8 / len(bars)
    for j, (label, variant, arm) in enumerate(bars):
        pts = [(i, by[(s, variant)][arm]) for i, s in enumerate(sets) if arm in by.get((s, variant), {})]
        if pts:
            ax.bar([i - 0.4 + (j + 0.5) * width for i, _ in pts], [a["mean"] for _, a in pts], width,
                   yerr=[a["std"] for _, a in pts], capsize=2, label=label)
    held = {r["set"] for r in summary["rows"] if r.get("heldout")}
    ax.set_xticks(range(len(sets)), [s.replace("-clutter", "\nclutter") + ("\n(held-out)" if s in held else "") for s in sets], fontsize=7)
    ax.set_ylabel("top-1 (%), mean ± std over seeds")
    ax.set_title("zero-shot accuracy" + ("" if not loc or loc["grounded"] else " (GRAIN not grounded)"), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

__all__ = ["localisation_line", "summarize", "summary_markdown", "summary_png"]
