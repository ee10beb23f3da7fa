"""Security defaults (fast): nothing we load executes code; image decoding is bounded.

- A checkpoint carrying a malicious pickle (its ``__reduce__`` runs a shell command) is refused by
  grain.checkpoint.load_checkpoint and by the trainer's state loading (trainers.state.load_state),
  and the command never runs. A control load with ``weights_only=False`` proves the payload is live.
- Shards are Parquet only: a pickle saved under a shard name is refused by grain.common.schema.read_table.
- Every ``torch.load`` in the project, however imported (``from torch import load``, an alias,
  ``torch.serialization.load``), passes ``weights_only=True``; no ``pickle.load(s)``/``np.load(allow_pickle)``.
- grain.data.decode_image checks the pixel limit from the header, before any pixel is decoded.
"""

from __future__ import annotations

import ast
import io
import os
import pickle

import pyarrow as pa
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
    from grain.common.schema import read_table

    marker = tmp_path / "pwned"
    with open(tmp_path / "00000.parquet", "wb") as f:
        pickle.dump(_Evil(str(marker)), f)
    with pytest.raises(pa.ArrowInvalid, match="Parquet magic bytes not found"):  # pyarrow's own refusal
        read_table(str(tmp_path / "00000.parquet"))
    assert not marker.exists()


TORCH_LOADS = {"torch.load", "torch.serialization.load"}
# Calls that unpickle whatever the file holds: refused outright (module-qualified, aliases resolved).
UNPICKLERS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "cloudpickle.load",
              "cloudpickle.loads", "dill.load", "dill.loads", "joblib.load", "pandas.read_pickle", "torch.jit.load"}


def _aliases(tree) -> dict[str, str]:
    """Local name → the dotted name it stands for: ``import torch as t`` → t: torch,
    ``from torch import load as L`` → L: torch.load, ``import numpy as np`` → np: numpy."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    out[a.asname] = a.name
                else:
                    out.setdefault(a.name.split(".")[0], a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _dotted(f, aliases: dict[str, str]) -> str:
    """The call target as a dotted name with its first part resolved through ``aliases``."""
    parts = []
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if not isinstance(f, ast.Name):
        return ""
    return ".".join([aliases.get(f.id, f.id), *reversed(parts)])


def load_offenders(source: str, where: str) -> tuple[list[str], int]:
    """(problems, number of torch loads seen) in one module's source."""
    tree = ast.parse(source, where)
    aliases, offenders, loads = _aliases(tree), [], 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name, kw = _dotted(node.func, aliases), {k.arg: k.value for k in node.keywords}
        at = f"{where}:{node.lineno}"
        if name in TORCH_LOADS:
            loads += 1
            v = kw.get("weights_only")
            if not (isinstance(v, ast.Constant) and v.value is True):
                offenders.append(f"{at}: {name} without weights_only=True")
        elif name in UNPICKLERS:
            offenders.append(f"{at}: {name}")
        elif name == "numpy.load":
            v = kw.get("allow_pickle", ast.Constant(False))
            if None in kw or not (isinstance(v, ast.Constant) and v.value is False):  # **kw or a non-False value
                offenders.append(f"{at}: numpy.load with allow_pickle not provably False")
    return offenders, loads


@pytest.mark.parametrize("source", [
    "import torch\ntorch.load(p)",
    "import torch\ntorch.load(p, weights_only=False)",
    "import torch\ntorch.load(p, **kw)",
    "import torch as t\nt.load(p)",
    "from torch import load\nload(p)",
    "from torch import load as L\nL(p)",
    "import torch\ntorch.serialization.load(p)",
    "from torch.serialization import load\nload(p)",
    "import pickle\npickle.load(f)",
    "import pickle as pk\npk.loads(b)",
    "from pickle import loads\nloads(b)",
    "import numpy as np\nnp.load(p, allow_pickle=True)",
    "from numpy import load\nload(p, allow_pickle=flag)",
])
def test_load_scan_catches_every_spelling(source):
    assert load_offenders(source, "m.py")[0], source


def test_load_scan_accepts_safe_loads():
    ok = "import torch as t\nimport numpy as np\nt.load(p, weights_only=True)\nnp.load(p)\nnp.load(p, allow_pickle=False)"
    assert load_offenders(ok, "m.py") == ([], 1)


def test_every_load_is_weights_only_and_nothing_unpickles():
    offenders, loads = [], 0
    for pkg in PACKAGES:
        for d, _, files in os.walk(os.path.join(ROOT, pkg)):
            for fn in (f for f in files if f.endswith(".py")):
                path = os.path.join(d, fn)
                with open(path) as fh:
                    found, n = load_offenders(fh.read(), os.path.relpath(path, ROOT))
                offenders += found
                loads += n
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
