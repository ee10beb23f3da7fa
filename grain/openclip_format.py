"""The exported model folder: open_clip's ``local-dir:`` / ``hf-hub:`` layout, plus GRAIN's decoder.

    DIR/open_clip_config.json         {"model_cfg", "preprocess_cfg", "grain": {"format", "kind", "model_config"}}
    DIR/open_clip_model.safetensors   the towers and logit_scale in open_clip's ``CLIP`` state-dict layout
    DIR/grain_decoder.safetensors     GRAIN only: the region decoder, ``decoder.*`` keys

The towers already are open_clip's ``VisionTransformer`` and ``TextTransformer``, so the only renaming is
the text tower: GRAIN nests it under ``text.``, open_clip's ``CLIP`` keeps its parts at the top level.
The CLIP-only arm is then exactly an open_clip ``CLIP`` (``create_model_and_transforms`` loads it with
``strict=True``). GRAIN drops the ViT projection (its image vector is the decoder's image query), so its
tower file lacks ``visual.proj`` and stock open_clip refuses it by name instead of returning image
vectors from an untrained projection; ``grain.hub.load`` reads both arms.

Everything here is pure: config dicts and state dicts in, config dicts and state dicts out.
"""

from __future__ import annotations

import json
import math
import os

import torch

from grain.config import ModelConfig
from grain.data import IMAGENET_MEAN, IMAGENET_STD

FORMAT = "grain-export-v1"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
DECODER_FILE = "grain_decoder.safetensors"
TOKENIZER_VOCAB = 49408  # open_clip's bundled SimpleTokenizer: ids 0 … 49407 (EOT)

# Every ModelConfig field and where it goes. A field missing here is one the export has not been
# taught to express, so ``model_cfg`` refuses it by name rather than writing a folder that loads as a
# different model.
_TOWER_KEYS = {
    "embed_dim", "image_size", "patch_size", "vision_width", "vision_layers", "vision_heads",
    "vision_mlp_ratio", "vision_qk_norm", "vision_pos_embed", "context_length", "vocab_size",
    "text_width", "text_layers", "text_heads", "text_mlp_ratio", "logit_scale_init",
}
# Read only by GRAIN's own code (the decoder, training, description prompts): stored in the "grain" section.
_GRAIN_SIDE_KEYS = {
    "name", "kind", "desc_context_length", "num_region_queries", "decoder_dim", "decoder_layers",
    "decoder_heads", "decoder_ffn_dim", "decoder_dropout", "decoder_memory_pos", "region_queries",
    "proposal_head", "max_target_boxes", "logit_scale_max",
}
_POS_EMBED = {"learned": "learnable", "sincos2d": "sin_cos_2d"}


class ExportError(ValueError):
    """A checkpoint the open_clip layout cannot express; the message names the config key."""


def model_cfg(cfg: ModelConfig) -> dict:
    """``ModelConfig`` → open_clip's ``model_cfg`` (``CLIP(**model_cfg)`` builds the same towers)."""
    d = cfg.to_dict()
    unknown = sorted(set(d) - _TOWER_KEYS - _GRAIN_SIDE_KEYS)
    if unknown:
        raise ExportError(f"model config key {unknown[0]!r} has no place in the open_clip layout (the export does not know it)")
    if cfg.vocab_size != TOKENIZER_VOCAB:
        raise ExportError(f"model config key 'vocab_size' = {cfg.vocab_size}: open_clip's tokenizer for this layout "
                          f"has {TOKENIZER_VOCAB} ids")
    return {
        "embed_dim": cfg.embed_dim,
        "quick_gelu": False,
        "init_logit_scale": cfg.logit_scale_init,
        "vision_cfg": {
            "image_size": cfg.image_size, "patch_size": cfg.patch_size, "width": cfg.vision_width,
            "layers": cfg.vision_layers, "head_width": cfg.vision_width // cfg.vision_heads,
            "mlp_ratio": cfg.vision_mlp_ratio, "qk_norm": cfg.vision_qk_norm,
            "pos_embed_type": _POS_EMBED[cfg.vision_pos_embed],
        },
        "text_cfg": {
            "context_length": cfg.context_length, "vocab_size": cfg.vocab_size, "width": cfg.text_width,
            "heads": cfg.text_heads, "layers": cfg.text_layers, "mlp_ratio": cfg.text_mlp_ratio,
        },
    }


