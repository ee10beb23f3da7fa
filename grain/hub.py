"""Load an exported model folder behind open_clip's interface: ``grain.hub.load(DIR)``.

    model, preprocess, tokenizer = grain.hub.load("exported/")      # instead of
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:exported/")
    tokenizer = open_clip.get_tokenizer("local-dir:exported/")

The model has open_clip's ``encode_image(x, normalize=...)``, ``encode_text(tokens, normalize=...)``,
``logit_scale`` and ``forward(image, text)``, for both arms; GRAIN adds ``encode_regions(x)``. The
preprocess and tokenizer are open_clip's own, built from the folder's config, so they are the ones a
stock open_clip load of the same folder would use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from grain import box_ops
from grain.config import ModelConfig
from grain.model import GrainModel, build_model
from grain.openclip_format import CONFIG_FILE, preprocess_cfg, read_folder


def load_model(folder: str) -> tuple[GrainModel, ModelConfig]:
    """An exported folder → (GrainModel in eval mode, its config); the weights load with ``strict=True``."""
    cfg, state = read_folder(folder)
    model = build_model(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{folder}: weights do not match {CONFIG_FILE} ({e})") from e
    return model.eval(), cfg


class OpenCLIPModel(nn.Module):
    """A GrainModel with open_clip ``CLIP``'s methods. Embeddings are unnormalised unless ``normalize``."""

    def __init__(self, model: GrainModel):
        super().__init__()
        self.model = model
        # The same Parameter, so ``model.logit_scale.exp()`` (open_clip's idiom) reads the trained value.
        self.logit_scale = model.logit_scale

    @property
    def cfg(self) -> ModelConfig:
        return self.model.cfg

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """image [B, 3, S, S] (``preprocess`` output) → [B, D]: the CLS projection (CLIP arm) or the
        decoder's image query (GRAIN)."""
        out = self.model.encode_image(image)["image_embed"]
        return F.normalize(out, dim=-1) if normalize else out

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """text [N, L] (``tokenizer`` output) → [N, D]."""
        out = self.model.encode_text(text)
        return F.normalize(out, dim=-1) if normalize else out

    def encode_regions(self, image: torch.Tensor, normalize: bool = False) -> dict:
        """image [B, 3, S, S] → ``{"boxes" [B, Q, 4] xyxy in [0, 1] of the image, "region_embed" [B, Q, D]}``
        (GRAIN only: the CLIP arm has no region decoder)."""
        if self.model.decoder is None:
            raise ValueError("this is the CLIP-only arm: it has no region decoder, so no regions")
        out = self.model.encode_image(image)
        reg = out["region_embed"]
        boxes = box_ops.box_cxcywh_to_xyxy(out["pred_boxes"]).clamp(0, 1)
        return {"boxes": boxes, "region_embed": F.normalize(reg, dim=-1) if normalize else reg}

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None):
        """open_clip's ``CLIP.forward`` (``output_dict=False``): (normalised image [B, D] | None,
        normalised text [N, D] | None, exp(logit_scale))."""
        img = self.encode_image(image, normalize=True) if image is not None else None
        txt = self.encode_text(text, normalize=True) if text is not None else None
        return img, txt, self.logit_scale.exp()


def preprocess_transform(cfg: ModelConfig):
    """open_clip's inference transform for ``cfg``'s preprocess_cfg (squash resize, ImageNet statistics)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**preprocess_cfg(cfg)), is_train=False)


def load(folder: str, device: str | torch.device = "cpu"):
    """``(model, preprocess, tokenizer)`` of an exported folder, as open_clip returns them."""
    import open_clip

    model, cfg = load_model(folder)
    return (OpenCLIPModel(model).to(device).eval(), preprocess_transform(cfg),
            open_clip.get_tokenizer(f"local-dir:{folder}"))


__all__ = ["OpenCLIPModel", "load", "load_model", "preprocess_transform"]
