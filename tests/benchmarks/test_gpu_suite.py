"""benchmarks/gpu_suite.py (docs/performance.md, goals 1–2): the ceiling arithmetic (fast) and the --tiny run (slow)."""

from __future__ import annotations

import json

import pytest

from benchmarks import gpu_suite as gs


def test_decode_ceiling_arithmetic():
    assert gs.kv_bytes_per_token() == 2 * 32 * 32 * 128 * 2  # K and V, 32 layers, 32 heads of 128, bf16
    one = gs.decode_ceiling(1, 100)
    assert one["weights_gb"] == pytest.approx(13.48)
    assert one["tokens_per_s"] == pytest.approx(4.8e12 / (13.48e9 + 736 * 524288), rel=1e-6)  # weight-bound
    big = gs.decode_ceiling(256, 256)
    assert big["kv_gb_per_step"] > big["weights_gb"] and 9000 < big["tokens_per_s"] < 11000  # KV-bound
    assert gs.decode_ceiling(64, 100)["tokens_per_s"] > gs.decode_ceiling(64, 256)["tokens_per_s"]


def test_owlv2_flops_and_ceiling():
    f = gs.owlv2_flops_per_image()
    assert 1.0e12 < f < 1.2e12  # ViT-B/16 over 3,601 tokens dominates
    assert gs.owlv2_flops_per_image(image=480) < f / 3  # quadratic in pixels, plus attention
    c = gs.ceilings()
    assert c["grounder"]["images_per_s"] == pytest.approx(989e12 / f)
    assert len(c["describer"]) == 6


@pytest.mark.slow  # a vLLM CPU engine start (~1 min on 2 cores) plus tiny train steps and a tiny OWLv2
def test_tiny_mode_runs_every_part(tmp_path):
    out = tmp_path / "suite.json"
    assert gs.main(["--tiny", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["tiny"] and {"clip", "grain", "grain desc_len 8", "summary"} <= set(res["train"])
    runs = res["describer"]["runs"]
    assert runs and all(r["all_forced_length"] for r in runs)  # output length forced, as on the GPU
    assert not any(f.endswith((".safetensors", ".bin")) for f in res["describer"]["model_dir_files"])  # dummy weights
    assert res["grounder"]["images_per_s"] > 0 and res["grounder"]["flops_per_image_counted"] > 0
    assert res["data"]["samples_per_s_per_core"] > 0 and res["data"]["cores_for_3x"]
