"""OWLv2 grounder (docs/method.md §1.3): an image's descriptions as text queries → labelled boxes.

    g = Grounder("/path/to/owlv2")                        # or "google/owlv2-base-patch16-ensemble"
    outs = g.ground([pil, ...], [["a red bus", ...], ...])  # list[GroundingOutput], same order

Rules: every predicted box whose best description score (sigmoid) is > ``threshold`` is kept,
labelled with the argmax description; sorted by score, at most ``max_boxes``. NMS per description is
an option (off: the release has none). An image without descriptions gets no boxes and costs no call.

Box frame (docs/method.md §1.4, one frame for every box): OWLv2's processor pads the image at the bottom/right
to a square of side ``max(w, h)`` and predicts boxes normalised to that square. We map them to
**xyxy normalised in the decoded image**: x · max(w, h) / w, y · max(w, h) / h, clipped to [0, 1];
boxes that become empty (entirely in the padding) or inverted are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from grain.box_ops import box_cxcywh_to_xyxy, nms_per_label
from grain.common.schema import MAX_BOXES


@dataclass
class GroundingOutput:
    """One image's boxes: ``boxes_xyxy_norm`` [N][4] normalised xyxy in the decoded image, ``scores`` [N]
    (sigmoid, descending), ``desc_index`` [N] index into that image's description list."""

    boxes_xyxy_norm: list[list[float]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    desc_index: list[int] = field(default_factory=list)
    error: str | None = None


def unpad_boxes(boxes_cxcywh: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """OWLv2 boxes in the padded square → xyxy normalised in the original ``width`` × ``height`` image.

    boxes_cxcywh: [N, 4] (cx, cy, w, h) normalised to the padded square (side max(width, height)).
    Returns [N, 4] (x1, y1, x2, y2) normalised to the image, clipped to [0, 1] (may be degenerate: see
    ``valid_boxes``).
    """
    side = float(max(width, height))
    xyxy = box_cxcywh_to_xyxy(boxes_cxcywh)
    scale = xyxy.new_tensor([side / width, side / height, side / width, side / height])
    return (xyxy * scale).clamp(0.0, 1.0)


def valid_boxes(xyxy: torch.Tensor, width: int, height: int, min_pixels: float = 1.0) -> torch.Tensor:
    """[N] bool: finite boxes with x2 - x1 and y2 - y1 at least ``min_pixels`` pixels of the image."""
    finite = torch.isfinite(xyxy).all(-1)
    return finite & ((xyxy[:, 2] - xyxy[:, 0]) * width >= min_pixels) & ((xyxy[:, 3] - xyxy[:, 1]) * height >= min_pixels)


class Grounder:
    """OWLv2 through transformers (``Owlv2ForObjectDetection`` + ``Owlv2Processor``).

    threshold: keep boxes whose best description score (sigmoid) > threshold (0.3 in the release);
    max_boxes: cap per image (50); nms / nms_iou: per-description NMS (off unless nms=True or nms_iou set);
    batch_size: images per forward (text queries padded per image); device: "cpu", "cuda", ... (None: CUDA
    if visible, else CPU); dtype: None = float32, or "bfloat16" (≈5× faster on an H200 at OWLv2-base size);
    revision: hub commit to load ``model`` at (None: the default branch).
    """

    def __init__(self, model: str, threshold: float = 0.3, max_boxes: int = MAX_BOXES, nms: bool = False,
                 nms_iou: float | None = None, device: str | None = None, batch_size: int = 8, dtype: str | None = None,
                 revision: str | None = None):
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"Grounder: threshold must be in [0, 1), got {threshold}")
        if max_boxes < 1:
            raise ValueError(f"Grounder: max_boxes must be ≥ 1, got {max_boxes}")
        from transformers import Owlv2ForObjectDetection, Owlv2Processor

        self.model_name = model
        self.threshold, self.max_boxes, self.batch_size = float(threshold), int(max_boxes), max(1, int(batch_size))
        self.nms_iou = nms_iou if nms_iou is not None else (0.5 if nms else None)
        # None: CUDA when this process sees a GPU (a Ray actor with num_gpus > 0 does; one with 0 does not).
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        pin = {"revision": revision} if revision else {}  # a pinned hub commit; none: the default branch
        self.processor = Owlv2Processor.from_pretrained(model, **pin)
        torch_dtype = getattr(torch, dtype) if dtype else torch.float32
        self.model = Owlv2ForObjectDetection.from_pretrained(model, dtype=torch_dtype, **pin).to(self.device).eval()
        tok = self.processor.tokenizer
        # OWLv2 reads 16 text tokens (its position table); longer descriptions are truncated (EOT kept).
        self.max_text_len = int(self.model.config.text_config.max_position_embeddings)
        # The torchvision-backed processor can resize/pad on the GPU (the PIL one cannot): at 960² the CPU
        # preprocessing would otherwise dominate a GPU forward.
        on_gpu = self.device.type != "cpu" and "Pil" not in type(self.processor.image_processor).__name__
        self._preprocess_kw = {"device": self.device} if on_gpu else {}

    def _tokenize(self, descriptions: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Per-image query lists → input_ids/attention_mask [B·Q, L] (Q = longest list), rows past an image's
        own list all-zero: OWLv2 treats a query whose first token id is 0 as padding and masks it (the
        processor's own " " padding would be scored as a real query)."""
        q = max(len(d) for d in descriptions)
        flat = [t for d in descriptions for t in d]
        enc = self.processor.tokenizer(flat, padding="max_length", truncation=True, max_length=self.max_text_len,
                                       return_tensors="pt")
        ids = torch.zeros(len(descriptions) * q, self.max_text_len, dtype=torch.long)
        mask = torch.zeros_like(ids)
        mask[:, 0] = 1  # padded queries attend to one token, so no row is all-masked (NaN); they are masked later
        row = 0
        for b, d in enumerate(descriptions):
            n = len(d)
            ids[b * q: b * q + n] = enc["input_ids"][row: row + n]
            mask[b * q: b * q + n] = enc["attention_mask"][row: row + n]
            row += n
        return ids, mask, q

    @torch.no_grad()
    def _forward(self, images: list, descriptions: list[list[str]]) -> list[GroundingOutput]:
        ids, mask, q = self._tokenize(descriptions)
        pixels = self.processor.image_processor(images=images, return_tensors="pt", **self._preprocess_kw)["pixel_values"]
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         pixel_values=pixels.to(self.device, self.model.dtype))
        logits = out.logits.float().cpu()  # [B, P, Q]: one score per (predicted box, query)
        boxes = out.pred_boxes.float().cpu()  # [B, P, 4] cxcywh in the padded square
        results = []
        for b, (im, d) in enumerate(zip(images, descriptions)):
            scores_all = torch.sigmoid(logits[b, :, : len(d)])  # only this image's own queries
            best, label = scores_all.max(-1)
            keep = best > self.threshold
            xyxy = unpad_boxes(boxes[b], im.width, im.height)
            keep &= valid_boxes(xyxy, im.width, im.height)
            xyxy, best, label = xyxy[keep], best[keep], label[keep]
            if self.nms_iou is not None and len(best):
                idx = nms_per_label(xyxy, best, label, self.nms_iou)
            else:
                idx = torch.argsort(best, descending=True)
            idx = idx[: self.max_boxes]
            results.append(GroundingOutput(boxes_xyxy_norm=xyxy[idx].tolist(), scores=best[idx].tolist(),
                                           desc_index=label[idx].tolist()))
        return results

    def ground(self, images: list, descriptions: list[list[str]]) -> list[GroundingOutput]:
        """``images``: decoded PIL images; ``descriptions[i]``: image i's descriptions (may be empty → no boxes).
        Returns one GroundingOutput per image, in order; a per-image failure sets that item's ``error``."""
        from PIL import Image

        if len(images) != len(descriptions):
            raise ValueError(f"Grounder.ground: {len(images)} images but {len(descriptions)} description lists")
        outs: list[GroundingOutput | None] = [None] * len(images)
        todo = []
        for i, (im, d) in enumerate(zip(images, descriptions)):
            if not isinstance(im, Image.Image):
                outs[i] = GroundingOutput(error=f"image {i}: expected a PIL image, got {type(im).__name__}")
                continue
            d = [t for t in (d or []) if isinstance(t, str) and t.strip()]
            if len(d) != len(descriptions[i] or []):
                outs[i] = GroundingOutput(error=f"image {i}: descriptions must be non-empty strings, got {descriptions[i]!r}"[:500])
            elif not d:
                outs[i] = GroundingOutput()  # nothing to ground: a valid row with no boxes
            else:
                todo.append((i, im if im.mode == "RGB" else im.convert("RGB"), d))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start: start + self.batch_size]
            try:
                res = self._forward([im for _, im, _ in chunk], [d for _, _, d in chunk])
            except Exception:
                res = [self._forward_one(im, d) for _, im, d in chunk]  # isolate a failing image
            for (i, _, _), r in zip(chunk, res):
                outs[i] = r
        return outs

    def _forward_one(self, im, d: list[str]) -> GroundingOutput:
        try:
            return self._forward([im], [d])[0]
        except Exception as e:
            return GroundingOutput(error=f"{im.width}x{im.height} image: {type(e).__name__}: {str(e)[:500]}")

    @property
    def model_id(self) -> str:
        return self.model_name
