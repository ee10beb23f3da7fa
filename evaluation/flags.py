"""Country-flag evaluation set from the ``flag-icons`` npm package (MIT): naturally fine-grained.

``flag-icons/country.json`` gives code → name; ``flags/4x3/<code>.svg`` is rendered with cairosvg in
its default *safe* mode (no external fetches, no XML entities) to a ``width`` × ``3/4·width`` PNG.

Two data-quality rules, both reported in ``build_report.json`` (nothing is dropped silently):
- flags whose rendering is pixel-identical (Norway / Svalbard / Bouvet Island …) would make
  unanswerable class pairs: one owner is kept (ISO code, has a capital, shortest name), the others listed;
- SVGs that fail to render in safe mode are listed with the error.
Descriptors: the named colours covering ≥ 8 % of the flag ("red colour", …), measured on the
rendering — real visual facts about each class, in the descriptor-file layout.
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np

from evaluation.emoji import slug

# Reference colours for descriptors (sRGB). Nearest-colour assignment per pixel.
NAMED_COLOURS = {
    "red": (200, 16, 46),
    "dark red": (128, 20, 30),
    "orange": (255, 130, 0),
    "yellow": (252, 209, 22),
    "green": (0, 140, 69),
    "light blue": (100, 170, 230),
    "blue": (0, 56, 168),
    "dark blue": (0, 33, 71),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
MIN_COLOUR_SHARE = 0.08
SKIP_CODES = {"xx"}  # "Unknown": a placeholder, not a flag


def colour_descriptors(rgb: np.ndarray) -> list[str]:
    """RGB uint8 [H, W, 3] → descriptors for named colours covering ≥ MIN_COLOUR_SHARE, largest first."""
    names = list(NAMED_COLOURS)
    ref = np.array([NAMED_COLOURS[n] for n in names], dtype=np.float32)  # [K, 3]
    px = rgb.reshape(-1, 3).astype(np.float32)
    nearest = ((px[:, None, :] - ref[None]) ** 2).sum(-1).argmin(1)
    share = np.bincount(nearest, minlength=len(names)) / len(px)
    order = np.argsort(-share)
    return [f"{names[k]} colour" for k in order if share[k] >= MIN_COLOUR_SHARE]


def render_svg(path: str, width: int) -> bytes:
    """SVG → RGB PNG bytes (white background), ``width`` × ``width·3/4`` pixels, cairosvg safe mode."""
    import cairosvg
    from PIL import Image

    png = cairosvg.svg2png(url=path, output_width=width, output_height=width * 3 // 4)
    img = Image.open(io.BytesIO(png)).convert("RGBA")
    bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
    buf = io.BytesIO()
    Image.alpha_composite(bg, img).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def build_flags_set(node_modules: str, out_dir: str, width: int = 128, limit: int | None = None,
                    progress: bool = True) -> int:
    """Write the ImageFolder layout of country flags into ``out_dir``; return the number of classes."""
    from PIL import Image
    from tqdm import tqdm

    meta_path = os.path.join(node_modules, "flag-icons", "country.json")
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{meta_path}: missing; run `grain data build` (npm install flag-icons)")
    with open(meta_path, encoding="utf-8") as f:
        countries = sorted((c for c in json.load(f) if c["code"] not in SKIP_CODES), key=lambda c: c["name"])
    if limit:
        countries = countries[:limit]
    # Identical flags: the first one processed keeps the class. Prefer the sovereign-looking owner
    # (ISO code, has a capital, shortest name: France over French Guiana, Norway over Bouvet Island).
    countries.sort(key=lambda c: (not c.get("iso"), not c.get("capital"), len(c["name"]), c["name"]))
    os.makedirs(out_dir, exist_ok=True)
    classes, descriptors, by_hash = {}, {}, {}
    duplicates, failed = {}, {}
    for c in tqdm(countries, desc="flags", disable=not progress, leave=False):
        svg = os.path.join(node_modules, "flag-icons", c.get("flag_4x3") or f"flags/4x3/{c['code']}.svg")
        try:
            png = render_svg(svg, width)
        except Exception as e:  # cairosvg raises parser and value errors of many kinds
            failed[c["name"]] = f"{svg}: {type(e).__name__}: {e}"
            continue
        digest = hashlib.sha256(png).hexdigest()
        if digest in by_hash:
            duplicates.setdefault(by_hash[digest], []).append(c["name"])
            continue
        by_hash[digest] = c["name"]
        folder = f"{c['code']}_{slug(c['name'])}"
        os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
        with open(os.path.join(out_dir, folder, f"{c['code']}.png"), "wb") as f:
            f.write(png)
        classes[folder] = c["name"]
        descriptors[c["name"]] = colour_descriptors(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))
    with open(os.path.join(out_dir, "classes.json"), "w", encoding="utf-8") as f:
        json.dump(dict(sorted(classes.items())), f, indent=1, ensure_ascii=False)
    with open(os.path.join(out_dir, "descriptors.json"), "w", encoding="utf-8") as f:
        json.dump({classes[k]: descriptors[classes[k]] for k in sorted(classes)}, f, indent=1, ensure_ascii=False)
    with open(os.path.join(out_dir, "build_report.json"), "w", encoding="utf-8") as f:
        json.dump({"identical_flags_merged_into": duplicates, "render_failed": failed}, f, indent=1, ensure_ascii=False)
    if failed:
        print(f"flags: {len(failed)} SVG(s) failed to render, listed in {out_dir}/build_report.json")
    return len(classes)
