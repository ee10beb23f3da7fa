"""`grain bench novel-concepts`'s summary: per set and variant the seed means of both arms, GRAIN − CLIP with
the std of the paired per-seed differences, the fusion gain, chance, localisation, the goals, and the table
(markdown) and figure (PNG) made from them.

``summary.json`` layout (top-1 in %)::

    sets: {name: {novel: bool, validation: bool, chance: %, classes: n,
                  top1: {clip: {variant: mean}, grain: {variant: mean}},
                  std: {arm: {variant: std over seeds}},
                  grain_minus_clip: {variant: {mean, std, per_seed}},     # primary variant and names
                  fusion_gain: {fusion variant: {mean, std, per_seed}}}}  # GRAIN fusion − GRAIN primary
    per_seed: {seed: {set: {arm: {variant: top-1}}}}
    localisation: {seed: ratio}          localisation_detail: {seed: {...}}
    diagnostics: {arm: {set: {name: mean over seeds}}}
    goals: {name: {target, value, met}}
"""

from __future__ import annotations

import math

from benchmarks.bench_summary import _mean_std
from benchmarks.novel_config import GoalsSection, parse_novel_set

ARMS = ("clip", "grain")


def _paired(a: list[float], b: list[float]) -> dict:
    d = [x - y for x, y in zip(a, b)]
    m, s = _mean_std(d)
    return {"mean": m, "std": s, "per_seed": d}


def _set_entry(name: str, vals: dict, seeds: list, chance: float, classes: int | None, primary: str) -> dict:
    split, rendering, clutter = parse_novel_set(name)
    e = {"novel": split != "seen", "validation": split == "dev", "rendering": rendering, "clutter": clutter,
         "chance": chance, "classes": classes, "top1": {}, "std": {}, "grain_minus_clip": {}, "fusion_gain": {}}
    for arm in ARMS:
        for v, xs in sorted(vals.get(arm, {}).items()):
            e["top1"].setdefault(arm, {})[v], e["std"].setdefault(arm, {})[v] = _mean_std(xs)
    c, g = vals.get("clip", {}), vals.get("grain", {})
    for v in (primary, "names"):
        if v in c and v in g and len(c[v]) == len(g[v]):
            e["grain_minus_clip"][v] = _paired(g[v], c[v])
    for v in sorted(g):
        if v.startswith("fusion_") and primary in g:
            e["fusion_gain"][v] = _paired(g[v], g[primary])
    return e


def summarize(runs: dict[tuple[str, int], dict], cfg: dict, prep: dict, metric: str = "acc1") -> dict:
    """``runs``: {(arm, seed): run dict of evaluation.runner (+ ``localisation``, ``diagnostics``)}."""
    sets = list(cfg["eval"]["sets"])
    primary = cfg["eval"].get("primary_variant", "descriptors")
    seeds = sorted({s for _, s in runs})
    per_seed: dict = {}
    vals: dict = {}  # set → arm → variant → [per seed, in seed order]
    classes: dict = {}
    for (arm, seed), run in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        for r in run["results"]:
            if r["dataset"] not in sets:
                continue
            acc = 100.0 * r["metrics"][metric]
            per_seed.setdefault(str(seed), {}).setdefault(r["dataset"], {}).setdefault(arm, {})[r["variant"]] = acc
            vals.setdefault(r["dataset"], {}).setdefault(arm, {}).setdefault(r["variant"], []).append(acc)
            classes[r["dataset"]] = r.get("classes")
    out_sets = {s: _set_entry(s, vals.get(s, {}), seeds, float(prep["chance"][s]), classes.get(s), primary) for s in sets}
    locs = {str(s): run["localisation"] for (arm, s), run in sorted(runs.items()) if arm == "grain" and run.get("localisation")}
    summary = {"metric": metric, "primary_variant": primary, "seeds": seeds, "sets": out_sets, "per_seed": per_seed,
               "localisation": {k: v["ratio"] for k, v in locs.items()}, "localisation_detail": locs,
               "diagnostics": _diagnostics(runs)}
    summary["goals"] = goals(summary, GoalsSection(**cfg["eval"].get("goals", {})))
    return summary


