"""`grain bench novel-concepts`: the split forces description use, parts are drawn where their boxes say, the
evaluation is fixed in the shipped configs, the summary maths, and (slow) the smoke run end to end."""

from __future__ import annotations

import json
import os
import random
from collections import Counter

import pytest

from benchmarks import bench_novel as bn
from benchmarks import concepts as cg
from benchmarks.novel_config import load_novel_config, parse_novel_set


def _shipped_concepts(path=bn.DEFAULT_CONFIG):
    c = load_novel_config(path)["concepts"]
    return cg.make_concepts(**{k: v for k, v in c.items() if k != "tuxpaint_limit"})


def test_split_forces_the_description_route():
    """Novel and dev classes are new combinations of seen part descriptions; binding siblings have the same
    words with two parts' colours swapped; every class has its own set of descriptions."""
    concepts = _shipped_concepts()
    by = {c.name: c for c in concepts}
    seen_descs = {d for c in concepts if c.split == "seen" for d in c.descriptions()}
    seen_words = {w for d in seen_descs for w in d.split()}
    assert Counter(c.split for c in concepts) == {"seen": 48, "novel": 24, "dev": 12}
    assert len({frozenset(c.descriptions()) for c in concepts}) == len(concepts)
    for c in concepts:
        assert 3 <= len(c.parts) <= 5 and {"head", "body"} <= {p.part for p in c.parts}
        if c.split != "seen":
            assert set(c.descriptions()) <= seen_descs and {w for d in c.descriptions() for w in d.split()} <= seen_words
    siblings = [(c, by[c.sibling]) for c in concepts if c.sibling]
    kinds = Counter((a.split, b.split) for a, b in siblings)
    assert kinds[("novel", "seen")] == 6 and kinds[("novel", "novel")] == 8  # 4 pairs, each listed both ways
    for a, b in siblings:
        assert Counter(w for d in a.descriptions() for w in d.split()) == Counter(w for d in b.descriptions() for w in d.split())
        diff = [(p, q) for p, q in zip(a.parts, b.parts) if p != q]
        assert len(diff) == 2 and all(p.part == q.part and p.form == q.form and p.pattern == q.pattern for p, q in diff)
        assert diff[0][0].colour == diff[1][1].colour and diff[1][0].colour == diff[0][1].colour


def test_nonce_names_avoid_forbidden_tokens():
    forbidden = cg.bpe_ids("zefiv jyxaw") | cg.bpe_ids("a photo of a round red head")
    names = cg.nonce_names(30, random.Random(0), cg.NOVEL_LETTERS, forbidden_ids=forbidden, taken={"hexif"})
    assert len(set(names)) == 30 and "hexif" not in names
    assert all(not (cg.bpe_ids(n) & forbidden) for n in names)


def test_part_boxes_are_exact():
    """Every opaque pixel of a drawn creature lies in some part's box, and every box edge touches the part:
    the boxes are the parts' own extents (both renderings, both sizes, facing either way)."""
    import numpy as np

    from benchmarks.creatures import render

    concepts = _shipped_concepts()
    rng = random.Random(3)
    for c in concepts[:12]:
        for rendering in ("flat", "soft"):
            for size in (40, 110):
                sprite, parts = render(c, size, rng, rendering)
                alpha = np.asarray(sprite.getchannel("A")) > 32
                covered = np.zeros_like(alpha)
                for _, (x0, y0, x1, y1) in parts:
                    covered[max(0, int(y0) - 1): int(np.ceil(y1)) + 1, max(0, int(x0) - 1): int(np.ceil(x1)) + 1] = True
                    assert alpha[int(y0): int(np.ceil(y1)), int(x0): int(np.ceil(x1))].any()
                    assert 0 <= x0 < x1 <= sprite.width + 0.5 and 0 <= y0 < y1 <= sprite.height + 0.5
                assert not (alpha & ~covered).any(), (c.name, rendering, size)
                assert [p.part for p, _ in parts] == [p.part for p in c.parts]


def test_dense_caption_says_every_part_within_the_context():
    from benchmarks.novel_corpus import dense_caption
    from grain.tokenizer import get_tokenizer

    concepts = [c for c in _shipped_concepts() if c.split == "seen"]
    rng = random.Random(0)
    for _ in range(40):
        two = rng.sample(concepts, 2)
        text = dense_caption(two, ["magellanic penguin", "crowned crane"], rng)
        assert len(get_tokenizer().encode(text)) <= 75
        one = dense_caption(two[:1], [], rng)
        for p in two[0].parts:  # every attribute word of every part, however it is phrased
            assert p.part in one and p.colour in one and p.form in one and (p.pattern == "plain" or p.pattern in one)


def test_shipped_configs_fix_the_evaluation_in_advance():
    for path in (bn.DEFAULT_CONFIG, bn.SMOKE_CONFIG):
        cfg = load_novel_config(path)
        e = cfg["eval"]
        splits = {parse_novel_set(s)[0] for s in e["sets"]}
        assert {"seen", "novel"} <= splits and e["templates"] and e["alphas"] == [1.0, 0.5, 0.0]
        assert e["primary_variant"] == "descriptors" and "kind" not in cfg["train"].get("model", {})
        assert {r for s in e["sets"] for r in [parse_novel_set(s)[1]]} == {"flat", "soft"}  # two renderings
        assert cfg["corpus"].get("rendering", "flat") == "flat"  # soft is never trained on
    full = load_novel_config(bn.DEFAULT_CONFIG)["eval"]
    counts = {"seen": 48, "novel": 24, "dev": 12}
    assert all(full["per_class"][parse_novel_set(s)[0]] * counts[parse_novel_set(s)[0]] >= 500 for s in full["sets"])
    assert {s for s in full["sets"] if parse_novel_set(s)[0] == "novel"} == {"novel-flat", "novel-soft", "novel-flat-clutter",
                                                                              "novel-soft-clutter"}
    with pytest.raises(ValueError, match="novel-shiny"):
        load_novel_config(bn.SMOKE_CONFIG, ["eval.sets=[novel-shiny]"])
    with pytest.raises(ValueError, match="model.kind"):
        load_novel_config(bn.SMOKE_CONFIG, ["train.model.kind=clip"])


