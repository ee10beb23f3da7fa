"""`grain eval` / `grain embed` / `grain ground` end to end on a tiny random-weight checkpoint (slow)."""

import json
import os

import numpy as np
import pytest

from grain.common.cache import grain_cache

pytestmark = pytest.mark.slow

REAL_NM = os.path.join(grain_cache(), "npm", "node_modules")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch

    from grain.checkpoint import save_checkpoint
    from grain.config import ModelConfig
    from grain.model import build_model
    from grain.testing.fixtures import write_fixture_shards

    from evaluation import datasets as D

    if not os.path.exists(os.path.join(REAL_NM, "emoji-datasource-google", "package.json")):
        pytest.skip("emoji/flag npm packages not installed (run `grain data build` once)")
    root = tmp_path_factory.mktemp("e2e")
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny")
    ckpt = save_checkpoint(str(root / "tiny.pt"), build_model(cfg), cfg)
    sets = {n: D.ensure_dataset(n, root=str(root / "datasets"), limit=6, progress=False) for n in ("emoji-google-animals", "flags")}
    shards = write_fixture_shards(str(root / "shards"), num_shards=1, rows_per_shard=6)
    return root, ckpt, sets, shards


def test_grain_eval_writes_json_markdown_png(setup):
    from infra.cli import main

    root, ckpt, sets, shards = setup
    (root / "eval.yaml").write_text("eval:\n  templates: ['a photo of a {}.', 'an icon of a {}.']\n  batch_size: 8\n")
    out = root / "out"
    rc = main(["eval", "--checkpoint", ckpt, "--dataset", sets["emoji-google-animals"], "--dataset", sets["flags"],
               "--dataset", str(root / "shards"), "--output", str(out), "--config", str(root / "eval.yaml"),
               "--alpha", "1", "0.5", "0", "--train-manifest", shards[0]])
    assert rc == 0
    run = json.load(open(out / "results.json"))
    by = {(r["dataset"], r["variant"]): r for r in run["results"]}
    for ds in ("emoji-google-animals", "flags"):
        assert {v for d, v in by if d == ds} == {"names", "descriptors", "fusion_a0.5", "fusion_a0"}
        m = by[(ds, "names")]["metrics"]
        assert m["n"] == 6 and 0.0 <= m["acc1"] <= m["acc5"] <= 1.0
        assert by[(ds, "names")]["task"] == "zeroshot_classification"
    ret = by[("shards", "retrieval")]["metrics"]
    assert ret["n_images"] == 6 and ret["n_texts"] == 12 and 0 <= ret["image_retrieval_recall@1"] <= ret["image_retrieval_recall@10"] == 1.0
    assert run["novelty"]["flags"]["seen_classes"] + run["novelty"]["flags"]["unseen_classes"] == 6
    assert "## Zero-shot classification" in open(out / "results.md").read()
    assert open(out / "results.png", "rb").read(4) == b"\x89PNG"
    # compare two runs
    assert main(["eval", "--compare", str(out / "results.json"), str(out / "results.json"), "--labels", "a", "b",
                 "--output", str(root / "cmp")]) == 0
    assert os.path.getsize(root / "cmp" / "compare.png") > 1000


def test_grain_eval_bad_dataset_is_named(setup, capsys):
    from infra.cli import main

    root, ckpt, _, _ = setup
    assert main(["eval", "--checkpoint", ckpt, "--dataset", str(root / "nope"), "--output", str(root / "x")]) == 2
    assert "nope" in capsys.readouterr().err


def test_embed_and_ground(setup):
    import pyarrow.parquet as pq

    from infra.cli import main

    root, ckpt, sets, _ = setup
    assert main(["embed", "--checkpoint", ckpt, "--images", sets["flags"], "--output", str(root / "img.npy")]) == 0
    emb = np.load(root / "img.npy")
    assert emb.shape == (6, 128) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert main(["embed", "--checkpoint", ckpt, "--text", "a dog", "--text", "a cat", "--output", str(root / "t.parquet")]) == 0
    t = pq.read_table(root / "t.parquet")
    assert t.column("id").to_pylist() == ["a dog", "a cat"] and len(t.column("embedding")[0]) == 128
    img = next(p for d, _, fs in os.walk(sets["flags"]) for p in [os.path.join(d, f) for f in fs] if p.endswith(".png"))
    assert main(["ground", img, "--text", "red colour", "--text", "a star", "--checkpoint", ckpt,
                 "--output", str(root / "g.png")]) == 0
    g = json.load(open(root / "g.json"))["regions"]
    assert [r["text"] for r in g] == ["red colour", "a star"]
    for r in g:
        x1, y1, x2, y2 = r["box_xyxy"]
        assert 0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1 and -1 <= r["score"] <= 1
    assert open(root / "g.png", "rb").read(4) == b"\x89PNG"
