"""Degenerate MLLM and detector outputs, through the code that turns them into shard rows (fast).

MLLM: empty, no bullets, ~10k tokens, repeated lines, non-text → parse.parse_mllm_output →
DescribeStage → pipeline.finalize_row. Detector: boxes outside [0, 1], inverted, NaN, mismatched
lengths, unsorted → grounder.unpad_boxes/valid_boxes and GroundStage → finalize_row. The model
engines are replaced by objects that return these outputs (the stage code under test is real);
real-engine runs are in tests/reliability/test_annotate_faults.py and tests/annotators.
Every outcome is either a valid ok row (reason kept as a flag) or an error row with its reason.
"""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from annotators.describer import DescriberOutput
from annotators.grounder import GroundingOutput, unpad_boxes, valid_boxes
from grain.common.parse import MAX_CAPTION_CHARS, MAX_DESCRIPTIONS, parse_mllm_output
from annotators.pipeline import finalize_row
from annotators.stages import DescribeStage, GroundStage, decode_batch, to_batch
from grain.common.schema import to_table, validate_table

MODELS = {"mllm_id": "test-mllm", "detector_id": "test-detector"}
LONG = "\n".join(f"- object number {i} with a rather long description of its shape and colour" for i in range(800))


class _TextDescriber:
    """Stands in for the vLLM engine: returns fixed answer texts, parsed by the real parser."""

    def __init__(self, texts):
        self.texts = texts

    def describe(self, images):
        assert len(images) == len(self.texts)
        outs = []
        for t in self.texts:
            cap, descs = parse_mllm_output(t)
            outs.append(DescriberOutput(raw_text=t if isinstance(t, str) else "", caption=cap, descriptions=descs,
                                        num_generated_tokens=len(str(t).split())))
        return outs


class _FixedGrounder:
    def __init__(self, outs):
        self.outs = outs

    def ground(self, images, descriptions):
        assert len(images) == len(self.outs)
        return self.outs


def _decoded_rows(n, caption="a photo"):
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 120, 200)).save(buf, format="PNG")
    rows = [dict(shard="s", shard_rows=n, key=f"k{i}", source=f"s::k{i}", image=buf.getvalue(), status="ok",
                 flags=[] if caption else ["missing_source_caption"], source_caption=caption) for i in range(n)]
    return decode_batch(to_batch(rows), max_image_pixels=10**6, min_image_side=8)


def _stage(cls, attr, engine, **kw):
    stage = cls.__new__(cls)  # skip model loading: the engine is the stand-in
    stage.inject = {}
    setattr(stage, attr, engine)
    for k, v in kw.items():
        setattr(stage, k, v)
    return stage


@pytest.mark.parametrize("text, caption, n_desc", [
    ("", "", 0),
    (None, "", 0),
    (b"- bytes are not text", "", 0),
    ("A dog runs on the beach under a grey sky.", "A dog runs on the beach under a grey sky.", 0),
    ("- a dog\n" * 500, "", 1),
    (LONG * 3, "", MAX_DESCRIPTIONS),
    ("Caption: " + "word " * 10_000, None, 0),
])
def test_parse_degenerate_answers(text, caption, n_desc):
    cap, descs = parse_mllm_output(text)
    assert len(descs) == n_desc and len(cap) <= MAX_CAPTION_CHARS
    assert len({d.casefold() for d in descs}) == len(descs)
    if caption is not None:
        assert cap == caption


