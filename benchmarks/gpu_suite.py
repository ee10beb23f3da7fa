"""Performance goals 1 and 2 (docs/performance.md) on one GPU, in one run, into one JSON (≤ 8 minutes on one H200).

    PYTHONPATH=. python benchmarks/gpu_suite.py --json gpu_suite.json           # on the GPU machine
    PYTHONPATH=. python benchmarks/gpu_suite.py --tiny --json /tmp/suite.json   # CPU, tiny shapes, same code

No registry or hub access is needed: models are built from configs written here (random weights).

Part 1, the training step (goal 1): ``benchmarks/gpu_train_step.py`` at batch 128, bf16, ViT-B/16, run
in this process once per arm, so every lever is before/after in the same run:
``clip`` (the ceiling: CLIP-only step), ``grain`` (eager), ``grain --compile``, ``grain`` with
descriptions trimmed to 8 tokens instead of 16. Reported: step ms, samples/s, MFU (against the
measured bf16 matmul rate), GRAIN/CLIP step ratio (goal ≤ 1.3) and MFU (goal ≥ 35 %). Levers that
need model code (one text-tower pass for captions and descriptions, CUDA-graph-friendly matching)
are not arms yet; docs/performance.md lists them.

Part 2, the describer (goal 2): the LLaVA-1.5-7B architecture (config written below from the model
card: CLIP ViT-L/14-336 tower, 2-layer GELU projector, Llama-2-7B: 32 layers, 4096 hidden, 11008
MLP, 32 heads, vocab 32064) with random weights (vLLM ``load_format="dummy"``, nothing on disk but the
config, a locally trained tokenizer and the processor), the project's ``paper`` prompt, output length
forced (``min_tokens = max_tokens``, ``ignore_eos``) to 100 and 256 tokens. Reported: images/s, output
tokens/s, mean decode batch, and the fraction of the memory-bandwidth decode ceiling (``ceilings()``).

Part 3, the grounder (goal 2): OWLv2-B/16 at 960 px (config from the model card, random weights),
bf16, batch 32, 10 descriptions per image through ``annotators.grounder.Grounder``'s forward: images/s
and the fraction of the dense bf16 compute ceiling (FLOPs per image counted by FlopCounterMode).

Part 4, the data path (goal 4): the trainer's decode path on this machine's CPUs (1 thread and all
cores), samples/s per core, and the decode cores one GPU needs for 3× its consumption.

``--tiny``: the same four parts with tiny shapes on CPU (tiny preset train step, the tiny LLaVA /
OWLv2 specs of grain.testing.tiny_models, a few images, short outputs) — a check that the script runs end to
end, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ---------------------------------------------------------------------------------------------------
# ceilings (docs/performance.md has the arithmetic in words)
# ---------------------------------------------------------------------------------------------------

H200 = {"name": "H200", "hbm_tb_s": 4.8, "dense_bf16_tflops": 989.0}
LLAVA_7B = {"layers": 32, "hidden": 4096, "heads": 32, "kv_heads": 32, "head_dim": 128, "inter": 11008, "vocab": 32064,
            "params_lm": 6.74e9, "params_vision": 0.304e9, "params_projector": 0.021e9, "image_tokens": 576,
            "vision_layers": 24, "vision_hidden": 1024, "vision_inter": 4096, "vision_image": 336, "vision_patch": 14}
PROMPT_TOKENS_TEXT = 110  # the paper prompt's text tokens around the image (≈; annotators/prompts.py)


def kv_bytes_per_token(m=LLAVA_7B, bytes_per=2) -> int:
    return 2 * m["layers"] * m["kv_heads"] * m["head_dim"] * bytes_per  # K and V, every layer


def decode_ceiling(batch: int, out_tokens: int, hw=H200, m=LLAVA_7B) -> dict:
    """Memory-bandwidth ceiling of decoding: each step reads every LM weight once (bf16) plus the KV cache
    of every sequence in the batch (mean context over the output: prompt + image tokens + out/2)."""
    weights = 2 * (m["params_lm"])
    ctx = m["image_tokens"] + PROMPT_TOKENS_TEXT + out_tokens / 2
    kv = batch * ctx * kv_bytes_per_token(m)
    step_s = (weights + kv) / (hw["hbm_tb_s"] * 1e12)
    tok_s = batch / step_s
    return {"batch": batch, "out_tokens": out_tokens, "weights_gb": weights / 1e9, "kv_gb_per_step": kv / 1e9,
            "step_ms": 1e3 * step_s, "tokens_per_s": tok_s, "images_per_s": tok_s / out_tokens}


def owlv2_flops_per_image(image=960, patch=16, hidden=768, layers=12, inter=3072, queries=10, text_len=16,
                          t_hidden=512, t_layers=12) -> float:
    """Forward FLOPs (2 per MAC) of OWLv2-B/16 at ``image`` px: ViT-B/16 over (image/patch)² tokens (+ CLS),
    the box/class heads on every patch token, and the text tower over ``queries`` descriptions."""
    n = (image // patch) ** 2 + 1
    per_layer = 2 * n * (4 * hidden * hidden + 2 * hidden * inter) + 2 * 2 * n * n * hidden  # proj+MLP, QK^T and AV
    vision = layers * per_layer
    heads = 2 * n * (3 * hidden * hidden + hidden * 512) + 2 * n * queries * 512  # box MLP, class embed, logits
    t_n = queries * text_len
    text = t_layers * (2 * t_n * (4 * t_hidden * t_hidden + 2 * t_hidden * 4 * t_hidden) + 4 * queries * text_len ** 2 * t_hidden)
    return float(vision + heads + text)


def ceilings() -> dict:
    f = owlv2_flops_per_image()
    out = {"hw": H200, "kv_mb_per_token": kv_bytes_per_token() / 1e6,
           "describer": [decode_ceiling(b, t) for t in (100, 256) for b in (1, 64, 256)],
           "grounder": {"gflops_per_image": f / 1e9, "images_per_s": H200["dense_bf16_tflops"] * 1e12 / f}}
    return out


# ---------------------------------------------------------------------------------------------------
# part 1: training step
# ---------------------------------------------------------------------------------------------------


def train_arms(tiny: bool, tmp: str) -> dict:
    from benchmarks import gpu_train_step

    common = ["--preset", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "1", "--batch-size", "4"] if tiny else \
             ["--batch-size", "128", "--steps", "10", "--warmup", "3"]
    arms = {"clip": ["--kind", "clip"], "grain": ["--kind", "grain"],
            "grain+compile": ["--kind", "grain", "--compile"],
            "grain desc_len 8": ["--kind", "grain", "--desc-len", "8"]}
    if tiny:
        arms.pop("grain+compile")  # compile on 2 CPU cores takes minutes; the flag is exercised on the GPU
    out = {}
    for name, extra in arms.items():
        path = os.path.join(tmp, "step.json")
        try:
            gpu_train_step.main([*common, *extra, "--json", path])
            with open(path) as f:
                out[name] = json.load(f)
        except Exception as e:  # noqa: BLE001 - one failing arm must not lose the others
            out[name] = {"error": f"{type(e).__name__}: {e}"}
    clip, grain = out.get("clip", {}), out.get("grain", {})
    if "step_s" in clip and "step_s" in grain:
        out["summary"] = {"grain_over_clip": grain["step_s"] / clip["step_s"], "grain_mfu": grain["mfu"],  # vs the chip's peak
                          "grain_mfu_vs_matmul": grain["mfu_vs_matmul"],
                          "goal": "grain/clip <= 1.3 and MFU >= 0.35"}
    return out


# ---------------------------------------------------------------------------------------------------
# part 2: describer (LLaVA-1.5-7B architecture, random weights)
# ---------------------------------------------------------------------------------------------------


def write_llava_dir(out: str, tiny: bool) -> str:
    """Config + tokenizer + processor of the LLaVA-1.5-7B architecture (or the tiny spec): no weights."""
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaProcessor

    from grain.testing.tiny_models import LLAVA_CHAT_TEMPLATE, SPECS, _fast_tokenizer

    s = SPECS["llava"] if tiny else dict(vocab=1024, image=336, patch=14, v_hidden=1024, v_layers=24, v_heads=16,
                                         v_inter=4096, t_hidden=4096, t_layers=32, t_heads=32, t_inter=11008,
                                         max_pos=4096, t_vocab=32064)
    tok = _fast_tokenizer(s["vocab"], {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"},
                          ["<image>"])
    vision = CLIPVisionConfig(hidden_size=s["v_hidden"], intermediate_size=s.get("v_inter", 4 * s["v_hidden"]),
                              num_hidden_layers=s["v_layers"], num_attention_heads=s["v_heads"], image_size=s["image"],
                              patch_size=s["patch"], projection_dim=768 if not tiny else s["v_hidden"])
    text = LlamaConfig(vocab_size=s.get("t_vocab", len(tok)), hidden_size=s["t_hidden"], intermediate_size=s["t_inter"],
                       num_hidden_layers=s["t_layers"], num_attention_heads=s["t_heads"], num_key_value_heads=s["t_heads"],
                       head_dim=s["t_hidden"] // s["t_heads"], max_position_embeddings=s["max_pos"],
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       tie_word_embeddings=False, torch_dtype="bfloat16")
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_select_strategy="default", vision_feature_layer=-2, projector_hidden_act="gelu")
    cfg.architectures = ["LlavaForConditionalGeneration"]  # what the hub config says; vLLM picks its model class by it
    os.makedirs(out, exist_ok=True)
    cfg.save_pretrained(out)
    image_proc = CLIPImageProcessorPil(size={"shortest_edge": s["image"]}, crop_size={"height": s["image"], "width": s["image"]})
    LlavaProcessor(image_processor=image_proc, tokenizer=tok, patch_size=s["patch"], vision_feature_select_strategy="default",
                   num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def describer_run(tiny: bool, tmp: str) -> dict:
    from PIL import Image
    from vllm import LLM

    from annotators.prompts import DESCRIBE_QUESTION, REQUEST_BUILDERS

    model_dir = write_llava_dir(os.path.join(tmp, "llava-1.5-7b-shape"), tiny)
    request = REQUEST_BUILDERS["llava"](DESCRIBE_QUESTION)  # the paper prompt, as the describer sends it
    n_images = 8 if tiny else 512  # two waves of ~256 concurrent sequences: steady decode within the 8-minute budget
    lengths = (8,) if tiny else (100, 256)
    llm = LLM(model=model_dir, load_format="dummy", runner="generate", dtype="bfloat16", max_model_len=2048 if tiny else 4096,
              enforce_eager=tiny, seed=0, **({"gpu_memory_utilization": 0.9} if not tiny else {}),
              **request.engine_kwargs)
    side = 64 if tiny else 336
    images = [Image.new("RGB", (side, side), ((37 * i) % 256, (91 * i) % 256, 128)) for i in range(n_images)]
    prompts = [{"prompt": request.prompt, "multi_modal_data": {"image": im}} for im in images]
    out = {"model_dir_files": sorted(os.listdir(model_dir)), "images": n_images, "runs": []}
    try:
        _describe_runs(llm, prompts, lengths, n_images, out)
    finally:  # shut the engine down here: a leftover engine process holds the interpreter's exit for minutes
        import gc

        del llm
        gc.collect()
    return out


def _describe_runs(llm, prompts, lengths, n_images, out) -> None:
    from vllm import SamplingParams

    llm.generate(prompts[: min(8, n_images)], SamplingParams(max_tokens=4, min_tokens=4, ignore_eos=True), use_tqdm=False)
    for n_out in lengths:
        sp = SamplingParams(max_tokens=n_out, min_tokens=n_out, ignore_eos=True, temperature=0.0)
        t0 = time.perf_counter()
        res = llm.generate(prompts, sp, use_tqdm=False)
        wall = time.perf_counter() - t0
        toks = sum(len(r.outputs[0].token_ids) for r in res)
        ceil = decode_ceiling(batch=min(n_images, 256), out_tokens=n_out)
        out["runs"].append({"out_tokens": n_out, "seconds": wall, "images_per_s": n_images / wall,
                            "output_tokens_per_s": toks / wall, "all_forced_length": toks == n_images * n_out,
                            "ceiling_tokens_per_s_at_batch_256": ceil["tokens_per_s"],
                            "fraction_of_ceiling": (toks / wall) / ceil["tokens_per_s"]})


def describer_hf_run(tiny: bool, tmp: str) -> dict:
    """Part ``describer_hf``: transformers' ``generate`` on the same random-weight LLaVA-1.5-7B architecture,
    bf16, one batch, output length forced. A LOWER BOUND, not the production engine (vLLM: continuous
    batching, paged KV cache); it exists for machines without vLLM."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, LlavaConfig, LlavaForConditionalGeneration

    from annotators.prompts import DESCRIBE_QUESTION, REQUEST_BUILDERS

    model_dir = write_llava_dir(os.path.join(tmp, "llava-1.5-7b-shape-hf"), tiny)
    device = "cpu" if tiny or not torch.cuda.is_available() else "cuda"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(LlavaConfig.from_pretrained(model_dir), dtype=torch.bfloat16)
    model.eval()
    proc = AutoProcessor.from_pretrained(model_dir)
    proc.tokenizer.padding_side = "left"
    prompt = REQUEST_BUILDERS["llava"](DESCRIBE_QUESTION).prompt
    batch, lengths, side = (2, (8,), 64) if tiny else (64, (100, 256), 336)
    images = [Image.new("RGB", (side, side), ((37 * i) % 256, (91 * i) % 256, 128)) for i in range(batch)]
    inputs = proc(text=[prompt] * batch, images=images, return_tensors="pt", padding=True).to(device)
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    out = {"engine": "transformers generate (lower bound, not vLLM)", "device": device, "batch": batch, "runs": []}
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)  # warm-up
        for n_out in lengths:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            gen = model.generate(**inputs, max_new_tokens=n_out, min_new_tokens=n_out, do_sample=False)
            if device == "cuda":
                torch.cuda.synchronize()
            wall = time.perf_counter() - t0
            toks = batch * (gen.shape[1] - inputs["input_ids"].shape[1])
            ceil = decode_ceiling(batch=batch, out_tokens=n_out)
            out["runs"].append({"out_tokens": n_out, "seconds": wall, "images_per_s": batch / wall,
                                "output_tokens_per_s": toks / wall, "ceiling_tokens_per_s_at_this_batch": ceil["tokens_per_s"],
                                "fraction_of_ceiling": (toks / wall) / ceil["tokens_per_s"]})
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------------------------------------------
# part 3: grounder (OWLv2-B/16 at 960 px, random weights, bf16)
# ---------------------------------------------------------------------------------------------------