def _diagnostics(runs: dict) -> dict:
    """Mean over seeds of every numeric diagnostic: {arm: {set: {name: value}}}."""
    acc: dict = {}
    for (arm, _), run in runs.items():
        for s, d in (run.get("diagnostics") or {}).items():
            for k, v in d.items():
                if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                    acc.setdefault(arm, {}).setdefault(s, {}).setdefault(k, []).append(float(v))
    return {a: {s: {k: sum(v) / len(v) for k, v in d.items()} for s, d in sd.items()} for a, sd in acc.items()}


def goals(summary: dict, g: GoalsSection) -> dict:
    """The benchmark's goals, each with its target, the measured value and whether it is met (None: not measured)."""
    primary = summary["primary_variant"]
    test = {k: e for k, e in summary["sets"].items() if e["novel"] and not e["validation"]}
    seen = {k: e for k, e in summary["sets"].items() if not e["novel"]}
    gains = [e["grain_minus_clip"].get(primary, {}).get("mean") for e in test.values()]
    fusion = [max((f["mean"] for f in e["fusion_gain"].values()), default=None) for e in test.values()]
    names = [abs(e["top1"][a]["names"] - e["chance"]) for e in test.values() for a in ARMS if "names" in e["top1"].get(a, {})]
    locs = list(summary["localisation"].values())
    seen_d = [e["grain_minus_clip"].get(primary, {}).get("mean") for e in seen.values()]

    def worst(xs, pick):
        xs = [x for x in xs if x is not None]
        return pick(xs) if xs else None

    rows = {
        "novel_gain": (f"GRAIN − CLIP ({primary}) ≥ +{g.min_gain:g} on every novel set", worst(gains, min), lambda v: v >= g.min_gain),
        "fusion_gain": (f"best fusion α < 1 adds ≥ +{g.min_fusion_gain:g} on every novel set", worst(fusion, min),
                        lambda v: v >= g.min_fusion_gain),
        "names_at_chance": (f"`names` within {g.names_margin:g} points of chance on novel sets, both arms", worst(names, max),
                            lambda v: v <= g.names_margin),
        "localisation": (f"localisation ≤ {g.max_localisation:g} on every seed", worst(locs, max), lambda v: v <= g.max_localisation),
        "seen_not_below": ("GRAIN not below CLIP on the seen sets", worst(seen_d, min), lambda v: v >= 0),
    }
    return {k: {"target": t, "value": v, "met": None if v is None else bool(ok(v))} for k, (t, v, ok) in rows.items()}


def _pm(d: dict | None) -> str:
    return "—" if not d else f"{d['mean']:+.1f} ± {d['std']:.1f}"