def test_describe_stage_rows_from_degenerate_answers():
    texts = ["", "Just a caption, no list at all.", "- a dog\n" * 500, LONG * 3, "\x00\x01\ufffd" * 3000]
    batch = _decoded_rows(len(texts))
    stage = _stage(DescribeStage, "describer", _TextDescriber(texts), max_descriptions=MAX_DESCRIPTIONS)
    rows = [finalize_row(r, MODELS) for r in stage(batch).to_pylist()]
    validate_table(to_table(rows), where="described rows")  # every row is schema-valid
    by_key = {r["key"]: r for r in rows}
    assert all(r["status"] == "ok" for r in rows)  # a source caption exists: no-description answers are valid rows
    for k in ("k0", "k1", "k4"):
        assert by_key[k]["descriptions"] == [] and "no_descriptions" in by_key[k]["flags"]  # the reason, as a flag
    assert by_key["k1"]["mllm_caption"] == "Just a caption, no list at all."
    assert by_key["k2"]["descriptions"] == ["a dog"]
    assert len(by_key["k3"]["descriptions"]) == MAX_DESCRIPTIONS


def test_empty_answer_and_no_source_caption_is_an_error_row_with_reason():
    stage = _stage(DescribeStage, "describer", _TextDescriber([""]), max_descriptions=MAX_DESCRIPTIONS)
    row = finalize_row(stage(_decoded_rows(1, caption=None)).to_pylist()[0], MODELS)
    assert row["status"] == "model_error" and "no caption at all" in row["error"]


def test_unpad_and_valid_boxes_on_wild_detector_boxes():
    cxcywh = torch.tensor([
        [0.5, 0.5, 3.0, 3.0],  # far outside the square: clipped to the whole image
        [-2.0, -2.0, 0.5, 0.5],  # entirely outside: empty after clipping
        [0.4, 0.3, -0.2, 0.1],  # negative width: inverted
        [float("nan"), 0.5, 0.1, 0.1],  # NaN
        [0.25, 0.25, 0.2, 0.2],  # a normal box
    ])
    xyxy = unpad_boxes(cxcywh, 64, 48)
    ok = valid_boxes(xyxy, 64, 48)
    assert ok.tolist() == [True, False, False, False, True]
    assert torch.all((xyxy[ok] >= 0) & (xyxy[ok] <= 1))
    assert xyxy[0].tolist() == [0.0, 0.0, 1.0, 1.0]


def test_ground_stage_rows_from_wild_detector_outputs():
    outs = [
        GroundingOutput([[-0.5, 0.1, 1.7, 0.9], [0.2, 0.2, 0.4, 0.4]], [0.4, 0.9], [0, 0]),  # outside [0,1], unsorted
        GroundingOutput([[0.8, 0.1, 0.2, 0.9]], [0.5], [0]),  # inverted
        GroundingOutput([[float("nan"), 0.1, 0.2, 0.9]], [0.5], [0]),  # NaN
        GroundingOutput([[0.1, 0.1, 0.2, 0.2]], [0.5, 0.4], [0]),  # lengths disagree
        GroundingOutput([[0.1, 0.1, 0.2, 0.2]], [0.5], [7]),  # label index out of range
        GroundingOutput(error="CUDA out of memory"),  # a failed call
        GroundingOutput(),  # nothing above the threshold
    ]
    batch = _decoded_rows(len(outs)).to_pylist()
    for r in batch:
        r["descriptions"] = ["a blue square"]
    stage = _stage(GroundStage, "grounder", _FixedGrounder(outs), max_boxes=50)
    rows = [finalize_row(r, MODELS) for r in stage(to_batch(batch)).to_pylist()]
    validate_table(to_table(rows), where="grounded rows")
    r = {row["key"]: row for row in rows}
    assert r["k0"]["status"] == "ok" and r["k0"]["box_scores"] == pytest.approx([0.9, 0.4])
    assert r["k0"]["boxes"][1] == pytest.approx([0.0, 0.1, 1.0, 0.9])  # clipped into [0, 1]
    for k, why in (("k1", "x1<=x2"), ("k2", "normalised"), ("k3", "1 boxes, 2 scores"), ("k4", "box_desc_index"),
                   ("k5", "CUDA out of memory")):
        assert r[k]["status"] == "model_error" and why in r[k]["error"], (k, r[k]["error"])
    assert r["k6"]["status"] == "ok" and r["k6"]["boxes"] == [] and "no_boxes" in r["k6"]["flags"]
