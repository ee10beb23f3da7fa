"""`grain plan`: the extrapolation's arithmetic from a hand-written gpu_suite JSON (fast), and the probe of
the real pipeline on the tiny profile (slow: a vLLM engine start)."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from PIL import Image

from infra import plan
from infra.cli import main as grain


def _shard(path, n: int = 3, side: int = 32) -> int:
    """An img2dataset-style tar of ``n`` PNGs with captions; returns the image bytes written."""
    total = 0
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            buf = io.BytesIO()
            Image.new("RGB", (side, side), (40 * i, 90, 200)).save(buf, "PNG")
            for name, data in ((f"{i:09d}.png", buf.getvalue()), (f"{i:09d}.txt", f"a blue square {i}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            total += len(buf.getvalue())
    return total


SUITE = {"tiny": False, "hardware": "NVIDIA H200",
         "describer": {"runs": [{"out_tokens": 100, "images_per_s": 9.0}, {"out_tokens": 256, "images_per_s": 2.0}]},
         "describer_hf": {"runs": [{"out_tokens": 256, "images_per_s": 0.5}]},
         "grounder": {"images_per_s": 6.0}, "train": {"grain": {"samples_per_s": 100.0}},
         "data": {"samples_per_s_per_core": 50.0}}


def test_plan_arithmetic_from_a_rates_file(tmp_path, capsys):
    shard = tmp_path / "00000.tar"
    image_bytes = _shard(shard)
    rates = tmp_path / "suite.json"
    rates.write_text(json.dumps(SUITE))
    out = tmp_path / "plan.json"
    assert grain(["plan", "--input", str(shard), "--images", "540000", "--epochs", "3", "--gpus", "4",
                  "--gpu-hour-price", "2.5", "--profile", "paper", "--rates", str(rates), "--json", str(out)]) == 0
    p = json.loads(out.read_text())["plan"]
    # t_d = 2 (256 tokens, the longest vLLM run), t_g = 6: t_eff = 1 / (1/2 + 1/6) = 1.5 images/s
    assert p["annotate_images_per_s"] == pytest.approx(1.5, rel=1e-12)
    assert p["annotate_gpu_hours"] == pytest.approx(540000 / (3600 * 1.5), rel=1e-12)  # 100
    assert p["train_gpu_hours"] == pytest.approx(3 * 540000 / (3600 * 100.0), rel=1e-12)  # 4.5
    assert p["gpu_hours"] == pytest.approx(104.5, rel=1e-12)
    assert p["wall_hours"] == pytest.approx(104.5 / 4, rel=1e-12)
    assert p["cost"] == pytest.approx(2.5 * 104.5, rel=1e-12)
    assert p["decode_cores_per_gpu_3x"] == pytest.approx(3 * 100.0 / 50.0, rel=1e-12)
    assert p["input_gb"] == pytest.approx(540000 * (image_bytes / 3) / 1e9, rel=1e-12)
    text = capsys.readouterr().out
    assert "104.50" in text and "261.25" in text and "wall 26.12 h on 4 GPU(s)" in text
    assert "≈ 885 img/s" in text  # the ceiling beside the measured grounder rate
    assert "describer: vLLM, 256 output tokens" in text


def test_rates_file_without_vllm_uses_the_labelled_transformers_lower_bound(tmp_path):
    path = tmp_path / "suite.json"
    path.write_text(json.dumps({**SUITE, "describer": {"error": "ModuleNotFoundError: No module named 'vllm'"}}))
    rates = plan.rates_from_suite(str(path))
    assert rates["describer_images_per_s"] == 0.5
    assert any("lower bound" in n for n in rates["notes"])


def test_bad_rates_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "suite.json"
    path.write_text(json.dumps({"describer": {"runs": [{"out_tokens": 8, "images_per_s": 1.0}]}}))
    with pytest.raises(SystemExit, match="suite.json.*grounder.images_per_s"):
        plan.rates_from_suite(str(path))


@pytest.mark.slow
def test_probe_on_the_tiny_profile_end_to_end(tmp_path, capsys):
    shard = tmp_path / "00000.tar"
    _shard(shard, n=6)
    out = tmp_path / "plan.json"
    assert grain(["plan", "--input", str(shard), "--images", "1000", "--profile", "tiny", "--probe-images", "6",
                  "--probe-steps", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["probe"]["images"] == 6
    for k in ("describer_images_per_s", "grounder_images_per_s", "train_samples_per_s"):
        assert res["rates"][k] > 0, k
    sizes = {k: res["probe"][k] for k in ("input_bytes_per_image", "annotation_bytes_per_image")}
    again = plan.extrapolate(res["rates"], 1000, res["plan"]["epochs"], 1, None, sizes)
    assert again == res["plan"]  # the JSON's plan is the arithmetic of its own rates
    text = capsys.readouterr().out
    assert "describe this machine" in text and "training GPU-hours" in text
