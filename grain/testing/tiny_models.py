"""Random-weight tiny checkpoints of the real architectures, built offline (`grain models build-tiny`).

    grain models build-tiny                       # llava, qwen2-vl, text-llm, owlv2 (cached)
    grain models build-tiny --only owlv2 --force  # rebuild one
    grain models build-tiny --size bench          # llava-bench, owlv2-bench (≥ 50 ms per image)

Nothing is downloaded: tokenizers are byte-level BPEs trained with `tokenizers` on an in-memory
corpus, weights are random with fixed seeds, configs keep what the engines need offline
(head_dim ≥ 32 because vLLM's CPU attention rejects 16; LLaVA's vision keys renamed to the hub
layout `vision_tower.vision_model.*` that vLLM 0.32 expects).

Cache: ``$GRAIN_CACHE/tiny-models/<name>`` (default ``~/.cache/grain``). Each directory is built in a
temp dir and renamed into place; a marker file holds a hash of the build spec, so a changed spec
rebuilds and a complete, current checkpoint is skipped. A file lock serialises concurrent builders
(several pytest sessions may ask at once).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from grain.common.cache import grain_cache

# Bump when the builder code changes in a way the spec dicts below do not capture.
BUILDER_VERSION = 4
MARKER = ".grain-tiny.json"

# Every number that shapes a checkpoint. The marker stores a hash of (BUILDER_VERSION, spec).
SPECS: dict[str, dict] = {
    "llava": dict(family="llava", seed=0, vocab=1024, image=64, patch=16, v_hidden=64, v_layers=2, v_heads=2,
                  t_hidden=128, t_layers=2, t_heads=4, t_inter=256, max_pos=2048),
    "qwen2-vl": dict(family="qwen2_vl", seed=1, vocab=1024, patch=14, v_embed=64, v_layers=2, v_heads=2,
                     t_hidden=128, t_layers=2, t_heads=4, t_kv_heads=2, t_inter=256, max_pos=4096,
                     min_pixels=56 * 56, max_pixels=112 * 112, mrope_section=[4, 6, 6]),
    "text-llm": dict(family="llama", seed=2, vocab=1024, t_hidden=128, t_layers=2, t_heads=4, t_inter=256,
                     max_pos=2048),
    "owlv2": dict(family="owlv2", seed=3, vocab=1024, image=128, patch=16, v_hidden=32, v_layers=2, v_heads=2,
                  t_hidden=32, t_layers=2, t_heads=2, proj=32),
    # "bench" sizes: a bare call costs ≥ 50 ms per image on 2 CPU cores (annotation benchmark).
    "llava-bench": dict(family="llava", seed=10, vocab=2048, image=224, patch=16, v_hidden=256, v_layers=4,
                        v_heads=4, t_hidden=256, t_layers=4, t_heads=8, t_inter=1024, max_pos=2048),
    "owlv2-bench": dict(family="owlv2", seed=11, vocab=2048, image=480, patch=16, v_hidden=128, v_layers=4,
                        v_heads=4, t_hidden=64, t_layers=2, t_heads=2, proj=64),
}
SIZES = {"tiny": ["llava", "qwen2-vl", "text-llm", "owlv2"], "bench": ["llava-bench", "owlv2-bench"]}

LLAVA_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %} "
    "{% else %}ASSISTANT: {% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{{ c['text'] }}{% endfor %}{% endif %}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

_WORDS = (
    "a an the of with and on in near its is has which dog cat bird person man woman child car bus tree "
    "flower house window door wheel leg tail ear eye nose mouth hand head hat shirt red green blue yellow "
    "black white brown small large striped wooden metal glass round square sky grass water road table "
    "chair cup plate food fruit apple banana sign text logo building mountain cloud light shadow fur "
    "feathers wing beak rocket coffee astronaut suit helmet flag image photo shows caption descriptions"
).split()


def cache_root() -> Path:
    """``$GRAIN_CACHE/tiny-models`` (default ``~/.cache/grain/tiny-models``)."""
    return Path(grain_cache()) / "tiny-models"


def spec_hash(name: str) -> str:
    blob = json.dumps({"builder": BUILDER_VERSION, "name": name, "spec": SPECS[name]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _corpus(seed: int = 0, n: int = 3000) -> list[str]:
    """Deterministic pseudo-English lines in the shapes the describer prompts and parses."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
        prefix = rng.choice(["", "- ", "* ", "• ", f"{i % 10}. ", f"{i % 10}) ", "Caption: ", "Descriptions:\n"])
        lines.append(prefix + words.capitalize() + rng.choice([".", ",", "!", "?", ":", ""]))
    return lines


