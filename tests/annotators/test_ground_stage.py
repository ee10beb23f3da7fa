"""The grounder stage on real photos. The whole annotation pipeline (real vLLM + OWLv2 on Ray Data, every
bad input, tars and parquet, injected faults, a killed driver, a resume on a `ray start --head` cluster)
runs once, in tests/reliability/test_annotate_faults.py."""

from __future__ import annotations


def test_grounder_stage_boxes_in_decoded_frame(tiny_models, tmp_path):
    """GroundStage on real photos with given descriptions: boxes normalised xyxy, sorted, ≤ max_boxes."""
    from annotators.badinputs import encode, good_photos
    from annotators.stages import GroundStage, decode_batch, to_batch

    photos = good_photos(3, max_side=200)
    rows = [dict(shard="s", shard_rows=3, key=n, source=n, image=encode(im), status="ok", flags=[],
                 descriptions=["a cat", "a cup", "the sky"]) for n, im, _ in photos]
    batch = decode_batch(to_batch(rows), max_image_pixels=10**8, min_image_side=8)
    stage = GroundStage(tiny_models["owlv2"], {"threshold": 0.0, "batch_size": 3}, max_boxes=7)
    out = stage(batch).to_pylist()
    assert [r["key"] for r in out] == [n for n, _, _ in photos]
    for r in out:
        assert r["rgb"] is None and r["status"] == "ok"
        assert 0 < len(r["boxes"]) <= 7 and len(r["boxes"]) == len(r["box_scores"]) == len(r["box_desc_index"])
        assert r["box_scores"] == sorted(r["box_scores"], reverse=True)
        for x1, y1, x2, y2 in r["boxes"]:
            assert 0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1
        assert all(0 <= i < 3 for i in r["box_desc_index"])


def test_ground_stage_isolates_a_raising_call(tiny_models):
    """GroundStage on a batch of three whose detector call raises because of one image: retried image by
    image, the good rows get boxes from the real OWLv2, the bad one is a model_error row saying
    "detector call failed:" and why."""
    from annotators.grounder import Grounder
    from annotators.stages import GroundStage
    from tests.annotators.stage_faults import FailsOnSize, stage_around, three_rows

    model = FailsOnSize(Grounder(tiny_models["owlv2"], threshold=0.0, device="cpu"), (67, 41))
    stage = stage_around(GroundStage, model, grounder=model, max_boxes=5)
    out = stage(three_rows()).to_pylist()
    assert model.calls == [3, 1, 1, 1]
    assert [r["status"] for r in out] == ["ok", "model_error", "ok"]
    assert out[1]["error"] == "detector call failed: RuntimeError: device-side assert triggered (injected)"
    assert all(r["boxes"] and r["error"] is None for r in (out[0], out[2]))