def summary_markdown(summary: dict, command: str) -> str:
    primary = summary["primary_variant"]
    fusions = sorted({v for e in summary["sets"].values() for v in e["top1"].get("grain", {}) if v.startswith("fusion_")},
                     reverse=True)
    head = ["set", "chance", "CLIP names", "GRAIN names", f"CLIP {primary}", f"GRAIN {primary}", "GRAIN − CLIP"]
    head += [f"GRAIN {v.replace('fusion_a', 'α=')} (gain)" for v in fusions]
    lines = [f"Top-1 (%), mean over seeds {summary['seeds']}; ± = std over seeds of the paired differences. "
             f"Command: `{command}`", "", localisation_line(summary), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in summary["sets"].items():
        t = e["top1"]
        tag = name + (" (validation)" if e["validation"] else " (novel)" if e["novel"] else " (seen)")
        cells = [tag, f"{e['chance']:.1f}"]
        cells += [f"{t[a][v]:.1f}" if v in t.get(a, {}) else "—" for v, a in (("names", "clip"), ("names", "grain"),
                                                                             (primary, "clip"), (primary, "grain"))]
        cells.append(_pm(e["grain_minus_clip"].get(primary)))
        cells += [f"{t['grain'][v]:.1f} ({_pm(e['fusion_gain'].get(v))})" if v in t.get("grain", {}) else "—" for v in fusions]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Goals:"]
    for g in summary["goals"].values():
        mark = "not measured" if g["met"] is None else ("met" if g["met"] else "**not met**")
        lines.append(f"- {g['target']}: {mark}" + ("" if g["value"] is None else f" (worst case {g['value']:.2f})"))
    return "\n".join(lines) + "\n"


def localisation_line(summary: dict) -> str:
    loc = summary["localisation"]
    if not loc:
        return "Localisation: not measured (no GRAIN run, or eval.localisation_canvases: 0)."
    return ("Localisation (GRAIN part boxes / best fixed layout on unseen training-like canvases; 1.00 = a fixed "
            "layout): " + ", ".join(f"seed {k} {v:.2f}" for k, v in loc.items()) + ".")


def summary_png(summary: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = summary["primary_variant"]
    sets = list(summary["sets"])
    fusions = sorted({v for e in summary["sets"].values() for v in e["top1"].get("grain", {}) if v.startswith("fusion_")},
                     reverse=True)
    bars = [(f"CLIP {primary}", "clip", primary), (f"GRAIN {primary}", "grain", primary)]
    bars += [(f"GRAIN {v.replace('fusion_a', 'fusion α=')}", "grain", v) for v in fusions]
    loc = summary["localisation"]
    fig, (lax, ax) = plt.subplots(1, 2, figsize=(4 + 1.25 * len(sets), 4.8), gridspec_kw={"width_ratios": [1.2, max(3, len(sets))]})
    if loc:
        lax.bar(range(len(loc)), list(loc.values()), 0.6, color="tab:orange")
        lax.axhline(1.0, color="grey", ls="--", lw=1, label="fixed layout")
        lax.set_xticks(range(len(loc)), [f"seed {k}" for k in loc], fontsize=7)
        lax.set_ylim(0, max(1.2, max(loc.values()) + 0.1))
        lax.set_title("localisation: GRAIN part boxes /\nbest fixed layout (lower = better)", fontsize=8)
        lax.legend(fontsize=6, loc="upper left")
    else:
        lax.text(0.5, 0.5, "localisation\nnot measured", ha="center", va="center")
        lax.set_axis_off()
    width = 0.8 / len(bars)
    for j, (label, arm, v) in enumerate(bars):
        pts = [(i, summary["sets"][s]) for i, s in enumerate(sets) if v in summary["sets"][s]["top1"].get(arm, {})]
        if pts:
            ax.bar([i - 0.4 + (j + 0.5) * width for i, _ in pts], [e["top1"][arm][v] for _, e in pts], width,
                   yerr=[e["std"][arm][v] for _, e in pts], capsize=2, label=label)
    for i, s in enumerate(sets):
        e = summary["sets"][s]
        ax.hlines(e["chance"], i - 0.42, i + 0.42, colors="black", lw=1, label="chance" if i == 0 else None)
        for arm, mk in (("clip", "v"), ("grain", "^")):
            if "names" in e["top1"].get(arm, {}):
                ax.plot(i + (-0.3 if arm == "clip" else 0.3), e["top1"][arm]["names"], mk, color="grey", ms=4,
                        label=f"{arm.upper() if arm == 'clip' else 'GRAIN'} names" if i == 0 else None)
    ax.set_xticks(range(len(sets)), [s.replace("-clutter", "\nclutter") + ("\n(novel)" if summary["sets"][s]["novel"] else "")
                                     for s in sets], fontsize=7)
    ax.set_ylabel("top-1 (%), mean ± std over seeds")
    ax.set_title("zero-shot accuracy: classes recognised by their descriptions", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["goals", "localisation_line", "summarize", "summary_markdown", "summary_png"]
