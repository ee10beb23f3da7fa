"""The annotated-shard schema: the contract between annotation, training, evaluation and the benchmark.

One Parquet file per input shard, one row per input image (docs/method.md §1.5). Nothing is dropped: an
image that could not be processed is an *error row* (``status != "ok"``, ``error`` says why).

Box frame (docs/method.md §1.4): ``boxes`` are ``[x1, y1, x2, y2]`` normalised to
[0, 1] in the *decoded* image (EXIF orientation applied, converted to RGB), whose size is
``image_width`` × ``image_height``. Training squash-resizes, which leaves normalised coordinates
unchanged, so the trainer only converts xyxy → cxcywh.

Columns (version 1)
-------------------
key              string, not null    sample key (img2dataset's ``key``), unique within a run
source           string, not null    where the sample came from: ``<input shard>::<member or row>``
url              string              original URL when known (img2dataset json), else null
image            binary              encoded image bytes as read (ok rows); null on error rows
image_width      int32               decoded width in pixels (null when the image did not decode)
image_height     int32               decoded height in pixels
source_caption   string              alt-text as shipped; null when missing or undecodable
mllm_caption     string              dense caption written by the MLLM (null on error rows)
descriptions     list<string>        ≤ 10 short visual descriptions (may be empty on ok rows)
boxes            list<list<float32>> ≤ 50 normalised xyxy boxes, each of length 4, sorted by score
box_scores       list<float32>       detector score per box (same length as ``boxes``)
box_desc_index   list<int32>         index into ``descriptions`` of each box's label
status           string, not null    one of STATUSES
error            string              human-readable reason (required when status != "ok")
flags            list<string>        non-fatal notes, e.g. "missing_source_caption"
mllm_model       string              model id (and revision) that wrote captions/descriptions
detector_model   string              model id that produced the boxes

The file's key-value metadata carries ``grain.schema_version``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = "1"
MAX_DESCRIPTIONS = 10
MAX_BOXES = 50

STATUS_OK = "ok"
# Error statuses: what went wrong, coarse enough to count in a table; ``error`` holds the detail.
STATUSES = (
    STATUS_OK,
    "decode_error",  # bytes are not a decodable image (truncated, zero bytes, not an image)
    "too_large",  # over the pixel limit (decompression bomb) or over the byte limit
    "too_small",  # decoded but below the minimum side (e.g. 1x1)
    "input_error",  # the input record itself is unusable (no image member, unsafe name, bad shard)
    "download_error",  # img2dataset could not fetch the URL
    "model_error",  # the MLLM or detector call failed for this row
)

# Non-fatal flags a row may carry.
FLAG_MISSING_SOURCE_CAPTION = "missing_source_caption"
FLAG_UNDECODABLE_SOURCE_CAPTION = "undecodable_source_caption"
FLAG_TRUNCATED_SOURCE_CAPTION = "truncated_source_caption"
FLAG_NO_DESCRIPTIONS = "no_descriptions"
FLAG_NO_BOXES = "no_boxes"

SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("image", pa.binary()),
        pa.field("image_width", pa.int32()),
        pa.field("image_height", pa.int32()),
        pa.field("source_caption", pa.string()),
        pa.field("mllm_caption", pa.string()),
        pa.field("descriptions", pa.list_(pa.string())),
        pa.field("boxes", pa.list_(pa.list_(pa.float32(), 4))),
        pa.field("box_scores", pa.list_(pa.float32())),
        pa.field("box_desc_index", pa.list_(pa.int32())),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("flags", pa.list_(pa.string())),
        pa.field("mllm_model", pa.string()),
        pa.field("detector_model", pa.string()),
    ],
    metadata={b"grain.schema_version": SCHEMA_VERSION.encode()},
)

COLUMNS = tuple(SCHEMA.names)
_LIST_DEFAULTS = ("descriptions", "boxes", "box_scores", "box_desc_index", "flags")


class SchemaError(ValueError):
    """A shard or row does not follow the annotated-shard schema; the message names what and where."""


def empty_row(key: str, source: str) -> dict:
    """A row dict with every column present (lists empty, the rest None); fill in and pass to ``to_table``."""
    row = {name: None for name in COLUMNS}
    for name in _LIST_DEFAULTS:
        row[name] = []
    row.update(key=key, source=source, status=STATUS_OK)
    return row


def descriptions_and_index(box_descriptions: Sequence[str]) -> tuple[list[str], list[int]]:
    """Each box's description → (the row's ``descriptions``: unique, in first-seen order; its
    ``box_desc_index``): the one way the corpus builders and fixtures turn labelled boxes into a row."""
    descriptions = list(dict.fromkeys(box_descriptions))
    position = {d: i for i, d in enumerate(descriptions)}
    return descriptions, [position[d] for d in box_descriptions]


def error_row(key: str, source: str, status: str, error: str, **extra) -> dict:
    """An error row: ``status`` from STATUSES (not "ok") and a non-empty human-readable ``error``."""
    if status == STATUS_OK or status not in STATUSES:
        raise ValueError(f"error_row needs an error status from {STATUSES[1:]}, got {status!r}")
    row = empty_row(key, source)
    row.update(extra)
    row.update(status=status, error=error or status, image=None)
    return row


def to_table(rows: Sequence[Mapping]) -> pa.Table:
    """Rows (dicts with the schema's columns; missing columns default to null/empty) → an Arrow table."""
    cols = {}
    for name in COLUMNS:
        default = [] if name in _LIST_DEFAULTS else None
        vals = [r.get(name, default) for r in rows]
        if name in _LIST_DEFAULTS:
            vals = [default if v is None else v for v in vals]
        if name == "boxes":
            vals = [[[float(c) for c in b] for b in v] for v in vals]
        cols[name] = vals
    return pa.Table.from_pydict(cols, schema=SCHEMA)


def validate_table(table: pa.Table, where: str = "<table>") -> None:
    """Raise SchemaError (naming ``where``, the row's key and the rule) unless ``table`` follows the schema.

    Checks column names and types, status values, ok rows' invariants (image bytes, list lengths,
    box frame and ordering, description indices) and error rows' reasons.
    """
    missing = [n for n in COLUMNS if n not in table.column_names]
    if missing:
        raise SchemaError(f"{where}: missing columns {missing} (schema version {SCHEMA_VERSION})")
    for f in SCHEMA:
        got = table.schema.field(f.name).type
        if got != f.type:
            raise SchemaError(f"{where}: column {f.name!r} has type {got}, expected {f.type}")
    for i, row in enumerate(table.select(list(COLUMNS)).to_pylist()):
        _validate_row(row, f"{where} row {i} (key={row.get('key')!r})")


def _validate_row(row: Mapping, where: str) -> None:
    if not row["key"]:
        raise SchemaError(f"{where}: empty key")
    status = row["status"]
    if status not in STATUSES:
        raise SchemaError(f"{where}: unknown status {status!r}; expected one of {STATUSES}")
    if status != STATUS_OK:
        if not row["error"]:
            raise SchemaError(f"{where}: error row without an error reason")
        return
    if not row["image"]:
        raise SchemaError(f"{where}: ok row without image bytes")
    if not row["image_width"] or not row["image_height"] or row["image_width"] <= 0 or row["image_height"] <= 0:
        raise SchemaError(f"{where}: ok row without a positive image size")
    descs = row["descriptions"] or []
    if len(descs) > MAX_DESCRIPTIONS:
        raise SchemaError(f"{where}: {len(descs)} descriptions > {MAX_DESCRIPTIONS}")
    boxes, scores, idx = row["boxes"] or [], row["box_scores"] or [], row["box_desc_index"] or []
    if not (len(boxes) == len(scores) == len(idx)):
        raise SchemaError(f"{where}: boxes/box_scores/box_desc_index lengths differ ({len(boxes)}, {len(scores)}, {len(idx)})")
    if len(boxes) > MAX_BOXES:
        raise SchemaError(f"{where}: {len(boxes)} boxes > {MAX_BOXES}")
    for b in boxes:
        x1, y1, x2, y2 = b
        if not all(math.isfinite(c) and -1e-6 <= c <= 1 + 1e-6 for c in b) or x2 < x1 or y2 < y1:
            raise SchemaError(f"{where}: box {b} is not normalised xyxy in [0, 1] with x1<=x2, y1<=y2")
    if any(not 0 <= j < len(descs) for j in idx):
        raise SchemaError(f"{where}: box_desc_index {idx} out of range for {len(descs)} descriptions")
    if any(scores[k] < scores[k + 1] for k in range(len(scores) - 1)):
        raise SchemaError(f"{where}: boxes are not sorted by descending score")


def write_table(table: pa.Table, path: str, filesystem=None) -> None:
    """Write one shard atomically on a local path (temp file + rename); schema metadata is kept."""
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **SCHEMA.metadata})
    if filesystem is None:
        from grain.common.storage import atomic_open  # storage is the heavier import (fsspec)

        with atomic_open(path, commit=False) as fh:
            pq.write_table(table, fh)
    else:
        pq.write_table(table, path, filesystem=filesystem)


def read_table(path: str, validate: bool = True, filesystem=None) -> pa.Table:
    """Read one shard (no pickle involved: Parquet only) and optionally validate it."""
    table = pq.read_table(path, filesystem=filesystem)
    if validate:
        version = (table.schema.metadata or {}).get(b"grain.schema_version", b"?").decode()
        if version != SCHEMA_VERSION:
            raise SchemaError(f"{path}: schema version {version!r}, this code reads {SCHEMA_VERSION!r}")
        validate_table(table, where=path)
    return table


def summarise(tables: Iterable[pa.Table]) -> dict:
    """Counts per status over tables (for manifests and progress tables)."""
    counts: dict[str, int] = {}
    for t in tables:
        for s in t.column("status").to_pylist():
            counts[s] = counts.get(s, 0) + 1
    return counts
