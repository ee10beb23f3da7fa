"""Tiny-model builder: checkpoints load with transformers, the cache is reused, a changed spec rebuilds."""

from __future__ import annotations

import json
import os
import time

import pytest

from grain.testing import tiny_models as tm


def test_all_four_load_with_transformers(tiny_models):
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    assert set(tiny_models) == {"llava", "qwen2-vl", "text-llm", "owlv2"}
    types = {n: AutoConfig.from_pretrained(p).model_type for n, p in tiny_models.items()}
    assert types == {"llava": "llava", "qwen2-vl": "qwen2_vl", "text-llm": "llama", "owlv2": "owlv2"}
    for name in ("llava", "qwen2-vl", "text-llm"):
        cfg = AutoConfig.from_pretrained(tiny_models[name])
        text = getattr(cfg, "text_config", cfg)
        assert text.hidden_size // text.num_attention_heads >= 32  # vLLM CPU attention rejects head_dim 16
    llava_proc = AutoProcessor.from_pretrained(tiny_models["llava"])
    prompt = llava_proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}], add_generation_prompt=True)
    assert prompt == "USER: <image>\nDescribe. ASSISTANT:"
    qwen_proc = AutoProcessor.from_pretrained(tiny_models["qwen2-vl"])
    assert qwen_proc.tokenizer.convert_tokens_to_ids("<|image_pad|>") == AutoConfig.from_pretrained(tiny_models["qwen2-vl"]).image_token_id
    tok = AutoTokenizer.from_pretrained(tiny_models["text-llm"])
    chat = tok.apply_chat_template([{"role": "user", "content": "Describe a dog."}], add_generation_prompt=True, tokenize=False)
    assert chat.startswith("<|begin_of_text|><|start_header_id|>user") and chat.endswith("assistant<|end_header_id|>\n\n")


def test_llava_keys_use_the_hub_layout(tiny_models):
    from safetensors import safe_open

    with safe_open(os.path.join(tiny_models["llava"], "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    vision = [k for k in keys if k.startswith("vision_tower.")]
    assert vision and all(k.startswith("vision_tower.vision_model.") for k in vision)


def test_llava_and_owlv2_run_in_transformers(tiny_models):
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration, Owlv2ForObjectDetection

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 90, 3), dtype=np.uint8))
    proc = AutoProcessor.from_pretrained(tiny_models["llava"])
    model = LlavaForConditionalGeneration.from_pretrained(tiny_models["llava"]).eval()
    # every vision weight was reloaded from the renamed keys (a missed key would be re-initialised)
    inp = proc(images=[img], text=["USER: <image>\nHi ASSISTANT:"], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inp, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == inp["input_ids"].shape[1] + 4
    owl_proc = AutoProcessor.from_pretrained(tiny_models["owlv2"])
    tok = owl_proc.tokenizer
    assert tok.pad_token_id == 0 and tok.bos_token_id != 0  # OWLv2 masks queries whose first id is 0
    assert tok.tokenize("a red dog") == ["a</w>", "red</w>", "dog</w>"]  # a real BPE, not a 2-token stub
    owl = Owlv2ForObjectDetection.from_pretrained(tiny_models["owlv2"]).eval()
    with torch.no_grad():
        o = owl(**owl_proc(text=[["a dog", "a tail"]], images=[img], return_tensors="pt"))
    assert o.logits.shape[-1] == 2 and torch.isfinite(o.logits).all() and o.pred_boxes.shape[-1] == 4


def test_cache_reuse_spec_change_and_determinism(tmp_path, monkeypatch):
    root = tmp_path / "tm"
    path = tm.ensure_tiny_models(["owlv2"], root=root)["owlv2"]
    marker = json.loads((root / "owlv2" / tm.MARKER).read_text())
    assert marker["spec_hash"] == tm.spec_hash("owlv2")
    weights = (root / "owlv2" / "model.safetensors").read_bytes()
    mtime = os.path.getmtime(root / "owlv2" / "model.safetensors")
    t0 = time.perf_counter()
    assert tm.ensure_tiny_models(["owlv2"], root=root)["owlv2"] == path
    assert time.perf_counter() - t0 < 0.5 and os.path.getmtime(root / "owlv2" / "model.safetensors") == mtime
    # forced rebuild: same spec, same seed → identical weights
    tm.ensure_tiny_models(["owlv2"], root=root, force=True)
    assert (root / "owlv2" / "model.safetensors").read_bytes() == weights
    # a changed spec rebuilds (different hash, different weights); no temp dirs left behind
    monkeypatch.setitem(tm.SPECS, "owlv2", {**tm.SPECS["owlv2"], "seed": 99})
    tm.ensure_tiny_models(["owlv2"], root=root)
    assert json.loads((root / "owlv2" / tm.MARKER).read_text())["spec_hash"] == tm.spec_hash("owlv2") != marker["spec_hash"]
    assert (root / "owlv2" / "model.safetensors").read_bytes() != weights
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".lock")) == ["owlv2"]


def test_incomplete_dir_is_rebuilt(tmp_path):
    root = tmp_path / "tm"
    (root / "text-llm").mkdir(parents=True)
    (root / "text-llm" / "config.json").write_text("{}")  # a crashed copy: no marker
    tm.ensure_tiny_models(["text-llm"], root=root)
    assert tm.is_complete(root / "text-llm", "text-llm")


def test_cli(tmp_path, capsys, monkeypatch):
    assert tm.main(["build-tiny", "--only", "text-llm", "--output", str(tmp_path)]) == 0
    assert f"text-llm: {tmp_path / 'text-llm'}" in capsys.readouterr().out
    monkeypatch.setenv("GRAIN_CACHE", str(tmp_path / "cache"))
    assert tm.cache_root() == tmp_path / "cache" / "tiny-models"
    with pytest.raises(SystemExit) as e:
        tm.main(["build-tiny", "--help"])
    assert e.value.code == 0 and "--size" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tm.main(["build-tiny", "--only", "gpt-17"])
    with pytest.raises(ValueError, match="unknown tiny model 'nope'"):
        tm.ensure_tiny_models(["nope"], root=tmp_path)


@pytest.mark.slow
def test_bench_size_builds_and_runs(tmp_path):
    """`--size bench`: larger checkpoints of the same architectures (annotation benchmark); they load and run."""
    import numpy as np
    import torch
    from PIL import Image

    from annotators.grounder import Grounder

    assert tm.main(["build-tiny", "--size", "bench", "--output", str(tmp_path)]) == 0
    assert all(tm.is_complete(tmp_path / n, n) for n in tm.SIZES["bench"])
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tmp_path / "llava-bench")
    assert cfg.vision_config.image_size == 224 and cfg.text_config.num_hidden_layers == 4
    g = Grounder(str(tmp_path / "owlv2-bench"), threshold=0.0, max_boxes=5)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8))
    out = g.ground([img], [["a thing", "another thing"]])[0]
    assert out.error is None and len(out.scores) == 5 and torch.isfinite(torch.tensor(out.boxes_xyxy_norm)).all()
