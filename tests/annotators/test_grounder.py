"""Grounder: the padding-undo geometry on known numbers, then real OWLv2 forwards on non-square photos
checked against transformers' own post-processing (the reference for the padded-square frame)."""

from __future__ import annotations

import pytest
import torch

from annotators.grounder import Grounder, GroundingOutput, unpad_boxes, valid_boxes
from grain.box_ops import box_iou


def test_unpad_landscape_known_numbers():
    # 400 × 200 image → padded to 400 × 400 (bottom). Box in the square: x 0.25..0.75, y 0.1..0.4.
    b = torch.tensor([[0.5, 0.25, 0.5, 0.3]])
    assert torch.allclose(unpad_boxes(b, 400, 200), torch.tensor([[0.25, 0.2, 0.75, 0.8]]))


def test_unpad_portrait_known_numbers_and_clip():
    # 100 × 300 image → padded to 300 × 300 (right). x in the square 0..1/3 is the whole image width.
    b = torch.tensor([[1 / 6, 0.5, 1 / 3, 1.0], [0.5, 0.5, 1.0, 1.0]])
    out = unpad_boxes(b, 100, 300)
    assert torch.allclose(out[0], torch.tensor([0.0, 0.0, 1.0, 1.0]), atol=1e-6)
    assert torch.allclose(out[1], torch.tensor([0.0, 0.0, 1.0, 1.0]))  # the whole square clips to the image


def test_box_in_padding_is_dropped():
    # 400 × 200: the bottom half of the square is padding; a box there clips to zero height.
    xyxy = unpad_boxes(torch.tensor([[0.5, 0.8, 0.2, 0.2], [0.5, 0.25, 0.2, 0.2]]), 400, 200)
    assert valid_boxes(xyxy, 400, 200).tolist() == [False, True]
    assert not valid_boxes(torch.tensor([[0.5, 0.5, 0.4, 0.6], [float("nan"), 0, 1, 1]]), 10, 10).any()


def test_square_image_is_identity():
    b = torch.tensor([[0.3, 0.4, 0.2, 0.4]])
    assert torch.allclose(unpad_boxes(b, 64, 64), torch.tensor([[0.2, 0.2, 0.4, 0.6]]))


def _check_output(o: GroundingOutput, n_desc: int, threshold: float, max_boxes: int = 50):
    assert o.error is None
    assert len(o.boxes_xyxy_norm) == len(o.scores) == len(o.desc_index) <= max_boxes
    assert o.scores == sorted(o.scores, reverse=True) and all(s > threshold for s in o.scores)
    assert all(0 <= j < n_desc for j in o.desc_index)
    for x1, y1, x2, y2 in o.boxes_xyxy_norm:
        assert 0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0


def test_real_forward_on_non_square_photos(tiny_grounder, photos):
    names = ["astronaut_portrait", "chelsea", "coffee"]
    descs = [["a person", "a white space suit", "an american flag"], ["a cat"], []]
    outs = tiny_grounder.ground([photos[n] for n in names], descs)
    assert len(outs) == 3
    for o, d in zip(outs, descs):
        _check_output(o, len(d), 0.3)
    assert outs[2] == GroundingOutput()  # no descriptions → no boxes (and no model call)
    assert len(outs[0].scores) > 0 and len(outs[1].scores) > 0  # random weights still score some boxes > 0.3


@pytest.mark.parametrize("name", ["astronaut_portrait", "rocket"])
def test_frame_matches_transformers_post_processing(tiny_grounder, photos, name):
    """Reference: transformers' post_process_object_detection with target size (max side, max side) gives pixel
    boxes in the padded square, whose origin is the image's (OWLv2 pads bottom/right); dividing by (w, h) and
    clipping must give our boxes exactly."""
    im, d = photos[name], ["a rocket", "the sky", "a tower"]
    g = Grounder(tiny_grounder.model_name, device="cpu", threshold=0.3, max_boxes=1000)
    ours = g.ground([im], [d])[0]
    proc, model = g.processor, g.model
    with torch.no_grad():
        enc = proc(text=[d], images=[im], return_tensors="pt")
        out = model(**enc)
    side = max(im.size)
    ref = proc.image_processor.post_process_object_detection(out, threshold=0.3, target_sizes=[(side, side)])[0]
    w, h = im.size
    ref_boxes = (ref["boxes"] / torch.tensor([w, h, w, h])).clamp(0, 1)
    keep = valid_boxes(ref_boxes, w, h)
    order = torch.argsort(ref["scores"][keep], descending=True)
    assert len(ours.scores) == int(keep.sum()) > 0
    assert torch.allclose(torch.tensor(ours.boxes_xyxy_norm), ref_boxes[keep][order], atol=1e-5)
    assert torch.allclose(torch.tensor(ours.scores), ref["scores"][keep][order], atol=1e-5)
    assert ours.desc_index == ref["labels"][keep][order].tolist()


def test_padded_queries_never_win(tiny_grounder, photos):
    """In a batch, an image with 1 description sits beside one with 5: its boxes must all carry index 0 and
    equal what it gets alone (padding queries are masked, not scored)."""
    ims = [photos["chelsea"], photos["coffee"]]
    descs = [["a cat"], ["a cup", "a saucer", "coffee", "a spoon", "a table"]]
    batch = tiny_grounder.ground(ims, descs)
    alone = tiny_grounder.ground([ims[0]], [descs[0]])[0]
    assert set(batch[0].desc_index) <= {0}
    assert batch[0].scores == pytest.approx(alone.scores, abs=1e-5)
    assert torch.allclose(torch.tensor(batch[0].boxes_xyxy_norm), torch.tensor(alone.boxes_xyxy_norm), atol=1e-5)


