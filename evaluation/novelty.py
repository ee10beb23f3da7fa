"""Novel concepts: which evaluation classes never occur in the training text.

A class is *seen* when its name occurs (whole words, case-insensitive) in any training caption
(``source_caption``, ``mllm_caption``) or MLLM description of an ok row of the shards the training
run consumed; otherwise *unseen*. Descriptors are matched the same way and reported per class.
Accuracy is then reported separately for seen and unseen classes (evaluation.metrics.subset_accuracy).

Accepted training-data references (``load_training_texts``), leniently:
- a manifest JSON with a list of shard paths under any of ``data_files``, ``shards``, ``files``
  (top level, or inside ``data``/``summary``); entries are strings or objects with a ``path``;
  relative paths resolve against the manifest's ``root`` field when present, else its folder
  (the trainer's data-index summary ``{"root": ..., "files": [...]}`` is accepted as is);
- a ``.txt`` file with one shard path per line;
- a folder (every ``*.parquet`` inside), one ``.parquet`` file, or a list mixing any of these.
Local paths or fsspec URIs (``s3://…``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TEXT_COLUMNS = ("source_caption", "mllm_caption", "descriptions")


def _is_uri(p: str) -> bool:
    return "://" in p


def _join(base: str, p: str) -> str:
    if _is_uri(p) or os.path.isabs(p):
        return p
    return f"{base.rstrip('/')}/{p}" if _is_uri(base) else os.path.join(base, p)


def _manifest_entries(doc, where: str) -> tuple[list[str], str | None]:
    candidates = [doc] + [doc[k] for k in ("data", "summary") if isinstance(doc, dict) and isinstance(doc.get(k), dict)]
    for d in candidates:
        if isinstance(d, list):
            items, root = d, None
        elif isinstance(d, dict):
            key = next((k for k in ("data_files", "shards", "files") if isinstance(d.get(k), list)), None)
            if key is None:
                continue
            items, root = d[key], d.get("root") if isinstance(d.get("root"), str) else None
        else:
            continue
        paths = []
        for it in items:
            p = it.get("path") if isinstance(it, dict) else it
            if not isinstance(p, str):
                raise ValueError(f"{where}: shard entry {it!r} is neither a path nor an object with a 'path'")
            paths.append(p)
        return paths, root
    raise ValueError(f"{where}: no shard list found (expected 'data_files', 'shards' or 'files': [paths])")


def resolve_shards(refs: str | Sequence[str]) -> list[str]:
    """Expand manifest / list file / folder / shard references into Parquet shard paths (see module doc).
    Folders are listed by ``grain.common.storage.list_shards`` (committed shards only where markers exist)."""
    from grain.common import storage

    refs = [refs] if isinstance(refs, str) else list(refs)
    out: list[str] = []
    for ref in refs:
        fs, path = storage.open_fs(ref)
        if ref.endswith(".json"):
            with fs.open(path, "r") as f:
                entries, root = _manifest_entries(json.load(f), ref)
            base = root or (ref.rsplit("/", 1)[0] if _is_uri(ref) else os.path.dirname(os.path.abspath(ref)))
            out += resolve_shards([_join(base, p) for p in entries])
        elif ref.endswith(".txt"):
            with fs.open(path, "r") as f:
                lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
            base = os.path.dirname(os.path.abspath(ref)) if not _is_uri(ref) else ref.rsplit("/", 1)[0]
            out += resolve_shards([_join(base, p) for p in lines])
        elif fs.isdir(path):
            found, _ = storage.list_shards(ref)
            if not found:
                raise FileNotFoundError(f"{ref}: folder has no (committed) *.parquet shards")
            out += found
        elif fs.exists(path):
            out.append(ref)
        else:
            raise FileNotFoundError(f"{ref}: training shard or manifest not found")
    return list(dict.fromkeys(out))


def load_training_texts(refs: str | Sequence[str]) -> list[str]:
    """All captions and descriptions of ok rows in the referenced shards (error rows carry no text)."""
    import pyarrow.parquet as pq

    from grain.common import storage

    texts: list[str] = []
    for shard in resolve_shards(refs):
        fs, path = storage.open_fs(shard)
        try:
            with fs.open(path, "rb") as f:
                schema_names = pq.read_schema(f).names
                cols = [c for c in (*TEXT_COLUMNS, "status") if c in schema_names]
                f.seek(0)
                table = pq.read_table(f, columns=cols)
        except Exception as e:
            raise ValueError(f"{shard}: cannot read as a Parquet shard ({e})") from e
        if not any(c in cols for c in TEXT_COLUMNS):
            raise ValueError(f"{shard}: none of the text columns {TEXT_COLUMNS} present")
        for row in table.to_pylist():
            if row.get("status", "ok") != "ok":
                continue
            for c in ("source_caption", "mllm_caption"):
                if row.get(c):
                    texts.append(row[c])
            texts += [d for d in (row.get("descriptions") or []) if d]
    return texts


def phrase_pattern(phrase: str) -> re.Pattern:
    """Whole-word, case-insensitive, whitespace-tolerant pattern for ``phrase`` ("ice cream" ~ "Ice  cream")."""
    words = phrase.strip().split()
    if not words:
        raise ValueError("empty phrase")
    body = r"\s+".join(re.escape(w) for w in words)
    # Lookarounds rather than \b: names may start or end with a non-word character ("t-shirt", "c++").
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


@dataclass
class ClassOccurrence:
    """Per class: how often its name occurs in training text and which descriptors occur."""

    name: str
    name_count: int
    descriptors_seen: list[str]
    descriptors_unseen: list[str]

    @property
    def seen(self) -> bool:
        return self.name_count > 0

    def to_dict(self) -> dict:
        return {"class": self.name, "seen": self.seen, "name_count": self.name_count,
                "descriptors_seen": self.descriptors_seen, "descriptors_unseen": self.descriptors_unseen}


def class_occurrence(classnames: Sequence[str], descriptors: dict[str, list[str]] | None,
                     texts: Iterable[str]) -> list[ClassOccurrence]:
    """Count whole-word occurrences of each class name (and its descriptors) in ``texts``."""
    corpus = "\n".join(texts)  # one search per phrase over the joined text: texts never span a newline match
    cache: dict[str, int] = {}

    def count(p: str) -> int:
        if p not in cache:
            cache[p] = len(phrase_pattern(p).findall(corpus)) if p.strip() else 0
        return cache[p]

    out = []
    for c in classnames:
        descs = (descriptors or {}).get(c, [])
        out.append(ClassOccurrence(c, count(c), [d for d in descs if count(d)], [d for d in descs if not count(d)]))
    return out


def novelty_report(classnames: Sequence[str], descriptors, texts, scores=None, labels=None) -> dict:
    """``{"classes": [...per-class...], "seen_classes", "unseen_classes", "seen": {acc}, "unseen": {acc}}``.

    scores [N, C] / labels [N] (optional): accuracy split by whether the true class is seen.
    """
    import torch

    from evaluation.metrics import subset_accuracy

    occ = class_occurrence(classnames, descriptors, texts)
    seen_mask = torch.tensor([o.seen for o in occ], dtype=torch.bool)
    rep = {"classes": [o.to_dict() for o in occ], "seen_classes": int(seen_mask.sum()),
           "unseen_classes": int((~seen_mask).sum())}
    if scores is not None and labels is not None:
        rep["seen"] = subset_accuracy(scores, labels, seen_mask)
        rep["unseen"] = subset_accuracy(scores, labels, ~seen_mask)
    return rep
