"""grain.data: decoding (limits, EXIF), preprocessing, caption draw, row → sample, collation."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from grain.config import ModelConfig
from grain.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageDecodeError,
    ImageTooLarge,
    ImageTooSmall,
    choose_caption,
    decode_image,
    make_batch,
    preprocess_image,
    sample_from_row,
    use_alt_text,
)


def _png(w, h, colour=(255, 0, 0), mode="RGB"):
    buf = io.BytesIO()
    Image.new(mode, (w, h), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_errors_name_the_input():
    with pytest.raises(ImageDecodeError, match="row 'k1'"):
        decode_image(b"not an image", name="row 'k1'")
    with pytest.raises(ImageDecodeError, match="no image bytes"):
        decode_image(b"")
    truncated = _png(40, 30)[:60]
    with pytest.raises(ImageDecodeError) as e:
        decode_image(truncated)
    assert e.value.status == "decode_error"
    with pytest.raises(ImageTooLarge) as e:
        decode_image(_png(200, 100), max_pixels=10_000)
    assert e.value.status == "too_large" and "20000" in str(e.value)
    with pytest.raises(ImageTooSmall):
        decode_image(_png(1, 1), min_side=2)


def test_decode_applies_exif_orientation_and_rgb():
    img = Image.new("L", (40, 20), 128)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    out = decode_image(buf.getvalue())
    assert out.size == (20, 40) and out.mode == "RGB"
    rgba = decode_image(_png(5, 7, (1, 2, 3, 4), mode="RGBA"))
    assert rgba.mode == "RGB" and rgba.size == (5, 7)


def test_preprocess_squash_and_normalise():
    x = preprocess_image(_png(100, 40, (255, 0, 0)), 64)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    expect = [(1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], -IMAGENET_MEAN[1] / IMAGENET_STD[1], -IMAGENET_MEAN[2] / IMAGENET_STD[2]]
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(expect), atol=1e-4)
    # squash keeps normalised positions: a block on the left 25 % stays on the left 25 %
    a = np.zeros((40, 100, 3), np.uint8)
    a[:, :25] = 255
    y = preprocess_image(Image.fromarray(a), 64)
    col = y[0].mean(0)
    assert col[:14].min() > 1.5 and col[18:].max() < -1.5


def test_caption_draw_is_a_function_of_seed_epoch_key():
    keys = [f"k{i}" for i in range(400)]
    a = [use_alt_text(0, 1, k) for k in keys]
    assert a == [use_alt_text(0, 1, k) for k in keys]  # same inputs, same draw (no process salt)
    assert 0.4 < np.mean(a) < 0.6  # ~50/50
    assert a != [use_alt_text(0, 2, k) for k in keys]  # a new epoch redraws
    assert a != [use_alt_text(1, 1, k) for k in keys]  # so does a new seed
    row = {"key": "x", "source_caption": "alt", "mllm_caption": "mllm"}
    picks = {choose_caption(row, 0, e) for e in range(20)}
    assert picks == {"alt", "mllm"}
    assert choose_caption({"key": "x", "source_caption": None, "mllm_caption": "m"}, 0, 0) == "m"
    assert choose_caption({"key": "x", "source_caption": " a ", "mllm_caption": ""}, 0, 0) == "a"
    assert choose_caption({"key": "x", "source_caption": None, "mllm_caption": None}, 0, 0) is None


def test_sample_from_row_refuses_rows_that_cannot_train():
    cfg = ModelConfig.preset("tiny")
    ok = {"key": "k1", "image": _png(40, 30), "source_caption": "alt", "mllm_caption": "dense",
          "descriptions": ["a"], "boxes": [[0.1, 0.1, 0.5, 0.5]], "box_scores": [0.9], "box_desc_index": [0]}
    s = sample_from_row(ok, cfg, seed=0, epoch=3)
    assert s["key"] == "k1" and s["image"].shape == (3, 64, 64) and s["caption"] == choose_caption(ok, 0, 3)
    with pytest.raises(ValueError, match="'k2' has status 'decode_error'"):
        sample_from_row({**ok, "key": "k2", "status": "decode_error"}, cfg)
    with pytest.raises(ValueError, match="'k3': neither source_caption nor mllm_caption"):
        sample_from_row({**ok, "key": "k3", "source_caption": " ", "mllm_caption": None}, cfg)
    with pytest.raises(ImageDecodeError, match="row 'k4'"):
        sample_from_row({**ok, "key": "k4", "image": b"not an image"}, cfg)


def test_make_batch_targets():
    cfg = ModelConfig.preset("tiny", max_target_boxes=2)
    img = torch.zeros(3, 64, 64)
    samples = [
        {"image": img, "caption": "one", "descriptions": ["a cat", "a hat"], "key": "a",
         "boxes_xyxy": [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.1, 0.1, 0.2, 0.2]], "box_desc": [0, 1, 0],
         "box_scores": [0.5, 0.9, 0.7]},
        {"image": img, "caption": "two", "descriptions": [], "boxes_xyxy": [], "box_desc": [], "key": "b"},
        {"image": img, "caption": "three", "descriptions": ["a hat"], "boxes_xyxy": [[0.2, 0.2, 0.6, 1.2]], "box_desc": [0], "key": "c"},
    ]
    b = make_batch(samples, cfg)
    assert b["images"].shape == (3, 3, 64, 64) and b["captions"].shape == (3, 77)
    assert b["target_image"].tolist() == [0, 0, 2]  # top-2 by score for image 0, none for image 1
    assert torch.allclose(b["target_boxes"][0], torch.tensor([0.75, 0.75, 0.5, 0.5]))  # score 0.9 first
    assert torch.allclose(b["target_boxes"][1], torch.tensor([0.15, 0.15, 0.1, 0.1]))
    assert torch.allclose(b["target_boxes"][2], torch.tensor([0.4, 0.6, 0.4, 0.8]))  # clamped to [0, 1]
    ids = b["target_text_id"].tolist()
    assert ids[0] == ids[2] != ids[1]  # "a hat" twice, "a cat" once
    assert b["target_desc_tokens"].shape == (3, 32) and b["keys"] == ["a", "b", "c"]


def test_make_batch_bad_input_named():
    cfg = ModelConfig.preset("tiny")
    with pytest.raises(ValueError, match=r"sample 0 \(key='x'\) image"):
        make_batch([{"image": torch.zeros(3, 32, 32), "key": "x"}], cfg)
    with pytest.raises(ValueError, match="points at description 3"):
        make_batch([{"image": torch.zeros(3, 64, 64), "descriptions": ["a"], "boxes_xyxy": [[0, 0, 1, 1]], "box_desc": [3]}], cfg)
