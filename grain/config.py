"""Typed configs of the GRAIN model and its losses (docs/method.md §2–§3).

Config flows one way: a run file (YAML) → ``ModelConfig.preset(name, **overrides)`` /
``LossConfig(**d)`` → ``build_model(cfg)`` / ``GrainLoss(cfg)``. Both are plain dataclasses whose
``to_dict()`` holds only str/int/float/bool, so a checkpoint can store them and still load with
``torch.load(weights_only=True)``.

Presets
-------
``vit-b-16``  the paper's model: ViT-B/16 at 224 px with QK-LayerNorm, CLIP text transformer
              (width 512, 12 layers), DETR-style region decoder (6 layers, dim 512), embeddings 512.
``tiny``      the same architecture shrunk for CPU tests and the demo (64 px, patch 8, width 128,
              2–3 layers per tower, decoder 2 layers): trains in seconds on 2 cores.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from grain.experimental import OPTIONS

# Run files are validated into these classes by the stages' config engine (pydantic, outside the model
# library): it reads this plain-dict setting, so the library itself imports no config engine.
STRICT_KEYS = {"extra": "forbid", "coerce_numbers_to_str": True}

KINDS = ("grain", "clip")
# The options that are not the paper's model, default first (grain/experimental/__init__.py lists them).
MEMORY_POS = OPTIONS["decoder_memory_pos"]  # decoder memory positional encodings
VISION_POS = OPTIONS["vision_pos_embed"]  # the ViT's positional embedding
REGION_QUERIES = OPTIONS["region_queries"]  # where region queries come from
PROPOSAL_HEADS = OPTIONS["proposal_head"]  # the two-stage proposal heads


@dataclass
class ModelConfig:
    """Every number of the GRAIN / CLIP-baseline architecture. Defaults are the ``vit-b-16`` preset."""

    __pydantic_config__ = STRICT_KEYS

    name: str = "vit-b-16"  # preset this config started from (informational)
    kind: str = "grain"  # "grain": towers + region decoder; "clip": the baseline, CLS → projection, L_ic only
    embed_dim: int = 512  # D: shared image/text/region embedding width

    # Image tower (open_clip VisionTransformer): tokens = (image_size / patch_size)^2 + 1 (CLS).
    image_size: int = 224  # squash-resize target in pixels (docs/method.md §4.1)
    patch_size: int = 16  # ViT patch side in pixels
    vision_width: int = 768  # ViT width
    vision_layers: int = 12  # ViT blocks
    vision_heads: int = 12  # ViT attention heads
    vision_mlp_ratio: float = 4.0  # ViT MLP width / model width
    vision_qk_norm: bool = True  # QK-LayerNorm (docs/method.md §2.1)
    # The ViT's positional embedding: "learned" (the paper's) or an option (grain.experimental); a tower
    # option, so it applies to kind="clip" as well and a comparison sets it for both arms.
    vision_pos_embed: str = "learned"  # "learned" | "sincos2d"

    # Text tower (open_clip TextTransformer, causal mask, EOT pooling → LayerNorm → projection).
    context_length: int = 77  # captions; also the positional-embedding table size
    desc_context_length: int = 32  # descriptions are short: tokenised at this length (≤ context_length)
    vocab_size: int = 49408  # open_clip's bundled BPE
    text_width: int = 512  # text transformer width
    text_layers: int = 12  # text transformer blocks
    text_heads: int = 8  # text attention heads
    text_mlp_ratio: float = 4.0  # text MLP width / model width

    # Region decoder (DETR-style, decoder only; kind="grain" only).
    num_region_queries: int = 5  # Q region queries; one image query is appended last
    decoder_dim: int = 512  # region decoder width
    decoder_layers: int = 6  # region decoder layers
    decoder_heads: int = 8  # region decoder attention heads
    decoder_ffn_dim: int = 2048  # region decoder feed-forward width
    decoder_dropout: float = 0.1  # region decoder dropout
    # Options that are not the paper's decoder, defaults = the paper (grain.experimental lists them):
    # the memory's positional encoding, where the region queries come from, the two-stage proposal heads.
    decoder_memory_pos: str = "none"  # "none" | "sine" | "sine_kv" (experimental.memory_pos)
    region_queries: str = "learned"  # "learned" | "two_stage" (experimental.two_stage)
    proposal_head: str = "mlp"  # two-stage proposal heads: "mlp" | "conv"
    max_target_boxes: int = 5  # top-k boxes by detector score kept per image for L_box / L_rd

    # Contrastive temperature: logit_scale = exp(p), p initialised at ln(1/0.07), clamped ≤ ln(100).
    logit_scale_init: float = math.log(1 / 0.07)  # initial p of logit_scale = exp(p)
    logit_scale_max: float = math.log(100.0)  # p is clamped to at most this

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"ModelConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.decoder_memory_pos not in MEMORY_POS:
            raise ValueError(f"ModelConfig.decoder_memory_pos must be one of {MEMORY_POS}, got {self.decoder_memory_pos!r}")
        if self.region_queries not in REGION_QUERIES:
            raise ValueError(f"ModelConfig.region_queries must be one of {REGION_QUERIES}, got {self.region_queries!r}")
        if self.region_queries == "two_stage" and self.num_region_queries > (self.image_size // self.patch_size) ** 2:
            raise ValueError(f"ModelConfig: region_queries='two_stage' selects num_region_queries={self.num_region_queries} "
                             f"patches, more than the {(self.image_size // self.patch_size) ** 2} the image has")
        if self.proposal_head not in PROPOSAL_HEADS:
            raise ValueError(f"ModelConfig.proposal_head must be one of {PROPOSAL_HEADS}, got {self.proposal_head!r}")
        if self.vision_pos_embed not in VISION_POS:
            raise ValueError(f"ModelConfig.vision_pos_embed must be one of {VISION_POS}, got {self.vision_pos_embed!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"ModelConfig.image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for w, h, what in (
            (self.vision_width, self.vision_heads, "vision"),
            (self.text_width, self.text_heads, "text"),
            (self.decoder_dim, self.decoder_heads, "decoder"),
        ):
            if w % h:
                raise ValueError(f"ModelConfig: {what} width {w} is not divisible by its {h} heads")
        if not 2 <= self.desc_context_length <= self.context_length:
            raise ValueError(
                f"ModelConfig.desc_context_length {self.desc_context_length} must be in [2, context_length={self.context_length}]"
            )
        if self.num_region_queries < 1 or self.max_target_boxes < 0:
            raise ValueError("ModelConfig: num_region_queries must be ≥ 1 and max_target_boxes ≥ 0")

    @property
    def num_image_tokens(self) -> int:
        """Decoder memory length: patches + CLS (197 for vit-b-16)."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def preset(cls, name: str, **overrides) -> "ModelConfig":
        """A named preset (``PRESETS``) with keyword overrides, e.g. ``preset("tiny", kind="clip")``."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], "name": name, **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Inverse of ``to_dict``; unknown keys are an error naming them (typos in run files)."""
        return _from_dict(cls, d)


