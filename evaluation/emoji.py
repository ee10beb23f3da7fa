"""Emoji metadata and fine-grained emoji evaluation sets (emoji in several styles, from npm packages).

Sources (npm packages installed under ``$GRAIN_CACHE/npm/node_modules`` by ``grain data build``):
- ``emoji-datasource/emoji.json``: name, category, subcategory, unified code point, which styles exist;
- ``emoji-datasource-{google,twitter}/img/<style>/64/<code point>.png``: 64-px RGBA PNGs;
- ``openmoji/color/svg/<CODE POINT>.svg`` (optional style, rendered with cairosvg in safe mode);
- ``emojibase-data/en/data.json``: CLDR label and keywords ("dog face": animal, dog, pet, puppy).
Styles are aligned by code point: lower case, ``fe0f`` (variation selector) dropped.

Class name = the CLDR label (lower case; falls back to emoji-datasource's name); descriptors = the
CLDR keywords that are not just a word of the class name (a descriptor repeating the name adds
nothing). Images are composited on white (the emoji's designed background) and saved as RGB PNG.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass, field

STYLES = ("google", "twitter", "openmoji")

# subset name -> predicate over an EmojiInfo. Class counts (both raster styles present): `grain data build` prints them.
SUBSETS = {
    "animals": lambda e: e.category == "Animals & Nature" and e.subcategory.startswith("animal-"),
    "plants": lambda e: e.category == "Animals & Nature" and e.subcategory.startswith("plant-"),
    "food": lambda e: e.category == "Food & Drink",
    "faces": lambda e: e.category == "Smileys & Emotion" and e.subcategory.startswith("face-"),
    "transport": lambda e: e.subcategory.startswith("transport-"),
    "clocks": lambda e: e.subcategory == "time" and "clock" in e.name.lower(),
    "flags": lambda e: e.subcategory == "country-flag",
}


@dataclass
class EmojiInfo:
    """One emoji. ``key``: normalised code point (``1f436``); ``images``: style → file path."""

    key: str
    name: str
    category: str
    subcategory: str
    keywords: list[str] = field(default_factory=list)
    images: dict[str, str] = field(default_factory=dict)


def norm_codepoint(code: str) -> str:
    """``1F636-200D-1F32B-FE0F`` → ``1f636-200d-1f32b`` (the key every style agrees on)."""
    return "-".join(p for p in code.lower().split("-") if p and p != "fe0f")


def load_emoji_metadata(node_modules: str) -> dict[str, EmojiInfo]:
    """Per normalised code point: name, category, subcategory, CLDR keywords, per-style image paths.

    Only styles whose file exists on disk are listed. Raises FileNotFoundError naming the missing
    metadata file when the npm packages are not installed.
    """
    ds_path = os.path.join(node_modules, "emoji-datasource", "emoji.json")
    eb_path = os.path.join(node_modules, "emojibase-data", "en", "data.json")
    for p in (ds_path, eb_path):
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p}: missing; run `grain data build` (npm install of the emoji packages)")
    with open(ds_path, encoding="utf-8") as f:
        ds = json.load(f)
    with open(eb_path, encoding="utf-8") as f:
        eb = {norm_codepoint(x["hexcode"]): x for x in json.load(f)}
    openmoji_dir = os.path.join(node_modules, "openmoji", "color", "svg")
    openmoji = {}
    if os.path.isdir(openmoji_dir):
        openmoji = {norm_codepoint(f[:-4]): os.path.join(openmoji_dir, f) for f in os.listdir(openmoji_dir) if f.endswith(".svg")}
    out: dict[str, EmojiInfo] = {}
    for x in ds:
        key = norm_codepoint(x["unified"])
        base = eb.get(key, {})
        name = (base.get("label") or x.get("name") or key).strip().lower()
        info = EmojiInfo(key, name, x.get("category", ""), x.get("subcategory", ""), list(base.get("tags") or []))
        for style in ("google", "twitter"):
            p = os.path.join(node_modules, f"emoji-datasource-{style}", "img", style, "64", x["image"])
            if x.get(f"has_img_{style}") and os.path.exists(p):
                info.images[style] = p
        if key in openmoji:
            info.images["openmoji"] = openmoji[key]
        out[key] = info
    return out


def descriptors_for(info: EmojiInfo) -> list[str]:
    """CLDR keywords minus those that only repeat a word of the class name; order kept, no duplicates."""
    name_words = set(re.findall(r"[a-z0-9]+", info.name.lower()))
    out = []
    for kw in info.keywords:
        kw = kw.strip().lower()
        if kw and kw != info.name and not set(re.findall(r"[a-z0-9]+", kw)) <= name_words and kw not in out:
            out.append(kw)
    return out


def slug(text: str) -> str:
    """A folder-safe name: ``"dog face"`` → ``dog_face``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "x"


