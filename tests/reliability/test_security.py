"""Security defaults (fast): nothing we load executes code; image decoding is bounded.

- A checkpoint carrying a malicious pickle (its ``__reduce__`` runs a shell command) is refused by
  grain.checkpoint.load_checkpoint and by the trainer's state loading (trainers.state.load_state),
  and the command never runs. A control load with ``weights_only=False`` proves the payload is live.
- Shards are Parquet only: a pickle saved under a shard name is refused by grain.schema.read_table.
- Every ``torch.load`` in the project passes ``weights_only=True``; no ``pickle.load``/``np.load(allow_pickle)``.
- grain.data.decode_image checks the pixel limit from the header, before any pixel is decoded.
"""

from __future__ import annotations

import ast
import io
import os
import pickle

import pytest
import torch
from PIL import Image

PACKAGES = ("grain", "annotators", "trainers", "evaluation", "flows", "infra", "benchmarks")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_file(path, marker, payload_key="config"):
    from grain.checkpoint import FORMAT

    torch.save({"format": FORMAT, payload_key: _Evil(marker), "state_dict": {}}, path)


def test_malicious_pickle_is_live(tmp_path):
    """Control: the payload does run when loaded unsafely (so the refusals below mean something)."""
    marker = tmp_path / "pwned"
    _evil_file(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_load_checkpoint_refuses_malicious_pickle(tmp_path):
    from grain.checkpoint import load_checkpoint

    marker = tmp_path / "pwned"
    _evil_file(tmp_path / "evil.pt", marker)
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(str(tmp_path / "evil.pt"))
    assert not marker.exists()


def test_trainer_state_refuses_malicious_pickle(tmp_path):
    from trainers.state import STATE_FILE, load_state

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "checkpoint_000001"
    ckpt.mkdir()
    torch.save({"model": {}, "step": 3, "rng": _Evil(str(marker))}, ckpt / STATE_FILE)
    with pytest.raises(pickle.UnpicklingError):
        load_state(str(ckpt))
    assert not marker.exists()


def test_shards_are_parquet_only(tmp_path):
    from grain.schema import read_table

    marker = tmp_path / "pwned"
    with open(tmp_path / "00000.parquet", "wb") as f:
        pickle.dump(_Evil(str(marker)), f)
    with pytest.raises(Exception, match="(?i)parquet"):
        read_table(str(tmp_path / "00000.parquet"))
    assert not marker.exists()


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f"{getattr(f.value, 'id', '?')}.{f.attr}" if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            yield name, {k.arg: k.value for k in node.keywords}, node


def test_every_load_is_weights_only_and_nothing_unpickles():
    offenders, loads = [], 0
    for pkg in PACKAGES:
        for d, _, files in os.walk(os.path.join(ROOT, pkg)):
            for fn in (f for f in files if f.endswith(".py")):
                path = os.path.join(d, fn)
                for name, kw, node in _calls(ast.parse(open(path).read(), path)):
                    where = f"{os.path.relpath(path, ROOT)}:{node.lineno}"
                    if name == "torch.load":
                        loads += 1
                        v = kw.get("weights_only")
                        if not (isinstance(v, ast.Constant) and v.value is True):
                            offenders.append(f"{where}: torch.load without weights_only=True")
                    elif name in ("pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads", "dill.load"):
                        offenders.append(f"{where}: {name}")
                    elif name == "np.load" and isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value:
                        offenders.append(f"{where}: np.load(allow_pickle=True)")
    assert loads >= 2, "the scan found no torch.load at all: it is not looking at the right files"
    assert not offenders, offenders


def test_decode_image_pixel_limit_is_checked_before_decoding(monkeypatch):
    from annotators.badinputs import png_bomb
    from grain.data import ImageTooLarge, decode_image

    buf = io.BytesIO()
    Image.new("RGB", (1200, 1000)).save(buf, format="JPEG")
    loads = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: loads.append(self.size) or real_load(self))
    with pytest.raises(ImageTooLarge, match="1200×1000"):
        decode_image(buf.getvalue(), max_pixels=1_000_000, name="big.jpg")
    assert loads == []  # refused from the header: no pixel data was read
    assert decode_image(buf.getvalue(), max_pixels=1_200_000).size == (1200, 1000)
    with pytest.raises(ImageTooLarge):  # a 30000² bomb is refused even under a generous limit
        decode_image(png_bomb(30000, 30000), max_pixels=10**9)
