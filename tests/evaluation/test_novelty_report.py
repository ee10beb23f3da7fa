"""Novel-concept matching and split, manifest formats, and the report writers."""

import json
import os

import pytest
import torch

from evaluation import report
from evaluation.novelty import class_occurrence, load_training_texts, novelty_report, phrase_pattern, resolve_shards


def test_whole_word_case_insensitive_matching():
    occ = class_occurrence(["cat", "ice cream", "t-shirt", "owl"], {"cat": ["whiskers", "tail"]},
                           ["A CAT on a mat", "concatenate", "Ice  cream cone", "my t-shirts", "cat's whiskers"])
    by = {o.name: o for o in occ}
    assert by["cat"].name_count == 2  # "CAT" and "cat's"; not "concatenate"
    assert by["cat"].descriptors_seen == ["whiskers"] and by["cat"].descriptors_unseen == ["tail"]
    assert by["ice cream"].seen  # whitespace-tolerant
    assert not by["t-shirt"].seen  # "t-shirts" is another word
    assert not by["owl"].seen
    assert phrase_pattern("c++").search("I like c++ a lot")


def test_split_accuracy_seen_unseen():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.4, 0.6], [0.1, 0.2, 0.8]])
    rep = novelty_report(["cat", "dog", "owl"], None, ["a cat", "a dog"], scores, torch.tensor([0, 1, 2]))
    assert rep["seen_classes"] == 2 and rep["unseen_classes"] == 1
    assert rep["seen"]["acc1"] == pytest.approx(0.5) and rep["unseen"]["acc1"] == 1.0


def test_manifest_formats(tmp_path):
    from grain.testing.fixtures import write_fixture_shards

    paths = write_fixture_shards(str(tmp_path / "shards"), num_shards=2, rows_per_shard=2, error_rows_per_shard=1)
    (tmp_path / "m1.json").write_text(json.dumps({"data_files": ["shards/fixture-00000.parquet"]}))
    (tmp_path / "m2.json").write_text(json.dumps({"summary": {"root": str(tmp_path / "shards"),
                                                              "files": [{"path": "fixture-00001.parquet"}]}}))
    (tmp_path / "list.txt").write_text("# shards\n" + "\n".join(paths) + "\n")
    assert resolve_shards(str(tmp_path / "m1.json")) == [paths[0]]
    assert resolve_shards(str(tmp_path / "m2.json")) == [paths[1]]
    assert resolve_shards([str(tmp_path / "list.txt"), str(tmp_path / "shards")]) == paths
    texts = load_training_texts(str(tmp_path / "shards"))
    assert any(t.startswith("an image showing") for t in texts)  # mllm captions are included
    (tmp_path / "bad.json").write_text(json.dumps({"nothing": 1}))
    with pytest.raises(ValueError, match="bad.json"):
        resolve_shards(str(tmp_path / "bad.json"))
    with pytest.raises(FileNotFoundError, match="gone.parquet"):
        resolve_shards(str(tmp_path / "gone.parquet"))


def _run(name, acc):
    return {"model": name, "results": [
        {"dataset": "toy", "model": name, "task": "zeroshot_classification", "variant": "names", "classes": 3,
         "metrics": {"acc1": acc, "acc5": 1.0, "n": 6}},
        {"dataset": "toy", "model": name, "task": "zeroshot_classification", "variant": "descriptors", "classes": 3,
         "metrics": {"acc1": acc + 0.1, "acc5": 1.0, "n": 6}},
        {"dataset": "shards", "model": name, "task": "zeroshot_retrieval", "variant": "retrieval",
         "metrics": {"image_retrieval_recall@1": 0.25, "text_retrieval_recall@1": 0.5, "n_images": 4, "n_texts": 8}}],
        "novelty": {"toy": {"seen_classes": 2, "unseen_classes": 1, "seen": {"acc1": 0.5}, "unseen": {"acc1": 0.0}}}}


def test_outputs_and_comparison(tmp_path):
    paths = report.write_outputs(_run("grain", 0.5), str(tmp_path / "a"))
    md = open(paths["markdown"]).read()
    assert "| toy | 3 | 6 | 33.3 / 100.0 | 50.0 / 100.0 | 60.0 / 100.0 |" in md  # chance (1/C, 5/C) beside each result
    assert "| shards | 4 | 8 | 25.0 |" in md and "| toy | 2 | 1 | 50.0 | 0.0 |" in md
    assert json.load(open(paths["json"]))["results"][0]["metrics"]["acc1"] == 0.5
    report.write_outputs(_run("clip", 0.25), str(tmp_path / "b"))
    out = report.write_comparison([str(tmp_path / "a/results.json"), str(tmp_path / "b/results.json")], str(tmp_path / "cmp"))
    cmp_md = open(out["markdown"]).read()
    assert "| toy · names | 50.0 | 25.0 |" in cmp_md
    with open(out["chart"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(ValueError, match="junk.json"):
        report.load_run(str(tmp_path / "junk.json"))