def write_owlv2_dir(out: str, tiny: bool) -> str:
    """OWLv2 with random weights: the tiny spec, or OWLv2-B/16 at 960 px (ViT-B/16 vision tower, 12-layer
    512-wide text tower, projection 512; the text vocabulary is a locally trained BPE, smaller than CLIP's
    49408, which changes an embedding lookup only)."""
    from pathlib import Path

    from grain.testing.tiny_models import SPECS, build_owlv2

    spec = SPECS["owlv2"] if tiny else dict(seed=0, vocab=4096, image=960, patch=16, v_hidden=768, v_layers=12,
                                            v_heads=12, t_hidden=512, t_layers=12, t_heads=8, proj=512)
    build_owlv2(Path(out), spec)
    return out


def grounder_run(tiny: bool, tmp: str) -> dict:
    import torch
    from PIL import Image
    from torch.utils.flop_counter import FlopCounterMode

    from annotators.grounder import Grounder

    model_dir = write_owlv2_dir(os.path.join(tmp, "owlv2-b16-960"), tiny)
    bs = 4 if tiny else 32
    g = Grounder(model_dir, threshold=0.3, batch_size=bs, device="cpu" if tiny else "cuda",
                 dtype=None if tiny else "bfloat16")
    side = 64 if tiny else 960
    images = [Image.new("RGB", (side, side), ((53 * i) % 256, 90, 200)) for i in range(bs)]
    descs = [[f"thing number {k}" for k in range(10)] for _ in range(bs)]
    g.ground(images, descs)  # warm-up
    with FlopCounterMode(display=False) as fc:
        g.ground(images[:1], descs[:1])
    flops = fc.get_total_flops()
    reps = 1 if tiny else 5
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        g.ground(images, descs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    ips = reps * bs / wall
    ceiling = H200["dense_bf16_tflops"] * 1e12 / max(flops, 1)
    return {"batch": bs, "images_per_s": ips, "flops_per_image_counted": flops,
            "flops_per_image_formula": owlv2_flops_per_image() if not tiny else None,
            "ceiling_images_per_s": ceiling, "fraction_of_ceiling": ips / ceiling,
            "note": "includes preprocessing and box post-processing (the Grounder's whole call)"}


# ---------------------------------------------------------------------------------------------------
# part 4: the data path on the GPU machine's CPUs (goal 4)
# ---------------------------------------------------------------------------------------------------


def data_path_run(tiny: bool, tmp: str) -> dict:
    """The trainer's data path (``benchmarks/train_step.make_data``: Parquet row → decode → resize → tokenise →
    collate) at 1 thread and at the machine's cores: samples/s per decode core, and the cores one GPU needs
    for 3× its consumption at the goal-1 step rate (GRAIN at CLIP-only / 1.3, CLIP-only measured in part 1
    when it ran, else infra/README's 1216–1424 samples/s)."""
    from benchmarks.train_step import make_data
    from grain.config import ModelConfig

    cfg = ModelConfig.preset("tiny" if tiny else "vit-b-16", kind="grain")
    bs, n, (w, h) = (4, 2, (64, 48)) if tiny else (128, 4, (500, 375))  # CC12M-like photos on the GPU machine
    cores = os.cpu_count() or 1
    out = {"image_wh": [w, h], "batch": bs, "cores": cores, "runs": []}
    for threads in sorted({1, max(1, cores - 1)}):
        d = os.path.join(tmp, f"data-{threads}")
        os.makedirs(d, exist_ok=True)
        _, sps = make_data(d, cfg, bs, w, h, threads, n_batches=n)
        out["runs"].append({"decode_threads": threads, "samples_per_s": sps})
    per_core = out["runs"][0]["samples_per_s"]
    out["samples_per_s_per_core"] = per_core
    for rate in (1216 / 1.3, 1424 / 1.3):
        out.setdefault("cores_for_3x", {})[f"{rate:.0f} samples/s"] = 3 * rate / per_core
    return out


def _hardware() -> str:
    import torch

    gpu = f"{torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    return f"{gpu}, {os.cpu_count()} CPU cores, torch {torch.__version__}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes on CPU: check the script, measure nothing")
    p.add_argument("--parts", nargs="+", default=["train", "describer", "grounder", "data"],
                   choices=["train", "describer", "describer_hf", "grounder", "data"],
                   help="describer_hf: transformers generate, a lower bound for machines without vLLM")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    import tempfile

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    res = {"tiny": args.tiny, "ceilings": ceilings(), "started": time.time(), "hardware": _hardware(),
           "command": " ".join(["python", "benchmarks/gpu_suite.py", *(argv if argv is not None else sys.argv[1:])]),
           "commit": os.environ.get("GRAIN_COMMIT"), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    parts = {"train": train_arms, "describer": describer_run, "describer_hf": describer_hf_run,
             "grounder": grounder_run, "data": data_path_run}
    with tempfile.TemporaryDirectory(prefix="grain-gpu-suite-") as tmp:
        for name in args.parts:
            t0 = time.perf_counter()
            try:
                res[name] = parts[name](args.tiny, tmp)
            except Exception as e:  # noqa: BLE001 - record and go on: one JSON with whatever ran
                res[name] = {"error": f"{type(e).__name__}: {e}"}
            res[name + "_seconds"] = round(time.perf_counter() - t0, 1)
            with open(args.json, "w") as f:  # written after every part: a timeout keeps what finished
                json.dump(res, f, indent=1, default=str)
            print(f"gpu_suite: {name} done in {res[name + '_seconds']} s: "
                  f"{'ERROR ' + res[name]['error'] if isinstance(res[name], dict) and 'error' in res[name] else 'ok'}",
                  flush=True)
    return 1 if any(isinstance(res.get(n), dict) and "error" in res[n] for n in args.parts) else 0


if __name__ == "__main__":
    raise SystemExit(main())
