"""GRAIN's training objective (docs/method.md §3): L = L_ic + λ_box·(L1 + L_GIoU) + λ_rd·L_rd.

``GrainLoss(cfg, rank, world_size)(outputs, batch)`` → ``dict[str, Tensor]`` with ``loss_ic``,
``loss_l1``, ``loss_giou``, ``loss_rd`` and ``loss`` (the weighted sum to back-propagate); with a
two-stage decoder (``ModelConfig.region_queries``) also ``loss_prop_cls/l1/giou``, weighted by
``lambda_proposal`` (a deviation from the release, docs/method.md §6; off with the release's learned queries); with
``cfg.aux_loss`` also ``loss_l1_i``/``loss_giou_i``/``loss_rd_i`` for each earlier decoder layer i
(last decoder layer only by default, as the release).
``outputs`` is ``GrainModel.forward``'s dict, ``batch`` is ``grain.data.make_batch``'s.

Distributed contract (any number of ranks, including one process without a process group):
every rank back-propagates its ``loss``; **summed over ranks, the gradients equal the gradient of
the single-process loss on the union of the ranks' batches** (DDP's mean-reduce then divides all
terms alike by the world size, as in open_clip and DETR). To get there:

- ``loss_ic`` is the *global* symmetric InfoNCE over all ranks' pairs, computed on every rank
  from features gathered with gradient into the local slot only (its value is the same on every
  rank; log it from any rank).
- ``loss_l1`` / ``loss_giou`` are this rank's sum over matched pairs divided by the number of target
  boxes summed over ranks (clamped ≥ 1: no NaN when no rank has boxes). Their values are this
  rank's share: sum them over ranks for the global value.
- ``loss_rd``: each matched region is scored against the descriptions of the target boxes of its
  *local* batch (docs/method.md §3.4), so its candidate set depends on how the global batch is split. It is
  normalised like L_box by the matched-pair count summed over ranks, so summed over ranks it is the
  mean over all matched pairs of the cross-entropy against their own rank's candidates. A single
  process reproduces a split exactly with ``rd_group`` (image → group id; candidates restricted to
  the same group).
Images without boxes contribute L_ic only; every term is finite (0) on a batch without boxes, and
every parameter that a term can use still receives a (zero) gradient so DDP needs no
``find_unused_parameters``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from grain import box_ops
from grain.config import LossConfig
from grain.dist import all_reduce_sum, gather_with_grad, is_distributed
from grain.experimental import two_stage
from grain.matcher import HungarianMatcher


def contrastive_loss(image_embed: torch.Tensor, text_embed: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """L_ic: symmetric InfoNCE. image_embed [B, D], text_embed [B, D] (unnormalised, local rows),
    logit_scale: scalar (already exp'd). Gathered over ranks with gradient when distributed."""
    img = gather_with_grad(F.normalize(image_embed.float(), dim=-1))
    txt = gather_with_grad(F.normalize(text_embed.float(), dim=-1))
    scale = logit_scale.float()
    world = dist.get_world_size() if is_distributed() else 1
    if world > 1:
        # Every rank computes the same global loss, so each would back-propagate the *full* gradient
        # into the (replicated) logit scale, world× too much once summed over ranks (open_clip does
        # this). Same value, 1/world of the gradient per rank: the sum over ranks is then exact.
        scale = scale / world + (scale - scale / world).detach()
    logits = scale * img @ txt.t()  # [N, N], N = global batch
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


class GrainLoss(nn.Module):
    """The weighted GRAIN loss; for the CLIP baseline (no ``pred_boxes``) only L_ic is non-zero."""

    def __init__(self, cfg: LossConfig | None = None, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.cfg = cfg or LossConfig()
        self.rank, self.world_size = rank, world_size
        self.matcher = HungarianMatcher(self.cfg.cost_l1, self.cfg.cost_giou)

    def _check_world(self):
        got = (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)
        if got != (self.rank, self.world_size):
            raise RuntimeError(
                f"GrainLoss built for rank {self.rank} of {self.world_size}, but the process group says rank {got[0]} of {got[1]}"
            )

    def forward(self, outputs: dict, batch: dict, rd_group: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """outputs: ``image_embed`` [B, D], ``text_embed`` [B, D], ``logit_scale`` scalar, and for
        GRAIN ``pred_boxes`` [B, Q, 4] cxcywh, ``region_embed`` [B, Q, D], ``desc_embed`` [M, D].
        batch: ``target_boxes`` [M, 4] cxcywh, ``target_image`` [M], ``target_text_id`` [M].
        rd_group: optional [B] long, restricts L_rd candidates to targets of images in the same group.
        """
        self._check_world()
        scale = outputs["logit_scale"]
        losses = {"loss_ic": contrastive_loss(outputs["image_embed"], outputs["text_embed"], scale)}
        pred = outputs.get("pred_boxes")
        if pred is None:  # CLIP baseline
            zero = losses["loss_ic"].new_zeros(())
            losses.update(loss_l1=zero, loss_giou=zero, loss_rd=zero)
        else:
            tb, timg = batch["target_boxes"].to(pred.device), batch["target_image"].to(pred.device)
            bi, qi, ti = self.matcher(pred.detach(), tb, timg)
            losses.update(self._box_losses(pred, tb, bi, qi, ti))
            losses["loss_rd"] = self._rd_loss(outputs, batch, bi, qi, ti, scale, rd_group)
        c = self.cfg
        losses["loss"] = (
            losses["loss_ic"] + c.lambda_box * (losses["loss_l1"] + losses["loss_giou"]) + c.lambda_rd * losses["loss_rd"]
        )
        if "proposal_logits" in outputs:  # an option, not the paper: ModelConfig.region_queries="two_stage"
            prop = two_stage.proposal_losses(outputs["proposal_logits"], outputs["proposal_boxes"], tb, timg)
            losses.update(prop)
            losses["loss"] = losses["loss"] + c.lambda_proposal * (
                prop["loss_prop_cls"] + prop["loss_prop_l1"] + prop["loss_prop_giou"])
        if c.aux_loss and pred is not None:
            if "aux" not in outputs:
                raise ValueError("LossConfig.aux_loss needs the model's forward(batch, return_intermediate=True)")
            for i, aux in enumerate(outputs["aux"]):
                bi, qi, ti = self.matcher(aux["pred_boxes"].detach(), tb, timg)  # each layer matched on its own
                box = self._box_losses(aux["pred_boxes"], tb, bi, qi, ti)
                rd = self._rd_loss(dict(outputs, region_embed=aux["region_embed"]), batch, bi, qi, ti, scale, rd_group)
                losses[f"loss_l1_{i}"], losses[f"loss_giou_{i}"], losses[f"loss_rd_{i}"] = box["loss_l1"], box["loss_giou"], rd
                losses["loss"] = losses["loss"] + c.lambda_box * (box["loss_l1"] + box["loss_giou"]) + c.lambda_rd * rd
        return losses

    @staticmethod
    def _box_losses(pred, tb, bi, qi, ti) -> dict[str, torch.Tensor]:
        """L_box: L1 (cxcywh) and 1 − GIoU over matched pairs, each / global target count (≥ 1)."""
        num = all_reduce_sum(torch.tensor(float(tb.shape[0]), device=pred.device)).clamp(min=1.0)
        src = pred[bi, qi].float()  # [K, 4]; an empty selection still carries the graph (zero grads)
        tgt = tb[ti].float()
        l1 = (src - tgt).abs().sum() / num
        giou = box_ops.elementwise_generalized_box_iou(box_ops.box_cxcywh_to_xyxy(src), box_ops.box_cxcywh_to_xyxy(tgt))
        return {"loss_l1": l1, "loss_giou": (1 - giou).sum() / num}

    def _rd_loss(self, outputs, batch, bi, qi, ti, scale, rd_group) -> torch.Tensor:
        """L_rd: each matched region query vs the descriptions of every target box in the local
        batch (one entry per box; its own target's entry is the positive), region → description."""
        region_all, desc_all = outputs["region_embed"], outputs["desc_embed"]
        num = all_reduce_sum(torch.tensor(float(bi.numel()), device=region_all.device)).clamp(min=1.0)
        # Zero-valued terms keep W_r and the description path in the graph on ranks without boxes.
        keep = region_all.float().sum() * 0 + desc_all.float().sum() * 0
        if bi.numel() == 0:
            return keep
        region = F.normalize(region_all[bi, qi].float(), dim=-1)  # [K, D]
        desc = F.normalize(desc_all.float(), dim=-1)  # [M, D]
        logits = scale.float() * region @ desc.t()  # [K, M]
        cand = torch.arange(desc.shape[0], device=logits.device)
        invalid = torch.zeros_like(logits, dtype=torch.bool)
        if self.cfg.mask_identical_descriptions:
            text_id = batch["target_text_id"].to(logits.device)
            invalid |= (text_id[None, :] == text_id[ti][:, None]) & (cand[None, :] != ti[:, None])
        if rd_group is not None:
            group_of_target = rd_group.to(logits.device)[batch["target_image"].to(logits.device)]
            invalid |= group_of_target[None, :] != group_of_target[ti][:, None]
        logits = logits.masked_fill(invalid, float("-inf"))
        return F.cross_entropy(logits, ti, reduction="sum") / num + keep
