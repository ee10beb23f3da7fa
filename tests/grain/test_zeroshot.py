"""Zero-shot scoring: descriptor sentence rule, prompt building, class vectors, region fusion."""

import json

import pytest
import torch
import torch.nn.functional as F

from grain import zeroshot
from grain.tokenizer import get_tokenizer
from tests.grain.conftest import seeded_model


def test_descriptor_sentence_rule():
    s = zeroshot.descriptor_sentence
    assert s("a long tail") == "which is a long tail"
    assert s("An orange beak") == "which is An orange beak"
    assert s("used for cutting") == "which is used for cutting"
    assert s("has four legs") == "which has four legs"
    for w in ("often", "typically", "may", "can"):
        assert s(f"{w} be red") == f"which {w} be red"
    assert s("two wheels") == "which has two wheels"
    assert s("antennae") == "which has antennae"  # whole words: not "which is antennae"
    assert s("  a dot ") == "which is a dot"


def test_class_prompts():
    p = zeroshot.class_prompts("dog", ["floppy ears", "a wagging tail"], templates=["a photo of a {}.", "a {} drawing."])
    assert p == [
        "a photo of a dog, which has floppy ears.",
        "a dog, which has floppy ears drawing.",
        "a photo of a dog, which is a wagging tail.",
        "a dog, which is a wagging tail drawing.",
    ]
    assert zeroshot.class_prompts("cat", [], templates=["a photo of a {}."]) == ["a photo of a cat."]
    assert 10 <= len(zeroshot.TEMPLATES) <= 18 and not any("bird" in t for t in zeroshot.TEMPLATES)


class BagOfWords(torch.nn.Module):
    """A hand-made text encoder: one dimension per known word (decoded from the BPE tokens)."""

    VOCAB = ["red", "round", "stem", "yellow", "long", "peel", "apple", "banana", "photo"]

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.cfg = type("Cfg", (), {"context_length": 77, "desc_context_length": 32})()

    def encode_text(self, tokens):
        tok = get_tokenizer()
        out = torch.zeros(len(tokens), len(self.VOCAB))
        for i, row in enumerate(tokens.tolist()):
            words = tok.decode([t for t in row if 0 < t < 49406]).replace(",", " ").replace(".", " ").split()
            for w in words:
                if w in self.VOCAB:
                    out[i, self.VOCAB.index(w)] += 1
        return out + 1e-3  # no all-zero rows


def test_scores_on_a_toy():
    model = BagOfWords()
    descs = {"apple": ["red", "round", "has a stem"], "banana": ["yellow", "long", "peel"]}
    ce = zeroshot.class_embeddings(model, ["apple", "banana"], descs, templates=["a photo of a {}."])
    assert ce.class_embed.shape == (2, 9) and ce.desc_embed.shape == (6, 9)
    assert ce.desc_class.tolist() == [0, 0, 0, 1, 1, 1]
    # Class vector = normalised mean of normalised prompt embeddings (computed here by hand).
    prompts = zeroshot.class_prompts("apple", descs["apple"], ["a photo of a {}."])
    from grain.tokenizer import tokenize

    by_hand = F.normalize(F.normalize(model.encode_text(tokenize(prompts)), dim=-1).mean(0), dim=-1)
    assert torch.allclose(ce.class_embed[0], by_hand, atol=1e-6)

    v = {w: F.one_hot(torch.tensor(BagOfWords.VOCAB.index(w)), 9).float() for w in BagOfWords.VOCAB}
    image_out = {
        "image_embed": torch.stack([v["red"] + v["apple"] + v["round"], v["yellow"] + v["banana"]]),
        # image 0's regions look yellow/long (banana parts), image 1's look red/round
        "region_embed": torch.stack([torch.stack([v["yellow"], v["long"]]), torch.stack([v["red"], v["round"]])]),
    }
    g = zeroshot.zeroshot_scores(image_out, ce, alpha=1.0)
    assert g.argmax(1).tolist() == [0, 1]
    r = zeroshot.region_scores(image_out["region_embed"], ce)
    # s_region[0, banana] = mean(max cos(yellow, banana descs), max cos(long, banana descs)), by hand:
    d = ce.desc_embed
    expect = (torch.stack([F.normalize(v["yellow"], dim=0) @ d[3:].t(), F.normalize(v["long"], dim=0) @ d[3:].t()]).max(1).values.mean())
    assert torch.allclose(r[0, 1], expect, atol=1e-6)
    assert r.argmax(1).tolist() == [1, 0]
    fused = zeroshot.zeroshot_scores(image_out, ce, alpha=0.25)
    assert torch.allclose(fused, 0.25 * g + 0.75 * r, atol=1e-6)
    assert fused.argmax(1).tolist() == [1, 0]  # region evidence dominates at α = 0.25
    with pytest.raises(ValueError, match="region embeddings"):
        zeroshot.zeroshot_scores({"image_embed": image_out["image_embed"], "region_embed": None}, ce, alpha=0.5)
    with pytest.raises(KeyError, match="banana"):
        zeroshot.class_embeddings(model, ["apple", "banana"], {"apple": ["red"]})


def test_tiny_model_end_to_end(tiny_cfg, small_batch, tmp_path):
    path = tmp_path / "descriptors.json"
    path.write_text(json.dumps({"red square": ["a red square"], "blue disc": ["a blue disc", "round"], "nothing": []}))
    descs = zeroshot.load_descriptors(str(path))
    m = seeded_model(tiny_cfg).eval()
    ce = zeroshot.class_embeddings(m, list(descs), descs)
    with torch.no_grad():
        out = m.encode_image(small_batch["images"])
    s = zeroshot.zeroshot_scores(out, ce, alpha=0.5)
    assert s.shape == (len(small_batch["images"]), 3) and torch.isfinite(s).all()
    assert ce.desc_class.tolist() == [0, 1, 1, 2]  # the class without descriptors uses its name