def test_threshold_max_boxes_and_nms(tiny_grounder, photos):
    im, d = photos["rocket"], ["a rocket", "smoke", "a launch tower"]
    base = Grounder(tiny_grounder.model_name, device="cpu", threshold=0.3)
    strict = Grounder(tiny_grounder.model_name, device="cpu", threshold=0.9, max_boxes=3)
    nms = Grounder(tiny_grounder.model_name, device="cpu", threshold=0.3, nms=True)
    b, s, n = base.ground([im], [d])[0], strict.ground([im], [d])[0], nms.ground([im], [d])[0]
    _check_output(s, 3, 0.9, max_boxes=3)
    assert s.scores == pytest.approx(b.scores[: len(s.scores)], abs=1e-6)  # a stricter run keeps the top of the list
    _check_output(n, 3, 0.3)
    assert len(n.scores) <= len(b.scores)
    iou, _ = box_iou(torch.tensor(n.boxes_xyxy_norm), torch.tensor(n.boxes_xyxy_norm))
    for i in range(len(n.scores)):
        for j in range(i + 1, len(n.scores)):
            assert not (n.desc_index[i] == n.desc_index[j] and iou[i, j] > 0.5)


def test_bad_inputs_are_per_item(tiny_grounder, photos):
    outs = tiny_grounder.ground([photos["chelsea"], "not an image", photos["coffee"]], [["a cat"], ["x"], ["", "a cup"]])
    assert outs[0].error is None
    assert "expected a PIL image" in outs[1].error
    assert "non-empty strings" in outs[2].error
    with pytest.raises(ValueError, match="2 images but 1"):
        tiny_grounder.ground([photos["chelsea"]] * 2, [["a cat"]])
    auto = Grounder(tiny_grounder.model_name)  # device=None: CUDA when visible
    assert auto.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="threshold"):
        Grounder(tiny_grounder.model_name, device="cpu", threshold=1.5)


@pytest.mark.parametrize("name,axis", [("coffee", "rows"), ("astronaut_portrait", "cols")])
def test_processor_pads_bottom_right(tiny_grounder, photos, name, axis):
    """The premise of unpad_boxes: the image sits at the top-left of the square, padding at bottom (landscape) or
    right (portrait). Checked on the processor the Grounder really uses."""
    im = photos[name]
    px = tiny_grounder.processor.image_processor(images=[im], return_tensors="pt")["pixel_values"][0]  # [3, S, S]
    s = px.shape[-1]
    w, h = im.size
    content = round(s * min(w, h) / max(w, h))
    if axis == "rows":
        pad, img = px[:, content + 4:, :], px[:, : content - 4, :]  # ±4: the resize's anti-aliasing blurs the edge
    else:
        pad, img = px[:, :, content + 4:], px[:, :, : content - 4]
    assert pad.numel() and (pad == pad[:, :1, :1]).all()  # constant padding (one value per channel)
    assert img.std() > 0.1  # the photo is there


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(tiny_grounder, photos):
    torch.backends.cudnn.allow_tf32 = False  # the patch-embedding conv would otherwise run in TF32
    torch.backends.cuda.matmul.allow_tf32 = False
    ims = [photos["astronaut_portrait"], photos["rocket"]]
    descs = [["a person", "a flag"], ["a rocket", "smoke", "a tower"]]
    cpu = tiny_grounder.ground(ims, descs)
    gpu = Grounder(tiny_grounder.model_name, threshold=0.3, device="cuda").ground(ims, descs)
    for c, g in zip(cpu, gpu):
        _check_output(g, 3, 0.3)
        # scores near the threshold may flip between devices (GPU resize differs slightly): compare the clear ones
        clear = [k for k, s in enumerate(c.scores) if s > 0.35]
        top = {tuple(round(v, 2) for v in c.boxes_xyxy_norm[k]) for k in clear}
        got = {tuple(round(v, 2) for v in b) for b in g.boxes_xyxy_norm}
        assert len(top - got) <= max(1, len(top) // 10)
    half = Grounder(tiny_grounder.model_name, threshold=0.3, device="cuda", dtype="bfloat16").ground(ims, descs)
    for h in half:
        _check_output(h, 3, 0.3)


def test_bfloat16_runs_on_cpu_as_configured(tiny_grounder, photos):
    """`models.detector_dtype: bfloat16` (annotators/config.py → pipeline.grounder_kwargs) builds a bf16
    Grounder; on CPU it runs too (slowly on CPUs without AVX512-BF16), with the same output contract."""
    from annotators.config import load_config
    from annotators.pipeline import grounder_kwargs

    kw = grounder_kwargs(load_config(profile="tiny", overrides=["models.detector_dtype=bfloat16"]), {})
    g = Grounder(tiny_grounder.model_name, device="cpu", **{k: v for k, v in kw.items() if k != "revision"})
    assert g.model.dtype == torch.bfloat16
    for out in g.ground([photos["rocket"]], [["a rocket", "smoke"]]):
        _check_output(out, 2, kw["threshold"])