def _bpe(vocab_size: int, special_tokens: list[str], clip_style: bool = False):
    """A byte-level BPE trained on the in-memory corpus. ``clip_style``: lower-case, ``</w>`` suffix (CLIP's BPE)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if clip_style:
        tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
        tok.normalizer = normalizers.Lowercase()
    else:
        tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    kwargs = {"end_of_word_suffix": "</w>"} if clip_style else {}
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False, **kwargs)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok


def _fast_tokenizer(vocab_size: int, specials: dict, extra: list[str]):
    """PreTrainedTokenizerFast around a trained BPE; ``specials`` maps role (bos_token, …) → token text."""
    from transformers import PreTrainedTokenizerFast

    all_special = list(dict.fromkeys([*specials.values(), *extra]))
    tok = PreTrainedTokenizerFast(tokenizer_object=_bpe(vocab_size, all_special), **specials)
    tok.add_special_tokens({"additional_special_tokens": [t for t in extra if t not in specials.values()]})
    return tok


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    random.seed(seed)


def _save_safetensors_renamed(out: Path, rename: dict[str, str]) -> None:
    """Rewrite ``model.safetensors`` with key prefixes renamed (transformers still reloads the result)."""
    from safetensors.torch import load_file, save_file

    path = out / "model.safetensors"
    tensors = load_file(str(path))
    renamed = {}
    for k, v in tensors.items():
        for old, new in rename.items():
            if k.startswith(old) and not k.startswith(new):
                k = new + k[len(old):]
                break
        renamed[k] = v.contiguous()
    save_file(renamed, str(path), metadata={"format": "pt"})


def build_llava(out: Path, s: dict) -> None:
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = _fast_tokenizer(s["vocab"], {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"},
                          ["<image>"])
    vision = CLIPVisionConfig(hidden_size=s["v_hidden"], intermediate_size=4 * s["v_hidden"], num_hidden_layers=s["v_layers"],
                              num_attention_heads=s["v_heads"], image_size=s["image"], patch_size=s["patch"], projection_dim=s["v_hidden"])
    text = LlamaConfig(vocab_size=len(tok), hidden_size=s["t_hidden"], intermediate_size=s["t_inter"], num_hidden_layers=s["t_layers"],
                       num_attention_heads=s["t_heads"], num_key_value_heads=s["t_heads"], head_dim=s["t_hidden"] // s["t_heads"],
                       max_position_embeddings=s["max_pos"], bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_select_strategy="default", vision_feature_layer=-2, projector_hidden_act="gelu")
    _seed(s["seed"])
    model = LlavaForConditionalGeneration(cfg).eval()
    model.save_pretrained(out)
    # transformers 5 writes the legacy layout `vision_tower.embeddings.*`; vLLM 0.32 wants the hub's
    # `vision_tower.vision_model.*`. transformers reloads either.
    _save_safetensors_renamed(out, {"vision_tower.": "vision_tower.vision_model."})
    image_proc = CLIPImageProcessorPil(size={"shortest_edge": s["image"]}, crop_size={"height": s["image"], "width": s["image"]})
    LlavaProcessor(image_processor=image_proc, tokenizer=tok, patch_size=s["patch"], vision_feature_select_strategy="default",
                   num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE).save_pretrained(out)
    tok.save_pretrained(out)


def build_qwen2_vl(out: Path, s: dict) -> None:
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil, Qwen2VLProcessor,
                              Qwen2VLVideoProcessor)

    extra = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = _fast_tokenizer(s["vocab"], {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}, extra)
    ids = {t: tok.convert_tokens_to_ids(t) for t in extra}
    head_dim = s["t_hidden"] // s["t_heads"]
    assert sum(s["mrope_section"]) * 2 == head_dim, "mrope_section must cover head_dim / 2"
    cfg = Qwen2VLConfig(
        vision_config=dict(depth=s["v_layers"], embed_dim=s["v_embed"], hidden_size=s["t_hidden"], num_heads=s["v_heads"],
                           patch_size=s["patch"], spatial_merge_size=2, temporal_patch_size=2),
        text_config=dict(vocab_size=len(tok), hidden_size=s["t_hidden"], intermediate_size=s["t_inter"],
                         num_hidden_layers=s["t_layers"], num_attention_heads=s["t_heads"], num_key_value_heads=s["t_kv_heads"],
                         max_position_embeddings=s["max_pos"], bos_token_id=None, eos_token_id=ids["<|im_end|>"],
                         pad_token_id=tok.pad_token_id, max_window_layers=s["t_layers"],
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": s["mrope_section"]}),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    _seed(s["seed"])
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    model.save_pretrained(out)
    image_proc = Qwen2VLImageProcessorPil(min_pixels=s["min_pixels"], max_pixels=s["max_pixels"], patch_size=s["patch"],
                                          merge_size=2, temporal_patch_size=2)
    video_proc = Qwen2VLVideoProcessor(min_pixels=s["min_pixels"], max_pixels=s["max_pixels"], patch_size=s["patch"],
                                       merge_size=2, temporal_patch_size=2)  # the processor class requires one
    Qwen2VLProcessor(image_processor=image_proc, tokenizer=tok, video_processor=video_proc,
                     chat_template=QWEN_CHAT_TEMPLATE).save_pretrained(out)
    tok.save_pretrained(out)


def build_text_llm(out: Path, s: dict) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _fast_tokenizer(s["vocab"], {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": "<|finetune_pad|>"},
                          ["<|start_header_id|>", "<|end_header_id|>"])
    tok.chat_template = LLAMA_CHAT_TEMPLATE
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=s["t_hidden"], intermediate_size=s["t_inter"], num_hidden_layers=s["t_layers"],
                      num_attention_heads=s["t_heads"], num_key_value_heads=s["t_heads"], head_dim=s["t_hidden"] // s["t_heads"],
                      max_position_embeddings=s["max_pos"], bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    _seed(s["seed"])
    LlamaForCausalLM(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)


def build_owlv2(out: Path, s: dict) -> None:
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessorPil, Owlv2Processor

    specials = ["<|startoftext|>", "<|endoftext|>"]
    bpe = json.loads(_bpe(s["vocab"], specials, clip_style=True).to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]]
    # Id layout as in CLIP's real vocab: "!" (the pad token) is id 0 and the specials come last. OWLv2 treats a
    # query whose first token is 0 as padding (modeling_owlv2: query_mask = input_ids[..., 0] > 0), so the
    # start token must not be 0.
    order = sorted((t for t in bpe["vocab"] if t not in specials), key=lambda t: (t != "!", bpe["vocab"][t]))
    vocab = {t: i for i, t in enumerate(order + specials)}
    # In memory: CLIPTokenizer(vocab_file=..., merges_file=...) yields a useless 2-token tokenizer.
    tok = CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!")
    tok.model_max_length = 16
    cfg = Owlv2Config(
        text_config=dict(vocab_size=len(tok), hidden_size=s["t_hidden"], intermediate_size=4 * s["t_hidden"],
                         num_hidden_layers=s["t_layers"], num_attention_heads=s["t_heads"], max_position_embeddings=16,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=s["v_hidden"], intermediate_size=4 * s["v_hidden"], num_hidden_layers=s["v_layers"],
                           num_attention_heads=s["v_heads"], image_size=s["image"], patch_size=s["patch"]),
        projection_dim=s["proj"],
    )
    _seed(s["seed"])
    Owlv2ForObjectDetection(cfg).eval().save_pretrained(out)
    image_proc = Owlv2ImageProcessorPil(size={"height": s["image"], "width": s["image"]})
    Owlv2Processor(image_processor=image_proc, tokenizer=tok).save_pretrained(out)


BUILDERS = {"llava": build_llava, "qwen2_vl": build_qwen2_vl, "llama": build_text_llm, "owlv2": build_owlv2}


def is_complete(path: Path, name: str) -> bool:
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("spec_hash") == spec_hash(name) and (path / "config.json").is_file()


@contextlib.contextmanager
def _lock(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_one(name: str, root: Path, force: bool = False) -> Path:
    """Build ``name`` into ``root/name`` unless a complete, current copy is there. Returns the directory."""
    if name not in SPECS:
        raise ValueError(f"unknown tiny model {name!r}; known: {sorted(SPECS)}")
    dest = root / name
    if not force and is_complete(dest, name):
        return dest
    with _lock(root):
        if not force and is_complete(dest, name):  # another process built it while we waited
            return dest
        spec = SPECS[name]
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=root))
        try:
            t0 = time.perf_counter()
            BUILDERS[spec["family"]](tmp, spec)
            (tmp / MARKER).write_text(json.dumps({"name": name, "spec_hash": spec_hash(name), "spec": spec,
                                                  "builder": BUILDER_VERSION, "seconds": round(time.perf_counter() - t0, 2)}))
            if dest.exists():  # stale or forced: move aside, then swap in the new one
                trash = Path(tempfile.mkdtemp(prefix=f".old-{name}-", dir=root))
                os.replace(dest, trash / name)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def ensure_tiny_models(names: list[str] | None = None, root: str | os.PathLike | None = None, force: bool = False,
                       size: str = "tiny") -> dict[str, str]:
    """Build (if missing/stale) and return ``{name: local directory}``; default: the four ``tiny`` models."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(root) if root is not None else cache_root()
    names = list(names) if names else SIZES[size]
    return {n: str(build_one(n, root, force=force)) for n in names}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="grain models", description="Build random-weight tiny model checkpoints offline.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build-tiny", help="build (or reuse) the tiny checkpoints",
                       description=f"Build tiny checkpoints into $GRAIN_CACHE/tiny-models (now: {cache_root()}). "
                                   f"Names: {', '.join(SPECS)}.")
    b.add_argument("--size", choices=sorted(SIZES), default="tiny", help="tiny: tests/demo; bench: ≥ 50 ms per image")
    b.add_argument("--only", action="append", choices=sorted(SPECS), metavar="NAME", help="build only NAME (repeatable)")
    b.add_argument("--force", action="store_true", help="rebuild even when a current copy exists")
    b.add_argument("--output", metavar="DIR", help="root directory instead of the cache")
    args = p.parse_args(argv)
    names = args.only or SIZES[args.size]
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency; stay usable without it
        tqdm = None
    root = Path(args.output) if args.output else cache_root()
    it = tqdm(names, desc="tiny models", unit="model") if tqdm else names
    for name in it:
        path = build_one(name, root, force=args.force)
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
