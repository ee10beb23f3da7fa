"""Drawing the creatures of `grain bench novel-concepts` (classes: ``benchmarks.concepts``).

``render(concept, size, rng, rendering, textures)`` draws one creature as an RGBA sprite whose longer
side is ``size`` px and returns it with the exact box of every part (the tight box of that part's own
mask, in sprite pixels). Parts sit at fixed places of a side view (head right, tail left, wings on the
back, legs below); the creature faces left or right at random.

Two renderings:

``flat``   solid fills with a dark outline, dark stripes or spots; the fill's brightness is modulated by a
           crop of one of scikit-image's bundled photographs (brick, grass, gravel, ...), so no two parts
           look alike pixel for pixel. The only rendering used in training.
``soft``   never used in training: no outline, a light-to-dark shading gradient instead of the photo
           texture, a lighter shade of each colour, light stripes at another angle, a slight blur.

Attributes stay readable in both: the colour names a hue, the form a silhouette or an extent, the pattern
a regular texture.
"""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw, ImageFilter

from benchmarks.concepts import Concept, Part

RENDERINGS = ("flat", "soft")
COLOUR_RGB = {"red": (214, 39, 40), "orange": (250, 135, 20), "yellow": (240, 215, 30), "green": (40, 160, 50),
              "blue": (30, 95, 225), "purple": (135, 65, 195), "pink": (250, 140, 205), "brown": (130, 80, 40)}
DRAW_ORDER = ("tail", "legs", "body", "wings", "head")  # later parts cover earlier ones where they meet
# Part geometry in the unit square of a right-facing creature (x right, y down): boxes (x0, y0, x1, y1).
BODY = (0.20, 0.36, 0.76, 0.72)
HEAD = (0.62, 0.12, 0.94, 0.48)
WINGS = ((0.26, 0.02, 0.48, 0.42), (0.44, 0.06, 0.64, 0.44))
LEG_X = ((0.30, 0.37), (0.45, 0.52), (0.60, 0.67))
LEG_Y = {"short": (0.66, 0.84), "long": (0.66, 0.98)}
TAIL_TIP = {"short": 0.12, "long": 0.0}


def _shape(draw: ImageDraw.ImageDraw, part: str, form: str, box, scale: float, **kw) -> None:
    """Draw one primitive of ``part`` (``round``/``square``/``pointed``) in unit-square ``box``."""
    x0, y0, x1, y1 = (v * scale for v in box)
    mx, my = (x0 + x1) / 2, (y0 + y1) / 2
    if form == "round":
        draw.ellipse((x0, y0, x1, y1), **kw)
    elif form == "square":
        draw.rounded_rectangle((x0, y0, x1, y1), radius=0.08 * (x1 - x0), **kw)
    elif part == "head":  # pointed: a wedge pointing forward
        draw.polygon([(x0, y0), (x1, my), (x0, y1)], **kw)
    elif part == "body":  # pointed: a diamond
        draw.polygon([(mx, y0), (x1, my), (mx, y1), (x0, my)], **kw)
    else:  # pointed wings: triangles pointing up
        draw.polygon([(x0, y1), (mx, y0), (x1, y1)], **kw)


def _draw_part(draw: ImageDraw.ImageDraw, p: Part, scale: float, **kw) -> None:
    if p.part == "body":
        _shape(draw, "body", p.form, BODY, scale, **kw)
    elif p.part == "head":
        _shape(draw, "head", p.form, HEAD, scale, **kw)
    elif p.part == "wings":
        for box in WINGS:
            _shape(draw, "wings", p.form, box, scale, **kw)
    elif p.part == "tail":
        tip = TAIL_TIP[p.form]
        pts = [(0.26, 0.40), (0.26, 0.64), (tip, 0.57), (tip, 0.47)]
        draw.polygon([(x * scale, y * scale) for x, y in pts], **kw)
    elif p.part == "legs":
        y0, y1 = LEG_Y[p.form]
        for x0, x1 in LEG_X:
            draw.rectangle((x0 * scale, y0 * scale, x1 * scale, y1 * scale), **kw)
    else:
        raise ValueError(f"unknown part {p.part!r}")


def _shade(rgb, k: float) -> tuple[int, int, int]:
    """k < 1 darker, k > 1 towards white (k − 1 = the share of white)."""
    if k <= 1:
        return tuple(int(c * k) for c in rgb)
    return tuple(int(c + (255 - c) * (k - 1)) for c in rgb)


