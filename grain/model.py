"""GRAIN (docs/method.md §2) and the CLIP-only baseline behind one interface.

``build_model(cfg)`` → ``GrainModel``. Towers are open_clip's own modules (3.x):
``VisionTransformer`` with ``qk_norm=True`` (QK-LayerNorm) and the CLIP ``TextTransformer``.

- ``kind="grain"``: all ViT tokens after the final norm (CLS included) are the memory of the
  ``RegionDecoder``; the global image embedding is the image query's output @ W_i (not the CLS).
- ``kind="clip"``: the baseline, CLS token after the final norm @ the ViT projection; no decoder.

All embeddings returned are unnormalised; losses and scorers normalise. Works in fp32 on CPU, under
``torch.autocast(..., dtype=torch.bfloat16)``, and can be built on the meta device.
"""

from __future__ import annotations

import torch
from torch import nn

from grain.config import ModelConfig
from grain.decoder import RegionDecoder


def build_model(cfg: ModelConfig) -> "GrainModel":
    """The model described by ``cfg`` (random init; load weights with ``grain.checkpoint``)."""
    return GrainModel(cfg)


class GrainModel(nn.Module):
    """Image tower + text tower (+ region decoder for ``kind="grain"``) + learned logit scale."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        from open_clip.transformer import TextTransformer, VisionTransformer

        self.cfg = cfg
        self.visual = VisionTransformer(
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            width=cfg.vision_width,
            layers=cfg.vision_layers,
            heads=cfg.vision_heads,
            mlp_ratio=cfg.vision_mlp_ratio,
            output_dim=cfg.embed_dim,
            qk_norm=cfg.vision_qk_norm,
            # "sincos2d": open_clip's MAE table as nn.Parameter(requires_grad=False), same key and shape
            # as the learnable one; param_groups skips it, so it is neither trained nor decayed.
            pos_embed_type={"learned": "learnable", "sincos2d": "sin_cos_2d"}[cfg.vision_pos_embed],
        )
        self.text = TextTransformer(
            context_length=cfg.context_length,
            vocab_size=cfg.vocab_size,
            width=cfg.text_width,
            heads=cfg.text_heads,
            layers=cfg.text_layers,
            mlp_ratio=cfg.text_mlp_ratio,
            output_dim=cfg.embed_dim,
        )
        if cfg.kind == "grain":
            # The ViT projection is unused by GRAIN: drop it so every parameter gets a gradient (DDP).
            self.visual.proj = None
            self.decoder = RegionDecoder(
                vision_width=cfg.vision_width,
                embed_dim=cfg.embed_dim,
                num_queries=cfg.num_region_queries,
                dim=cfg.decoder_dim,
                layers=cfg.decoder_layers,
                heads=cfg.decoder_heads,
                ffn_dim=cfg.decoder_ffn_dim,
                dropout=cfg.decoder_dropout,
                memory_pos=cfg.decoder_memory_pos,
                grid=cfg.image_size // cfg.patch_size,
                region_queries=cfg.region_queries,
                proposal_head=cfg.proposal_head,
            )
        else:
            self.decoder = None
        self.logit_scale = nn.Parameter(torch.ones([]) * cfg.logit_scale_init)

    # ------------------------------------------------------------------------------------ image
    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, S, S] (ImageNet-normalised) → all ViT tokens after the final norm [B, T, W], CLS first."""
        s = self.cfg.image_size
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2:] != (s, s):
            raise ValueError(f"images must be [B, 3, {s}, {s}] for preset {self.cfg.name!r}, got {tuple(images.shape)}")
        v = self.visual
        x = v._embeds(images)  # patchify + CLS + positional embedding + ln_pre
        x = v.transformer(x)
        return v.ln_post(x)

    def encode_image(self, images: torch.Tensor, return_intermediate: bool = False) -> dict:
        """images [B, 3, S, S] → ``{"image_embed" [B, D], "region_embed" [B, Q, D] | None,
        "pred_boxes" [B, Q, 4] normalised cxcywh | None}`` (unnormalised embeddings)."""
        tokens = self.image_tokens(images)
        if self.decoder is None:
            return {"image_embed": tokens[:, 0] @ self.visual.proj, "region_embed": None, "pred_boxes": None}
        return self.decoder(tokens, return_intermediate=return_intermediate)

    # ------------------------------------------------------------------------------------- text
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [N, L] (``grain.tokenizer.tokenize``, L ≤ context_length) → [N, D] unnormalised.

        Causal mask, EOT pooling (EOT has the largest id), final LayerNorm, projection. L may be
        shorter than 77: the positional table and the causal mask are sliced to L.
        """
        if tokens.dim() != 2:
            raise ValueError(f"text tokens must be [N, L], got shape {tuple(tokens.shape)}")
        n, length = tokens.shape
        if length > self.cfg.context_length:
            raise ValueError(f"text tokens of length {length} exceed the model's context_length {self.cfg.context_length}")
        t = self.text
        if n == 0:
            return t.text_projection.new_zeros(0, self.cfg.embed_dim)
        x = t.token_embedding(tokens) + t.positional_embedding[:length]
        # Built per call (not the tower's buffer) so a model materialised from the meta device works.
        mask = torch.full((length, length), float("-inf"), device=x.device).triu_(1)
        x = t.transformer(x, attn_mask=mask)
        x = t.ln_final(x)
        pooled = x[torch.arange(n, device=x.device), tokens.argmax(dim=-1)]
        return pooled @ t.text_projection

    def _encode_descriptions(self, tokens: torch.Tensor, text_id: torch.Tensor | None) -> torch.Tensor:
        """[M, Ld] → [M, D], encoding each distinct text once (boxes often share a description;
        equal ``target_text_id`` ⇔ identical text). Rows are copied back by index, so gradients
        add up exactly as if every row had been encoded."""
        if text_id is None:
            return self.encode_text(tokens)
        text_id = text_id.to(tokens.device)
        uniq, inverse = torch.unique(text_id, return_inverse=True)
        if len(uniq) == len(text_id):
            return self.encode_text(tokens)
        pos = torch.arange(len(text_id), device=tokens.device)
        first = torch.full((len(uniq),), len(text_id), dtype=torch.long, device=tokens.device)
        first = first.scatter_reduce(0, inverse, pos, reduce="amin")  # first row of each distinct text
        return self.encode_text(tokens[first])[inverse]

    # -------------------------------------------------------------------------------- training
    def scale(self) -> torch.Tensor:
        """exp(logit_scale), with the parameter clamped to ≤ ln(100) (docs/method.md §2.3)."""
        return self.logit_scale.clamp(max=self.cfg.logit_scale_max).exp()

    def forward(self, batch: dict, return_intermediate: bool = False) -> dict:
        """batch (``grain.data.make_batch``) → image outputs + ``text_embed`` [B, D] (captions),
        ``desc_embed`` [M, D] (one per target box; [0, D] for the baseline) and ``logit_scale``
        (a scalar: exp'd and clamped ≤ 100). Embeddings unnormalised. ``return_intermediate`` adds
        the decoder's earlier layers under ``aux`` (needed by ``LossConfig.aux_loss``)."""
        out = self.encode_image(batch["images"], return_intermediate=return_intermediate)
        out["text_embed"] = self.encode_text(batch["captions"])
        desc = batch.get("target_desc_tokens")
        if self.decoder is not None and desc is not None and desc.shape[0] > 0:
            out["desc_embed"] = self._encode_descriptions(desc, batch.get("target_text_id"))
        else:
            out["desc_embed"] = out["text_embed"].new_zeros(0, self.cfg.embed_dim)
        out["logit_scale"] = self.scale()
        return out

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups as in the release (open_clip's rule ``p.ndim < 2 or bias/ln/logit_scale``): no
        decay on parameters with < 2 dims (biases, norm gains, the CLS embedding, the logit scale);
        everything else (weight matrices, patch/positional/token/query embeddings) decays. Frozen
        parameters (``vision_pos_embed="sincos2d"``'s fixed table) are in no group."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if p.ndim < 2 or "logit_scale" in name:
                no_decay.append(p)
            else:
                decay.append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
