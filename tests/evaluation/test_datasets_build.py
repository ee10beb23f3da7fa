"""`grain data build` on a tiny subset (npm packages reused from the real cache; network not needed)."""

import json
import os

import pytest
from PIL import Image

from evaluation import datasets as D
from evaluation.emoji import descriptors_for, EmojiInfo, norm_codepoint
from evaluation.evalsets import decode_ref, load_evalset
from grain.common.cache import grain_cache

REAL_NM = os.path.join(grain_cache(), "npm", "node_modules")
NEEDED = ("emoji-datasource", "emoji-datasource-google", "emojibase-data", "flag-icons")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    if not all(os.path.exists(os.path.join(REAL_NM, p, "package.json")) for p in NEEDED):
        pytest.skip("emoji/flag npm packages not installed (run `grain data build` once)")
    pins = D.pinned_versions()
    for p in NEEDED:  # otherwise `npm ci` would run on (and empty) the shared node_modules linked below
        with open(os.path.join(REAL_NM, p, "package.json")) as fh:
            if json.load(fh).get("version") != pins[p]:
                pytest.skip(f"{p} in {REAL_NM} is not the pinned {pins[p]} (run `grain data build` once)")
    os.makedirs(tmp_path / "npm")
    os.symlink(REAL_NM, tmp_path / "npm" / "node_modules")
    monkeypatch.setenv("GRAIN_CACHE", str(tmp_path))
    return tmp_path


def test_codepoint_alignment_and_descriptors():
    assert norm_codepoint("1F636-200D-1F32B-FE0F") == "1f636-200d-1f32b"
    e = EmojiInfo("1f436", "dog face", "Animals & Nature", "animal-mammal", ["animal", "dog", "face", "pet", "Pet", "dog face"])
    assert descriptors_for(e) == ["animal", "pet"]  # words of the name and duplicates removed


def test_build_small_emoji_and_flags_sets_cached(cache, capsys):
    assert D.main(["build", "--sets", "emoji-google-animals", "flags", "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert "built" in out
    ds = load_evalset(str(cache / "datasets" / "emoji-google-animals"))
    assert len(ds.classnames) == 5 and len(ds.images) == 5 and set(ds.descriptors) == set(ds.classnames)
    img = decode_ref(ds.images[0])
    assert img.size == (64, 64) and img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255)  # transparent corner composited on white
    flags = load_evalset(str(cache / "datasets" / "flags"))
    assert len(flags.classnames) <= 5 and all(flags.descriptors[c] for c in flags.classnames)
    assert Image.open(flags.images[0].path).size == (128, 96)
    marker = json.load(open(cache / "datasets" / "flags" / D.MARKER))
    assert marker["limit"] == 5 and marker["spec_hash"] == D.spec_hash("flags", 5)
    # second call: cached, nothing rebuilt
    mtime = os.path.getmtime(cache / "datasets" / "flags" / D.MARKER)
    assert D.main(["build", "--sets", "flags", "--limit", "5"]) == 0
    assert "cached" in capsys.readouterr().out
    assert os.path.getmtime(cache / "datasets" / "flags" / D.MARKER) == mtime


def test_unknown_set_name_is_rejected(cache, capsys):
    assert D.main(["build", "--sets", "emoji-apple-animals"]) == 2
    assert "emoji-apple-animals" in capsys.readouterr().err