def _fill(p: Part, side: int, bbox, rng: random.Random, rendering: str, textures: list[Image.Image]) -> Image.Image:
    """The RGB fill of one part over the sprite: base colour, brightness (photo texture or shading), pattern."""
    base = COLOUR_RGB[p.colour]
    if rendering == "soft":
        base = _shade(base, 1.0 + rng.uniform(0.15, 0.3))
    img = Image.new("RGB", (side, side), base)
    if rendering == "flat" and textures:  # photo texture: brightness × (0.7 … 1.15)
        tex = textures[rng.randrange(len(textures))]
        s = rng.randint(min(tex.size) // 4, min(tex.size) // 2)
        x, y = rng.randint(0, tex.width - s), rng.randint(0, tex.height - s)
        lum = tex.crop((x, y, x + s, y + s)).resize((side, side), Image.Resampling.BILINEAR)
        dark = Image.new("RGB", (side, side), _shade(base, 0.7))
        light = Image.new("RGB", (side, side), _shade(base, 1.15))
        img = Image.composite(light, dark, lum)
    elif rendering == "soft":  # shading: lighter towards the top left of the part, darker at the bottom right
        grad = _diagonal_gradient().resize((bbox[2] - bbox[0] + 1, bbox[3] - bbox[1] + 1))
        mask = Image.new("L", (side, side), 128)
        mask.paste(grad, bbox[:2])
        img = Image.composite(Image.new("RGB", (side, side), _shade(base, 0.75)), Image.new("RGB", (side, side), _shade(base, 1.2)), mask)
    if p.pattern != "plain":
        _pattern(ImageDraw.Draw(img), p.pattern, bbox, rng, rendering, _shade(base, 0.35 if rendering == "flat" else 1.7))
    return img


def _diagonal_gradient() -> Image.Image:
    """0 at the top left, 255 at the bottom right (the centre of a 45°-rotated linear gradient)."""
    g = Image.linear_gradient("L").rotate(45, resample=Image.Resampling.BILINEAR, expand=True)
    c, r = g.width // 2, 90  # the rotated 256-px square holds an axis-aligned square of side 256/√2 ≈ 181
    return g.crop((c - r, c - r, c + r, c + r))


def _pattern(draw: ImageDraw.ImageDraw, pattern: str, bbox, rng: random.Random, rendering: str, colour) -> None:
    """Stripes or spots over ``bbox`` (pixels): about 3.5 periods across the part's shorter side."""
    x0, y0, x1, y1 = bbox
    period = max(4.0, min(x1 - x0, y1 - y0) / 3.5)
    if pattern == "striped":
        angle = math.radians(rng.uniform(60, 120) if rendering == "flat" else rng.uniform(-20, 20))
        dx, dy = math.cos(angle), math.sin(angle)  # stripe direction; stripes step along the normal (-dy, dx)
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, math.hypot(x1 - x0, y1 - y0)
        width = max(1, round(period * (0.45 if rendering == "flat" else 0.3)))
        k = -r + rng.uniform(0, period)
        while k < r:
            px, py = cx - dy * k, cy + dx * k
            draw.line([(px - dx * r, py - dy * r), (px + dx * r, py + dy * r)], fill=colour, width=width)
            k += period
    elif pattern == "spotted":
        rad = period * (0.3 if rendering == "flat" else 0.22)
        off = rng.uniform(0, period)
        for gy, y in enumerate(_steps(y0 - off, y1 + period, period)):
            for x in _steps(x0 - off + (period / 2) * (gy % 2), x1 + period, period):
                jx, jy = rng.uniform(-0.12, 0.12) * period, rng.uniform(-0.12, 0.12) * period
                draw.ellipse((x + jx - rad, y + jy - rad, x + jx + rad, y + jy + rad), fill=colour)
    else:
        raise ValueError(f"unknown pattern {pattern!r}")


def _steps(start: float, stop: float, step: float):
    v = start
    while v < stop:
        yield v
        v += step


def render(concept: Concept, size: int, rng: random.Random, rendering: str = "flat",
           textures: list[Image.Image] | None = None) -> tuple[Image.Image, list[tuple[Part, list[float]]]]:
    """One creature: (RGBA sprite, longer side ``size`` px; [(part, [x0, y0, x1, y1] in sprite pixels), ...]
    in the concept's part order). Drawn at 2× (at least 64 px) and downsampled, so small creatures stay smooth."""
    if rendering not in RENDERINGS:
        raise ValueError(f"unknown rendering {rendering!r}; choose one of {RENDERINGS}")
    side = max(64, 2 * size)
    sprite = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    boxes: dict[str, tuple[int, int, int, int]] = {}
    outline = max(1, side // 56)
    for name in DRAW_ORDER:
        p = concept.part(name)
        if p is None:
            continue
        mask = Image.new("L", (side, side), 0)
        _draw_part(ImageDraw.Draw(mask), p, side, fill=255)
        bbox = mask.getbbox()
        sprite.paste(_fill(p, side, bbox, rng, rendering, textures or []), (0, 0), mask)
        if rendering == "flat":
            _draw_part(ImageDraw.Draw(sprite), p, side, outline=_shade(COLOUR_RGB[p.colour], 0.3) + (255,), width=outline)
        boxes[name] = bbox
    if rng.random() < 0.5:  # face left
        sprite = sprite.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        boxes = {k: (side - b[2], b[1], side - b[0], b[3]) for k, b in boxes.items()}
    crop = sprite.getchannel("A").getbbox()
    sprite = sprite.crop(crop)
    f = size / max(sprite.size)
    w, h = max(1, round(sprite.width * f)), max(1, round(sprite.height * f))
    sprite = sprite.resize((w, h), Image.Resampling.LANCZOS)
    if rendering == "soft":
        sprite = sprite.filter(ImageFilter.GaussianBlur(0.5))
    out = []
    for p in concept.parts:
        b = boxes[p.part]
        out.append((p, [(b[0] - crop[0]) * f, (b[1] - crop[1]) * f, (b[2] - crop[0]) * f, (b[3] - crop[1]) * f]))
    return sprite, out


__all__ = ["COLOUR_RGB", "RENDERINGS", "render"]