def select(meta: dict[str, EmojiInfo], subset: str, style: str) -> list[EmojiInfo]:
    """Emoji of ``subset`` that have an image in ``style``, sorted by code point; names made unique."""
    if subset not in SUBSETS:
        raise ValueError(f"unknown emoji subset {subset!r}; choose from {sorted(SUBSETS)}")
    if style not in STYLES:
        raise ValueError(f"unknown emoji style {style!r}; choose from {STYLES}")
    chosen = sorted((e for e in meta.values() if SUBSETS[subset](e) and style in e.images), key=lambda e: e.key)
    seen: dict[str, int] = {}
    for e in chosen:  # two emoji with one label would make an unanswerable class pair: keep the first
        seen[e.name] = seen.get(e.name, 0) + 1
    dupes = {n for n, c in seen.items() if c > 1}
    kept, used = [], set()
    for e in chosen:
        if e.name in dupes and e.name in used:
            continue
        used.add(e.name)
        kept.append(e)
    return kept


def image_on_white(path: str, size: int = 64) -> bytes:
    """PNG (RGBA raster, or SVG rendered in cairosvg's safe mode) → RGB PNG bytes on white, ``size`` px."""
    from PIL import Image

    if path.endswith(".svg"):
        import cairosvg

        png = cairosvg.svg2png(url=path, output_width=size, output_height=size)  # safe mode: no external fetches
        img = Image.open(io.BytesIO(png))
    else:
        img = Image.open(path)
    img = img.convert("RGBA")
    bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
    out = Image.alpha_composite(bg, img).convert("RGB")
    if out.size != (size, size):
        out = out.resize((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


def build_emoji_set(meta: dict[str, EmojiInfo], subset: str, style: str, out_dir: str, size: int = 64,
                    limit: int | None = None, progress: bool = True) -> int:
    """Write the ImageFolder layout (``<class>/<code point>.png`` + classes.json + descriptors.json).

    One image per class (the emoji in that style). Returns the number of classes written.
    """
    from tqdm import tqdm

    chosen = select(meta, subset, style)[:limit] if limit else select(meta, subset, style)
    if not chosen:
        raise RuntimeError(f"emoji-{style}-{subset}: no emoji found (are the npm packages installed?)")
    os.makedirs(out_dir, exist_ok=True)
    classes, descriptors = {}, {}
    for e in tqdm(chosen, desc=f"emoji-{style}-{subset}", disable=not progress, leave=False):
        folder = f"{e.key}_{slug(e.name)}"[:120]
        os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
        with open(os.path.join(out_dir, folder, f"{e.key}.png"), "wb") as f:
            f.write(image_on_white(e.images[style], size))
        classes[folder] = e.name
        descriptors[e.name] = descriptors_for(e)
    # Folders sort by code point, and the label order is the sorted folder order: keep JSON in that order.
    with open(os.path.join(out_dir, "classes.json"), "w", encoding="utf-8") as f:
        json.dump(dict(sorted(classes.items())), f, indent=1, ensure_ascii=False)
    with open(os.path.join(out_dir, "descriptors.json"), "w", encoding="utf-8") as f:
        json.dump({classes[k]: descriptors[classes[k]] for k in sorted(classes)}, f, indent=1, ensure_ascii=False)
    return len(chosen)
