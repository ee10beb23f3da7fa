"""`grain eval --engine clip_benchmark`: the same sets scored by clip_benchmark's own code.

clip_benchmark has no plug-in registry; its metric functions take any model with ``encode_image`` /
``encode_text``, a tokenizer and a dataloader. Here they get ``grain.hub.OpenCLIPModel`` (both arms),
open_clip's tokenizer and preprocessing, and dataloaders over the local sets (no download):

- classification: ``zeroshot_classification.evaluate`` with the class names and templates `grain eval`
  uses (``{}`` written back as clip_benchmark's ``{c}``) — the ``names`` variant;
- retrieval: ``zeroshot_retrieval.evaluate`` with recall@1/5/10.

One JSON per set in clip_benchmark's layout (``dataset``, ``model``, ``pretrained``, ``task``,
``metrics``, ``language``), named as its CLI's default ``{dataset}_{pretrained}_{model}_{language}_{task}.json``.
"""

from __future__ import annotations

import json
import os

import torch
from torch.utils.data import DataLoader, Dataset

from evaluation.config import EvalConfig
from evaluation.evalsets import ClassificationSet, decode_ref, load_evalset


class _Images(Dataset):
    """(preprocessed image [3, S, S], label) per image; ``classes`` as clip_benchmark's datasets have."""

    def __init__(self, refs, targets, transform, classes=None):
        self.refs, self.targets, self.transform, self.classes = refs, targets, transform, classes

    def __len__(self):
        return len(self.refs)

    def __getitem__(self, i):
        return self.transform(decode_ref(self.refs[i])), self.targets[i]


def _retrieval_collate(batch):
    # clip_benchmark's retrieval loader yields (images [B, 3, S, S], list of B caption lists).
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def _tokenizer(checkpoint: str, context_length: int):
    import open_clip

    from grain.openclip_format import is_export_folder

    if is_export_folder(checkpoint):
        return open_clip.get_tokenizer(f"local-dir:{checkpoint}")
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


def run_clip_benchmark(cfg: EvalConfig | dict) -> list[dict]:
    """Evaluate ``cfg.checkpoint`` (final.pt or an exported folder) on ``cfg.datasets`` with clip_benchmark;
    write one JSON per set under ``cfg.output``; return the dumps (each with ``path``)."""
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval

    from grain.hub import OpenCLIPModel, preprocess_transform

    from evaluation.runner import _resolve_dataset, _templates, load_model

    cfg = EvalConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
    if not cfg.datasets:
        raise ValueError("no data sets to evaluate (give --dataset PATH or a local set name)")
    paths = [_resolve_dataset(d, cfg.build_missing) for d in cfg.datasets]
    gm, mcfg, _ = load_model(cfg.checkpoint, cfg.device)
    model, transform = OpenCLIPModel(gm).eval(), preprocess_transform(mcfg)
    tokenizer = _tokenizer(cfg.checkpoint, mcfg.context_length)
    name = cfg.model_name or os.path.splitext(os.path.basename(os.path.normpath(cfg.checkpoint)))[0]
    os.makedirs(cfg.output, exist_ok=True)
    dumps = []
    # amp=False: clip_benchmark's autocast would run the CPU in bf16, while `grain eval` scores in fp32.
    for p in paths:
        ds = load_evalset(p).limit(cfg.limit)
        if isinstance(ds, ClassificationSet):
            data = _Images(ds.images, ds.labels, transform, classes=ds.classnames)
            loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=False)
            templates = [t.replace("{}", "{c}") for t in _templates(cfg, ds)]
            metrics = zeroshot_classification.evaluate(model, loader, tokenizer, ds.classnames, templates,
                                                       cfg.device, amp=False)
        else:
            caps: list[list[str]] = [[] for _ in ds.images]
            for text, img in zip(ds.captions, ds.caption_image):
                caps[img].append(text)
            data = _Images(ds.images, caps, transform)
            loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=False, collate_fn=_retrieval_collate)
            metrics = zeroshot_retrieval.evaluate(model, loader, tokenizer, cfg.device, amp=False, recall_k_list=[1, 5, 10])
        dump = {"dataset": ds.name, "model": name, "pretrained": cfg.checkpoint, "task": ds.task,
                "metrics": metrics, "language": "en"}
        path = os.path.join(cfg.output, f"{ds.name}_{os.path.basename(os.path.normpath(cfg.checkpoint))}_{name}_en_{ds.task}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(dump, f)
        dumps.append({**dump, "path": path})
    return dumps


def summary_lines(dumps: list[dict]) -> list[str]:
    out = []
    for d in dumps:
        m = d["metrics"]
        if d["task"] == "zeroshot_classification":
            out.append(f"{d['dataset']:28s} clip_benchmark acc1 {100 * m['acc1']:5.1f}  acc5 {100 * m['acc5']:5.1f}")
        else:
            out.append(f"{d['dataset']:28s} clip_benchmark t→i R@1 {100 * m['image_retrieval_recall@1']:5.1f}  "
                       f"i→t R@1 {100 * m['text_retrieval_recall@1']:5.1f}")
        out.append(f"wrote {d['path']}")
    return out
