"""Evaluation-set layouts → in-memory descriptions of a set (images are read lazily).

Accepted layouts (``load_evalset(path)`` detects which):

1. **ImageFolder** — ``ROOT/<class folder>/<image files>``; folders sorted give the label order.
   Optional ``ROOT/classes.json`` ``{folder name: readable class name}`` (missing entries keep the
   folder name with ``_`` → space), optional ``ROOT/descriptors.json`` in the "classification by
   description" layout ``{class name: [descriptor, ...]}`` (it must cover every class), optional
   ``ROOT/templates.txt`` (one template per line, ``{c}`` marks the class name).
2. **clip_benchmark webdataset** — ``ROOT/test/*.tar`` (``nshards.txt`` optional here) whose members
   are ``<key>.{webp,png,jpg,jpeg}`` + ``<key>.cls`` (integer label), with ``ROOT/classnames.txt``
   (one class per line) and optional ``ROOT/zeroshot_classification_templates.txt``; or, when
   ``ROOT/dataset_type.txt`` says ``retrieval``, ``<key>.txt`` members holding one caption per line.
   ``descriptors.json`` beside ``classnames.txt`` is read as in (1).
3. **Annotated Parquet shards** (grain/common/schema.py) — a ``.parquet`` file or a folder of them: a
   retrieval set whose captions are each ok row's ``source_caption`` and/or ``mllm_caption``
   (several captions per image); error rows and rows without any caption are counted, not used.

Every error names the file or folder at fault.
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
from dataclasses import dataclass, field

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
# Largest tar member read into memory (an image, a .cls, a caption file). Members are checked from the
# tar header before any byte is read, so a hostile or broken shard cannot exhaust memory with one entry.
MAX_MEMBER_BYTES = 64 * 1024 * 1024
# Largest sum of the members one tar contributes: the reader groups a whole tar's samples in memory
# before they are used, so a shard of many members under the per-member cap is bounded too.
MAX_TAR_BYTES = 4 * 1024**3
# Largest image file of an ImageFolder set read into memory (the tar members' per-member cap).
MAX_IMAGE_BYTES = MAX_MEMBER_BYTES


class EvalSetError(ValueError):
    """An evaluation set is malformed; the message names the file or folder."""


@dataclass
class ImageRef:
    """One image: ``where`` names it in errors; bytes come from ``path`` or are held in ``data``."""

    where: str
    path: str | None = None
    data: bytes | None = None
    max_bytes: int = MAX_IMAGE_BYTES

    def read_bytes(self) -> bytes:
        """The image's bytes; a file over ``max_bytes`` is an EvalSetError naming it, checked from its
        size before reading (and the read itself stops one byte past the cap, should it have grown)."""
        if self.data is not None:
            return self.data
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                data = f.read(self.max_bytes + 1) if size <= self.max_bytes else b""
        except OSError as e:
            raise EvalSetError(f"{self.where}: cannot read image file ({e})") from e
        if size > self.max_bytes or len(data) > self.max_bytes:
            raise EvalSetError(f"{self.where}: image file of {max(size, len(data))} bytes exceeds the "
                               f"{self.max_bytes}-byte limit per image (max_bytes); not read")
        return data


@dataclass
class ClassificationSet:
    """Zero-shot classification set. ``labels[i]`` indexes ``classnames``; descriptors keyed by class name."""

    name: str
    root: str
    layout: str
    classnames: list[str]
    images: list[ImageRef]
    labels: list[int]
    descriptors: dict[str, list[str]] | None = None
    templates: list[str] | None = None
    task: str = "zeroshot_classification"

    def limit(self, n: int | None) -> "ClassificationSet":
        """At most ``n`` images, taken round-robin over classes so every class keeps samples."""
        if not n or n >= len(self.images):
            return self
        by_class: dict[int, list[int]] = {}
        for i, y in enumerate(self.labels):
            by_class.setdefault(y, []).append(i)
        order, depth = [], 0
        while len(order) < n:
            for y in sorted(by_class):
                if depth < len(by_class[y]):
                    order.append(by_class[y][depth])
            depth += 1
        keep = sorted(order[:n])
        return ClassificationSet(self.name, self.root, self.layout, self.classnames, [self.images[i] for i in keep],
                                 [self.labels[i] for i in keep], self.descriptors, self.templates)


@dataclass
class RetrievalSet:
    """Image–text retrieval set: ``caption_image[j]`` is the image index of ``captions[j]``."""

    name: str
    root: str
    layout: str
    images: list[ImageRef]
    captions: list[str]
    caption_image: list[int]
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows not used (never silent)
    task: str = "zeroshot_retrieval"

    def limit(self, n: int | None) -> "RetrievalSet":
        if not n or n >= len(self.images):
            return self
        keep = [j for j, i in enumerate(self.caption_image) if i < n]
        return RetrievalSet(self.name, self.root, self.layout, self.images[:n], [self.captions[j] for j in keep],
                            [self.caption_image[j] for j in keep], dict(self.skipped))


def decode_ref(ref: ImageRef):
    """ImageRef → RGB ``PIL.Image`` decoded the one way every stage does (grain.data.decode_image:
    pixel limit before decoding, EXIF orientation, RGB). Errors are EvalSetError naming the file."""
    from grain.data import ImageDecodeError, decode_image

    try:
        return decode_image(ref.read_bytes(), name=ref.where)
    except ImageDecodeError as e:
        raise EvalSetError(f"unreadable image: {e}") from e


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise EvalSetError(f"{path}: not a readable JSON file ({e})") from e


def load_descriptors(path: str, classnames: list[str]) -> dict[str, list[str]]:
    """Read ``{class name: [descriptor, ...]}``; every class must be present with a list of strings."""
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise EvalSetError(f"{path}: expected a JSON object {{class name: [descriptor, ...]}}")
    missing = [c for c in classnames if c not in raw]
    if missing:
        raise EvalSetError(f"{path}: no descriptors for {len(missing)} class(es), e.g. {missing[:5]}")
    out = {}
    for c in classnames:
        v = raw[c]
        if not isinstance(v, list) or not all(isinstance(d, str) for d in v):
            raise EvalSetError(f"{path}: descriptors of {c!r} must be a list of strings")
        out[c] = [d.strip() for d in v if d.strip()]
    return out


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [ln.strip() for ln in f if ln.strip()]


def load_imagefolder(root: str, name: str | None = None) -> ClassificationSet:
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not folders:
        raise EvalSetError(f"{root}: no class folders (ImageFolder layout: ROOT/<class>/<images>)")
    names_path = os.path.join(root, "classes.json")
    mapping = _read_json(names_path) if os.path.exists(names_path) else {}
    if not isinstance(mapping, dict):
        raise EvalSetError(f"{names_path}: expected a JSON object {{folder name: class name}}")
    classnames = [str(mapping.get(d, d.replace("_", " "))) for d in folders]
    images, labels = [], []
    for y, d in enumerate(folders):
        files = sorted(f for f in os.listdir(os.path.join(root, d)) if f.lower().endswith(IMAGE_EXTS))
        if not files:
            raise EvalSetError(f"{os.path.join(root, d)}: class folder has no images ({', '.join(IMAGE_EXTS)})")
        for f in files:
            p = os.path.join(root, d, f)
            images.append(ImageRef(where=p, path=p))
            labels.append(y)
    desc_path = os.path.join(root, "descriptors.json")
    descriptors = load_descriptors(desc_path, classnames) if os.path.exists(desc_path) else None
    tpl_path = os.path.join(root, "templates.txt")
    templates = _read_lines(tpl_path) if os.path.exists(tpl_path) else None
    return ClassificationSet(name or _default_name(root), root, "imagefolder", classnames, images, labels,
                             descriptors, templates)


def _tar_samples(tar_path: str, max_member_bytes: int = MAX_MEMBER_BYTES,
                 max_tar_bytes: int = MAX_TAR_BYTES) -> dict[str, dict[str, bytes]]:
    """Group a webdataset tar's members by key: {key: {ext: bytes}} (extension = text after the first dot),
    read with the project's one tar reader (grain.common.webdataset); members other than files are skipped.
    A member larger than ``max_member_bytes``, or one that takes the tar's members past ``max_tar_bytes``
    in all, is an EvalSetError naming it (both checked from the header, before reading it)."""
    from grain.common.webdataset import iter_members

    samples: dict[str, dict[str, bytes]] = {}
    total = 0
    try:
        with open(tar_path, "rb") as f:
            for m in iter_members(f):
                if m.kind != "file" or not m.ext:
                    continue
                if m.size > max_member_bytes:
                    raise EvalSetError(f"{tar_path}::{m.name}: member of {m.size} bytes exceeds the "
                                       f"{max_member_bytes}-byte limit per member (max_member_bytes); not read")
                total += m.size
                if total > max_tar_bytes:
                    raise EvalSetError(f"{tar_path}: its members pass the {max_tar_bytes}-byte limit per tar "
                                       f"(max_tar_bytes) at {m.name}; split the shard or raise the limit")
                samples.setdefault(m.key, {})[m.ext] = m.read()
    except (OSError, EOFError, tarfile.TarError) as e:
        raise EvalSetError(f"{tar_path}: not a readable tar shard ({e})") from e
    return samples


def load_clip_benchmark_wds(root: str, name: str | None = None, split: str = "test",
                            max_member_bytes: int = MAX_MEMBER_BYTES, max_tar_bytes: int = MAX_TAR_BYTES):
    tars = sorted(glob.glob(os.path.join(root, split, "*.tar")), key=_natural_key)
    if not tars:
        raise EvalSetError(f"{os.path.join(root, split)}: no .tar shards (clip_benchmark webdataset layout)")
    type_path = os.path.join(root, "dataset_type.txt")
    dtype = _read_lines(type_path)[0].lower() if os.path.exists(type_path) else "classification"
    name = name or _default_name(root)
    img_exts = ("webp", "png", "jpg", "jpeg")
    if dtype == "retrieval":
        images, captions, cap_img, skipped = [], [], [], {}
        for t in tars:
            for key, s in _tar_samples(t, max_member_bytes, max_tar_bytes).items():
                ext = next((e for e in img_exts if e in s), None)
                caps = [c.strip() for c in s.get("txt", b"").decode("utf-8", "replace").splitlines() if c.strip()]
                if ext is None or not caps:
                    skipped["no_image_or_caption"] = skipped.get("no_image_or_caption", 0) + 1
                    continue
                images.append(ImageRef(where=f"{t}::{key}.{ext}", data=s[ext]))
                captions += caps
                cap_img += [len(images) - 1] * len(caps)
        return RetrievalSet(name, root, "clip_benchmark_wds", images, captions, cap_img, skipped)
    cls_path = os.path.join(root, "classnames.txt")
    if not os.path.exists(cls_path):
        raise EvalSetError(f"{cls_path}: missing (a clip_benchmark classification set needs classnames.txt)")
    classnames = _read_lines(cls_path)
    images, labels = [], []
    for t in tars:
        for key, s in _tar_samples(t, max_member_bytes, max_tar_bytes).items():
            ext = next((e for e in img_exts if e in s), None)
            if ext is None or "cls" not in s:
                raise EvalSetError(f"{t}::{key}: sample lacks an image ({'/'.join(img_exts)}) or a .cls label")
            try:
                y = int(s["cls"].decode().strip())
            except ValueError as e:
                raise EvalSetError(f"{t}::{key}.cls: label is not an integer") from e
            if not 0 <= y < len(classnames):
                raise EvalSetError(f"{t}::{key}.cls: label {y} outside the {len(classnames)} classes of {cls_path}")
            images.append(ImageRef(where=f"{t}::{key}.{ext}", data=s[ext]))
            labels.append(y)
    tpl_path = os.path.join(root, "zeroshot_classification_templates.txt")
    templates = _read_lines(tpl_path) if os.path.exists(tpl_path) else None
    desc_path = os.path.join(root, "descriptors.json")
    descriptors = load_descriptors(desc_path, classnames) if os.path.exists(desc_path) else None
    return ClassificationSet(name, root, "clip_benchmark_wds", classnames, images, labels, descriptors, templates)


def load_annotated_shards(path: str, name: str | None = None, captions: str = "both") -> RetrievalSet:
    """Retrieval set from annotated shards; ``captions`` ∈ {"both", "source", "mllm"}."""
    from grain.common import storage
    from grain.common.schema import STATUS_OK, read_table

    if captions not in ("both", "source", "mllm"):
        raise ValueError(f"captions must be 'both', 'source' or 'mllm', got {captions!r}")
    files = storage.list_shards(path)[0]  # committed shards only where markers exist
    if not files:
        raise EvalSetError(f"{path}: no .parquet shards")
    fields = {"both": ("source_caption", "mllm_caption"), "source": ("source_caption",), "mllm": ("mllm_caption",)}[captions]
    images, caps, cap_img, skipped = [], [], [], {}
    for f in files:
        try:
            table = read_table(f, validate=True)
        except Exception as e:
            raise EvalSetError(f"{f}: not a valid annotated shard ({e})") from e
        for row in table.select(["key", "image", "status", *fields]).to_pylist():
            if row["status"] != STATUS_OK:
                skipped[f"status_{row['status']}"] = skipped.get(f"status_{row['status']}", 0) + 1
                continue
            texts = list(dict.fromkeys(row[c].strip() for c in fields if row.get(c) and row[c].strip()))
            if not texts:
                skipped["no_caption"] = skipped.get("no_caption", 0) + 1
                continue
            images.append(ImageRef(where=f"{f}::{row['key']}", data=row["image"]))
            caps += texts
            cap_img += [len(images) - 1] * len(texts)
    return RetrievalSet(name or _default_name(path), path, "annotated_shards", images, caps, cap_img, skipped)


def detect_layout(path: str) -> str:
    """``imagefolder`` | ``clip_benchmark_wds`` | ``annotated_shards``; EvalSetError when none fits."""
    if os.path.isfile(path):
        if path.endswith(".parquet"):
            return "annotated_shards"
        raise EvalSetError(f"{path}: a file must be a .parquet shard; give a folder for other layouts")
    if not os.path.isdir(path):
        raise EvalSetError(f"{path}: no such data set folder or file")
    if glob.glob(os.path.join(path, "test", "*.tar")) or os.path.exists(os.path.join(path, "classnames.txt")):
        return "clip_benchmark_wds"
    if glob.glob(os.path.join(path, "*.parquet")):
        return "annotated_shards"
    return "imagefolder"


def load_evalset(path: str, name: str | None = None, captions: str = "both"):
    """Load any supported layout (see module docstring); ``name`` defaults to the folder name."""
    path = os.path.abspath(os.path.expanduser(path))
    layout = detect_layout(path)
    if layout == "imagefolder":
        return load_imagefolder(path, name)
    if layout == "clip_benchmark_wds":
        return load_clip_benchmark_wds(path, name)
    return load_annotated_shards(path, name, captions)


def _default_name(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    return base[: -len(".parquet")] if base.endswith(".parquet") else base


def _natural_key(p: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(p))]