def preprocess_cfg(cfg: ModelConfig) -> dict:
    """open_clip's ``preprocess_cfg`` of GRAIN's input pipeline (grain.data.preprocess_image): squash
    resize, bicubic, ImageNet statistics. Left out, open_clip would use OpenAI's and a centre crop."""
    return {"size": cfg.image_size, "mode": "RGB", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "interpolation": "bicubic", "resize_mode": "squash", "fill_color": 0}


def folder_config(cfg: ModelConfig) -> dict:
    """The whole ``open_clip_config.json``."""
    return {"model_cfg": model_cfg(cfg), "preprocess_cfg": preprocess_cfg(cfg),
            "grain": {"format": FORMAT, "kind": cfg.kind, "model_config": cfg.to_dict()}}


def split_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> tuple[dict, dict]:
    """GrainModel state dict → (open_clip ``CLIP`` tower dict, decoder dict ({} for the CLIP arm)).

    ``logit_scale`` is clamped to ``logit_scale_max``: GRAIN clamps it at every use, open_clip does not."""
    towers, decoder = {}, {}
    for k, v in state.items():
        v = v.detach().cpu().contiguous()
        if k.startswith("decoder."):
            decoder[k] = v
        elif k.startswith("text."):
            towers[k[len("text."):]] = v
        elif k == "logit_scale":
            towers[k] = v.clamp(max=cfg.logit_scale_max)
        else:
            towers[k] = v
    return towers, decoder


def join_state_dict(towers: dict[str, torch.Tensor], decoder: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of ``split_state_dict``: open_clip tower keys (+ decoder keys) → GrainModel keys."""
    out = {}
    for k, v in towers.items():
        top = k.split(".", 1)[0]
        out[k if top in ("visual", "logit_scale") else f"text.{k}"] = v
    out.update(decoder)
    return out


def write_weights(folder: str, state: dict[str, torch.Tensor], cfg: ModelConfig) -> list[str]:
    """Write the config and the safetensors files of ``state`` into ``folder``; return the paths."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    towers, decoder = split_state_dict(state, cfg)
    paths = [os.path.join(folder, CONFIG_FILE), os.path.join(folder, WEIGHTS_FILE)]
    with open(paths[0], "w", encoding="utf-8") as f:
        json.dump(folder_config(cfg), f, indent=1)
    save_file(towers, paths[1], metadata={"format": FORMAT})
    if decoder:
        paths.append(os.path.join(folder, DECODER_FILE))
        save_file(decoder, paths[2], metadata={"format": FORMAT})
    return paths


def is_export_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_FILE))


def read_folder(folder: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """An exported folder → (ModelConfig, GrainModel state dict). ValueError naming the folder when it is
    not one this format wrote (a stock open_clip folder has no ``grain`` section)."""
    from safetensors.torch import load_file

    with open(os.path.join(folder, CONFIG_FILE), encoding="utf-8") as f:
        meta = json.load(f).get("grain")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{folder}: {CONFIG_FILE} has no 'grain' section of format {FORMAT!r}")
    cfg = ModelConfig.from_dict(meta["model_config"])
    towers = load_file(os.path.join(folder, WEIGHTS_FILE))
    dec_path = os.path.join(folder, DECODER_FILE)
    if cfg.kind == "grain" and not os.path.isfile(dec_path):
        raise ValueError(f"{folder}: a GRAIN export needs {DECODER_FILE}")
    decoder = load_file(dec_path) if cfg.kind == "grain" else {}
    if not math.isfinite(float(towers["logit_scale"])):
        raise ValueError(f"{folder}: logit_scale is not finite")
    return cfg, join_state_dict(towers, decoder)