@dataclass
class LossConfig:
    """Loss weights and options: L = L_ic + λ_box·(L1 + L_GIoU) + λ_rd·L_rd (release defaults)."""

    __pydantic_config__ = STRICT_KEYS

    lambda_box: float = 1.5  # weight of L1 and of (1 − GIoU) over matched boxes
    lambda_rd: float = 1.0  # weight of the region → description cross-entropy
    cost_l1: float = 5.0  # Hungarian matching cost weights (boxes only)
    cost_giou: float = 2.0  # Hungarian matching cost weight of (1 − GIoU)
    # The release counts a candidate whose text equals the positive's as a negative; masking fixes it.
    mask_identical_descriptions: bool = True
    # Auxiliary L_box + L_rd on every earlier decoder layer (DETR-style; off in the release). Needs
    # the model's forward(batch, return_intermediate=True).
    aux_loss: bool = False
    # Weight of the two-stage proposal losses (grain.experimental.two_stage; ModelConfig.region_queries="two_stage").
    lambda_proposal: float = 1.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LossConfig":
        return _from_dict(cls, d)


def _from_dict(cls, d: dict):
    """A config dataclass from a plain dict (a checkpoint's, a preset plus overrides, a benchmark's YAML).
    Unknown keys and wrong types are ValueErrors naming the key; ``__post_init__``'s checks still apply.
    Values are coerced as the stages' config engine (pydantic, lax mode) coerces run files: numpy and
    other numbers, numeric strings ("1e-1"), integral floats for ints, 0/1 and "true"/"false" for bools."""
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in d.items():
        if key not in fields:
            raise ValueError(f"{key}: unknown key {key!r} (from {cls.__name__})")
        kwargs[key] = _typed(cls.__name__, key, fields[key], value)
    return cls(**kwargs)


_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False, "1": True, "0": False}


def _number(value) -> float | None:
    """``value`` as a float if it is a number (not a bool) or a numeric string, else None."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _typed(owner: str, key: str, kind: str, value):
    """``value`` as the field type named ``kind`` ("bool" | "int" | "float" | "str"), or a ValueError."""
    ok = None
    if kind == "bool":
        if isinstance(value, bool):
            ok = value
        elif isinstance(value, numbers.Integral) and int(value) in (0, 1):
            ok = bool(value)
        elif isinstance(value, str):
            ok = _BOOL_WORDS.get(value.strip().lower())
    elif kind == "int":
        x = _number(value)
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            ok = int(value)
        elif x is not None and math.isfinite(x) and x.is_integer():
            ok = int(x)
    elif kind == "float":
        ok = _number(value)
    elif kind == "str" and not isinstance(value, bool) and isinstance(value, (str, numbers.Real)):
        ok = str(value)
    if ok is None:
        raise ValueError(f"{key}: expected {kind}, got {value!r} (from {owner})")
    return ok


PRESETS: dict[str, dict] = {
    "vit-b-16": {},  # the dataclass defaults are the paper's model
    "tiny": dict(
        embed_dim=128,
        image_size=64,
        patch_size=8,  # 8×8 patches + CLS = 65 memory tokens
        vision_width=128,
        vision_layers=3,
        vision_heads=4,
        text_width=128,
        text_layers=2,
        text_heads=4,
        decoder_dim=128,
        decoder_layers=2,
        decoder_heads=4,
        decoder_ffn_dim=256,
    ),
}

__all__ = ["KINDS", "MEMORY_POS", "PRESETS", "PROPOSAL_HEADS", "REGION_QUERIES", "VISION_POS", "LossConfig", "ModelConfig"]
