"""The worker's data path: shard rows read by row group, turned into samples and collated ahead of
the step (docs/method.md §4).

Row → sample is ``grain.data.sample_from_row`` (caption drawn per (seed, epoch, key), top-k boxes by
score); a sample is ``grain.data.make_batch``'s input, and the xyxy → cxcywh conversion is
make_batch's: squash-resize keeps normalised coordinates, so no other mapping exists.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq

# What a sample needs; "status" is already filtered by the index, "image_*" sizes are not needed.
READ_COLUMNS = ["key", "image", "source_caption", "mllm_caption", "descriptions", "boxes", "box_scores", "box_desc_index"]


def collate_trimmed(samples: list[dict], model_cfg) -> dict:
    """``grain.data.make_batch`` with the description tokens trimmed to their true length: the
    descriptions (a few words each) cost their true length, not 32/77 (grain.tokenizer.trim_token_padding)."""
    from grain.data import make_batch
    from grain.tokenizer import trim_token_padding

    batch = make_batch(samples, model_cfg)
    batch["target_desc_tokens"] = trim_token_padding(batch["target_desc_tokens"])
    return batch


class ShardReader:
    """Reads planned rows (file, row group, row) from the shards, keeping the last row groups cached.

    ``plan.py`` walks a window of ≤ ``shuffle_window`` units at a time, so caching that many row
    groups means each is read about once per epoch.
    """

    def __init__(self, root: str, files: list[str], cache_groups: int = 8):
        from grain.common import storage

        self.fs, _ = storage.pyarrow_fs(root)
        self.files = files
        self.cache_groups = max(1, cache_groups)
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def _group(self, fi: int, rg: int) -> list[dict]:
        with self._lock:
            if (fi, rg) in self._cache:
                self._cache.move_to_end((fi, rg))
                return self._cache[(fi, rg)]
        pf = pq.ParquetFile(self.files[fi], filesystem=self.fs)
        rows = pf.read_row_group(rg, columns=READ_COLUMNS).to_pylist()
        with self._lock:
            self._cache[(fi, rg)] = rows
            while len(self._cache) > self.cache_groups:
                self._cache.popitem(last=False)
        return rows

    def read(self, batch_rows: np.ndarray) -> list[dict]:
        """Rows [B, 3] of (file, row group, row) → row dicts, in the same order."""
        return [self._group(int(fi), int(rg))[int(r)] for fi, rg, r in batch_rows]


class BatchStream:
    """Iterates ``(batch, keys, stats)`` over planned row batches; a background thread reads, decodes
    (thread pool, order preserved) and collates up to ``prefetch`` batches ahead of training.

    A row that fails to decode is replaced by a copy of the batch's first good sample (every rank must
    keep the same batch size for DDP and the cross-worker L_ic gather) and counted in
    ``stats["skipped_decode"]``; the keys list marks it with a ``!`` prefix.
    """

    def __init__(self, batches, reader: ShardReader, to_sample, collate, threads: int = 4, prefetch: int = 2):
        self.batches = batches
        self.reader = reader
        self.to_sample = to_sample
        self.collate = collate
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="grain-decode")
        self.q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, daemon=True, name="grain-batches")
        self._thread.start()

    def _safe(self, row):
        try:
            return self.to_sample(row), None
        except ValueError as e:
            return None, str(e)

    def _build(self, batch_rows):
        t0 = time.perf_counter()
        rows = self.reader.read(batch_rows)
        results = list(self.pool.map(self._safe, rows))
        good = next((s for s, _ in results if s is not None), None)
        if good is None:
            raise RuntimeError(f"every row of a batch failed to decode, e.g. {results[0][1]}")
        samples, keys, errors = [], [], []
        for (s, err), row in zip(results, rows):
            samples.append(s if s is not None else good)
            keys.append(row["key"] if s is not None else "!" + row["key"])
            if err:
                errors.append(err)
        batch = self.collate([{k: v for k, v in s.items() if k != "key"} for s in samples])
        return batch, keys, {"skipped_decode": len(errors), "errors": errors, "build_s": time.perf_counter() - t0}

    def _produce(self):
        try:
            for b in self.batches:
                if self._stop.is_set():
                    return
                item = self._build(b)
                while not self._stop.is_set():
                    try:
                        self.q.put(item, timeout=0.5)
                        break
                    except queue.Full:
                        continue
            self.q.put(None)
        except BaseException as e:  # surfaced to the training loop, which raises it
            self.q.put(e)

    def __iter__(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self):
        self._stop.set()
        self.pool.shutdown(wait=False, cancel_futures=True)