def _run(acc: dict, loc=None) -> dict:
    out = {"results": [{"dataset": d, "variant": v, "classes": 24, "metrics": {"acc1": a}} for (d, v), a in acc.items()]}
    return {**out, "localisation": {"ratio": loc}} if loc is not None else out


def test_summary_layout_paired_deltas_and_goals():
    from benchmarks.novel_summary import summarize, summary_markdown

    cfg = {"eval": {"sets": ["novel-flat", "seen-flat"], "primary_variant": "descriptors"}}
    prep = {"chance": {"novel-flat": 100 / 24, "seen-flat": 100 / 48}}
    clip = lambda n, d: _run({("novel-flat", "names"): n, ("novel-flat", "descriptors"): d, ("seen-flat", "descriptors"): 0.5})  # noqa: E731
    grain = lambda n, d, f, loc: _run({("novel-flat", "names"): n, ("novel-flat", "descriptors"): d,  # noqa: E731
                                       ("novel-flat", "fusion_a0.5"): f, ("seen-flat", "descriptors"): 0.6}, loc)
    runs = {("clip", 0): clip(0.04, 0.10), ("clip", 1): clip(0.05, 0.20),
            ("grain", 0): grain(0.04, 0.30, 0.35, 0.5), ("grain", 1): grain(0.04, 0.30, 0.31, 0.7)}
    s = summarize(runs, cfg, prep)
    e = s["sets"]["novel-flat"]
    assert e["novel"] and not s["sets"]["seen-flat"]["novel"] and e["chance"] == pytest.approx(100 / 24)
    assert e["top1"]["clip"]["descriptors"] == pytest.approx(15.0) and e["top1"]["grain"]["descriptors"] == pytest.approx(30.0)
    d = e["grain_minus_clip"]["descriptors"]
    assert d["per_seed"] == pytest.approx([20.0, 10.0]) and d["mean"] == pytest.approx(15.0) and d["std"] == pytest.approx(7.0710678)
    assert e["fusion_gain"]["fusion_a0.5"]["per_seed"] == pytest.approx([5.0, 1.0])
    assert s["per_seed"]["1"]["novel-flat"]["clip"]["descriptors"] == pytest.approx(20.0)
    assert s["localisation"] == {"0": 0.5, "1": 0.7}
    g = s["goals"]
    assert g["novel_gain"]["met"] and g["novel_gain"]["value"] == pytest.approx(15.0)
    assert g["fusion_gain"]["met"] and g["fusion_gain"]["value"] == pytest.approx(3.0)  # +5, +1: mean 3 ≥ 2
    assert not g["localisation"]["met"] and g["seen_not_below"]["met"]
    assert g["names_at_chance"]["value"] == pytest.approx(abs(4.5 - 100 / 24))
    assert "| novel-flat (novel) | 4.2 |" in summary_markdown(s, "cmd")


@pytest.mark.slow
def test_smoke_benchmark_end_to_end_and_resume(tmp_path, capsys):
    """The CI smoke run: classes → corpus → both arms through the trainer (one process each) → evaluation,
    diagnostics, summary; novel names share no token with the training text; a rerun retrains nothing."""
    from benchmarks.cli import main

    out = tmp_path / "smoke"
    assert main(["novel-concepts", "--smoke", "--output", str(out), "--quiet", "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("started as its own process") == 2 and printed.count("done before, skipped") == 2
    summary = json.loads((out / "summary.json").read_text())
    cfg = load_novel_config(bn.SMOKE_CONFIG)
    assert list(summary["sets"]) == cfg["eval"]["sets"] and set(summary["localisation"]) == {"0"}
    for name, e in summary["sets"].items():
        assert set(e["top1"]) == {"clip", "grain"} and {"names", "descriptors"} <= set(e["top1"]["clip"])
        assert {"fusion_a0.5", "fusion_a0"} <= set(e["top1"]["grain"]) and e["novel"] == (not name.startswith("seen"))
    assert (out / "summary.png").stat().st_size > 1000
    diag = summary["diagnostics"]["grain"]["novel-flat"]
    assert {"binding_within_descriptors", "global_colour", "region_localised", "errors"} <= set(diag)
    concepts = json.loads((out / "concepts.json").read_text())["classes"]
    train_ids = bn.training_token_ids(str(out / "corpus"))
    for c in concepts:  # the leakage control: a never-trained name shares no BPE token with any training text
        assert (c["split"] == "seen") == bool(cg.bpe_ids(c["name"]) & train_ids), c["name"]
    from benchmarks import novel_examples

    assert novel_examples.main(["--bench", str(out), "--n", "2", "--output", str(tmp_path / "img")]) == 0
    assert (tmp_path / "img" / "ground-novel-flat.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["novel-concepts", "--smoke", "--output", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out.count("done before, skipped") == 2
