"""Describer through real vLLM engines on the tiny LLaVA and Qwen2-VL checkpoints (slow: engine start),
plus the fast parts (family detection, engine-death classification)."""

from __future__ import annotations

import pytest

from annotators.describer import DescriberOutput, is_engine_dead
from grain.common.parse import parse_mllm_output
from annotators.pipeline import resolve_profile
from annotators.prompts import REQUEST_BUILDERS, detect_family


def test_detect_family(tiny_models, tmp_path):
    assert detect_family(tiny_models["llava"]) == "llava"
    assert detect_family(tiny_models["qwen2-vl"]) == "qwen2_vl"
    assert detect_family(resolve_profile("paper")["mllm"]) == "llava"  # hub id, offline: from the name
    assert detect_family("Qwen/Qwen2-VL-2B-Instruct") == "qwen2_vl"
    with pytest.raises(ValueError, match="text-llm"):
        detect_family(tiny_models["text-llm"])  # a text-only Llama is no MLLM


def test_profiles(tiny_models):
    assert resolve_profile("paper") == {"mllm": "llava-hf/llava-1.5-7b-hf", "mllm_family": "llava",
                                        "detector": "google/owlv2-base-patch16-ensemble"}
    tiny = resolve_profile("tiny")
    assert tiny["mllm"] == tiny_models["llava"] and tiny["detector"] == tiny_models["owlv2"]
    with pytest.raises(ValueError, match="'huge'"):
        resolve_profile("huge")


def test_prompt_bundles_have_one_image_placeholder():
    llava, qwen = REQUEST_BUILDERS["llava"]("Q?"), REQUEST_BUILDERS["qwen2_vl"]("Q?")
    assert llava.prompt == "USER: <image>\nQ? ASSISTANT:" and llava.prompt.count("<image>") == 1
    assert qwen.prompt.count("<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>") == 1
    assert qwen.prompt.endswith("<|im_start|>assistant\n")
    assert llava.engine_kwargs["limit_mm_per_prompt"] == {"image": 1} == qwen.engine_kwargs["limit_mm_per_prompt"]


def test_engine_death_is_recognised_through_wrapping():
    class EngineDeadError(RuntimeError):
        pass

    try:
        try:
            raise EngineDeadError("core died")
        except EngineDeadError as e:
            raise RuntimeError("generate failed") from e
    except RuntimeError as wrapped:
        assert is_engine_dead(wrapped)
    assert not is_engine_dead(ValueError("prompt too long"))


def _check(outs, n, max_new_tokens):
    assert len(outs) == n
    for o in outs:
        assert isinstance(o, DescriberOutput) and o.error is None
        assert 1 <= o.num_generated_tokens <= max_new_tokens
        assert (o.caption, o.descriptions) == parse_mllm_output(o.raw_text)
        assert o.finish_reason in ("stop", "length")


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["llava_describer", "qwen2_vl_describer"])
def test_describe_real_photos(request, fixture, photos):
    d = request.getfixturevalue(fixture)
    ims = [photos["chelsea"], photos["astronaut_portrait"], photos["camera_gray"].convert("L")]  # L: converted to RGB
    outs = d.describe(ims)
    _check(outs, 3, d.sampling.max_tokens)
    if d.answer_regex:  # structured outputs: even random weights answer in the prompt's layout
        import re

        for o in outs:
            assert o.finish_reason == "stop" and re.fullmatch(d.answer_regex, o.raw_text), o.raw_text
            assert o.caption and 1 <= len(o.descriptions) <= 10 and all(len(x) <= 12 for x in o.descriptions)
    again = d.describe(ims[:1])  # greedy and seeded: reproducible, and independent of the batch it is in
    assert again[0].raw_text == outs[0].raw_text
    assert d.describe([]) == []


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["llava_describer", "qwen2_vl_describer"])
def test_per_image_failure_does_not_fail_the_batch(request, fixture, photos):
    from PIL import Image

    d = request.getfixturevalue(fixture)
    ims = [photos["coffee"], "not an image", Image.new("RGB", (1, 1)), photos["rocket"]]
    if fixture == "qwen2_vl_describer":
        ims[2] = Image.new("RGB", (2000, 4))  # aspect ratio > 200: Qwen2-VL's processor rejects it in vLLM
    outs = d.describe(ims)
    assert len(outs) == 4
    assert outs[0].error is None and outs[3].error is None and outs[0].num_generated_tokens > 0
    assert "expected a PIL image" in outs[1].error
    if fixture == "qwen2_vl_describer":
        assert outs[2].error and "2000x4" in outs[2].error
    # the good images' answers do not depend on the failing neighbours
    assert outs[0].raw_text == d.describe([photos["coffee"]])[0].raw_text


@pytest.mark.slow
def test_vllm_matches_transformers_greedy(llava_describer, tiny_models, photos):
    """Greedy vLLM output equals transformers generate on the same tiny checkpoint and prompt."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from vllm import SamplingParams

    im = photos["chelsea"]
    prompt = llava_describer.request.prompt
    got = llava_describer.llm.generate([{"prompt": prompt, "multi_modal_data": {"image": im}}],
                                       SamplingParams(max_tokens=12, temperature=0.0), use_tqdm=False)[0]
    proc = AutoProcessor.from_pretrained(tiny_models["llava"])
    model = LlavaForConditionalGeneration.from_pretrained(tiny_models["llava"]).eval()
    inp = proc(images=[im], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        ref = model.generate(**inp, max_new_tokens=12, do_sample=False)[0, inp["input_ids"].shape[1]:]
    assert list(got.outputs[0].token_ids) == ref.tolist()


@pytest.mark.slow
def test_describe_stage_isolates_a_raising_call(llava_describer):
    """DescribeStage on a batch of three whose model call raises because of one image: the batch is retried
    image by image, the two good rows are described by the real engine, the bad one is a model_error row
    saying "MLLM call failed:" and why."""
    from annotators.stages import DescribeStage
    from tests.annotators.stage_faults import FailsOnSize, stage_around, three_rows

    model = FailsOnSize(llava_describer, (67, 41))
    stage = stage_around(DescribeStage, model, describer=model, max_descriptions=10, _engine_watch=None)
    out = stage(three_rows()).to_pylist()
    assert model.calls == [3, 1, 1, 1]  # the whole batch, then each image alone
    assert [r["status"] for r in out] == ["ok", "model_error", "ok"]
    assert out[1]["error"] == "MLLM call failed: RuntimeError: device-side assert triggered (injected)"
    assert all(r["generated_tokens"] > 0 and r["error"] is None for r in (out[0], out[2]))
