"""A procedurally generated miniature web: images, alt-text pool, Wikipedia dump, pageviews.

Why it exists: the offline quickstart and the balance-vs-random experiment need the whole
MetaCLIP story to happen on a laptop with no network. So this module makes, from a seed:

* images (``render_image``): digits drawn as pen strokes, in TrueType fonts, or as coarse
  "scans" (the way scikit-learn's 8×8 digits were made: a 32×32 bitmap summed over 4×4 blocks),
  and shapes, in named colours on textured backgrounds;
* a web pool (``make_web_pool``): image files served over HTTP plus a parquet of ``url, text``
  whose captions look like the web's alt-text — a Zipf-skewed concrete tail ("a red star on
  striped background", "number 7 in blue", "seven"), a heavy generic head ("image", "photo",
  "IMG_1234.jpg"), exact duplicate captions, duplicate URLs, broken links, corrupt files and
  null / empty captions — so matching, balancing, download errors and rejects all have work;
* a small MediaWiki ``pages-articles.xml.bz2`` (``make_wiki_dump``) and hourly pageview files
  (``make_pageviews``) over the same vocabulary, so metadata built from them covers the pool;
* a held-out set of clean (image, caption) pairs as WebDataset shards (``heldout_split``).

Everything is a pure function of its seed (on one machine: the TrueType fonts found locally are
part of the input, so another machine with other fonts renders other glyphs).
"""
from __future__ import annotations

import glob
import hashlib
import http.server
import io
import json
import logging
import math
import os
import random
import re
import threading
from functools import lru_cache, partial
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from metadata.synthetic import SynthPage, write_dump, write_pageviews

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# vocabulary (shared by images, captions, the wiki dump and the pageviews)
# --------------------------------------------------------------------------------------------
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40), "green": (44, 160, 44), "blue": (31, 90, 200), "yellow": (245, 210, 30),
    "orange": (255, 127, 14), "purple": (130, 60, 170), "black": (15, 15, 15),
    "white": (248, 248, 248), "pink": (240, 120, 180), "brown": (140, 86, 45), "gray": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "star", "ring", "diamond", "hexagon", "cross", "pentagon")
TEXTURES = ("plain", "stripes", "dots", "noise", "gradient")
DIGIT_STYLES = ("hand", "font", "scan")
# how captions name a texture (every word here is also in the wiki dump's vocabulary)
TEXTURE_PHRASES: dict[str, tuple[str, ...]] = {
    "plain": ("plain background", "a plain background", "solid background"),
    "stripes": ("striped background", "stripes", "a striped pattern", "diagonal stripes"),
    "dots": ("polka dots", "a dotted background", "dots", "a polka dot pattern"),
    "noise": ("a noisy background", "grainy texture", "a speckled background", "noise"),
    "gradient": ("a gradient background", "a soft gradient", "gradient"),
}
# the generic head of web alt-text: weights are Zipf-like, "image" and "photo" dominate
GENERIC_CAPTIONS: tuple[tuple[str, float], ...] = (
    ("image", 10), ("photo", 8), ("untitled", 5), ("IMG_{n}.jpg", 5), ("picture", 4),
    ("stock photo", 3), ("DSC_{n}.JPG", 3), ("thumbnail", 2), ("click here", 2), ("image {n}", 2),
    ("photo {n}", 2), ("untitled-{n}", 1.5), ("screenshot", 1.5), ("free image", 1.2),
    ("wallpaper", 1), ("clipart", 1), ("background", 1), ("logo", 1), ("design", 1),
    ("Bild {n}", 0.6), ("写真", 0.5), ("foto", 0.5), ("no description available", 0.5),
)
HEAD_PREFIXES = ("stock photo of", "photo of", "image of", "picture of", "free clipart of")
EVERYDAY_WORDS = (
    "the", "of", "and", "a", "in", "is", "to", "was", "for", "on", "as", "with", "by", "it", "from",
    "at", "an", "are", "which", "this", "also", "be", "has", "or", "its", "first", "two", "used",
    "can", "often", "many", "symbol", "shape", "colour", "color", "number", "digit", "written",
    "pattern", "sign", "flag", "letter", "page", "paper", "ink", "drawing", "art", "design", "logo",
    "icon", "picture", "photo", "image", "photograph", "background", "texture", "style", "form",
    "history", "century", "school", "children", "word", "language", "name", "called", "known",
    "common", "small", "large", "simple", "light", "dark", "bright", "side", "centre", "center",
    "line", "edge", "point", "corner", "figure", "writing", "hand", "handwritten", "printed",
    "font", "typeface", "scan", "digital", "paint", "painted", "sheet", "card", "road", "house",
    "city", "game", "team", "year", "people", "world", "water", "tree", "book", "music", "film",
)
# caption/wiki words not covered above (checked by the tests: every caption word is in the dump)
EXTRA_WORDS = (
    "striped", "stripes", "stripe", "diagonal", "polka", "dot", "dots", "dotted", "noisy", "noise",
    "grainy", "speckled", "gradient", "soft", "plain", "solid", "outline", "filled", "pen", "marker",
    "white", "big", "tiny", "numeral", "clip", "clipart", "stock", "free", "free clipart",
    "shaped", "in", "inside", "over", "against", "blurry", "scanned", "old", "sketch", "drawn",
)


# --------------------------------------------------------------------------------------------
# other languages (MetaCLIP 2 worldwide curation): the same concepts in German and Chinese
# --------------------------------------------------------------------------------------------
#: Per language: digit words, colour and shape names, texture phrases. Chinese writes no spaces
#: between words, which is what the metaclip2 matching rule and the segmenting tokeniser are for.
LANG_VOCAB: dict[str, dict[str, Any]] = {
    "de": {
        "digits": ("null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"),
        "colours": {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb", "orange": "orange",
                    "purple": "lila", "black": "schwarz", "white": "weiß", "pink": "rosa", "brown": "braun",
                    "gray": "grau"},
        "shapes": {"circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck", "star": "Stern", "ring": "Ring",
                   "diamond": "Raute", "hexagon": "Sechseck", "cross": "Kreuz", "pentagon": "Fünfeck"},
        "textures": {"plain": "einfarbigem Hintergrund", "stripes": "Streifen", "dots": "Punkten",
                     "noise": "Rauschen", "gradient": "Farbverlauf"},
    },
    "zh": {
        "digits": ("零", "一", "二", "三", "四", "五", "六", "七", "八", "九"),
        "colours": {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "orange": "橙色",
                    "purple": "紫色", "black": "黑色", "white": "白色", "pink": "粉色", "brown": "棕色",
                    "gray": "灰色"},
        "shapes": {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形", "ring": "圆环",
                   "diamond": "菱形", "hexagon": "六边形", "cross": "十字", "pentagon": "五边形"},
        "textures": {"plain": "纯色背景", "stripes": "条纹", "dots": "圆点", "noise": "噪点", "gradient": "渐变"},
    },
}
#: Languages the miniature web can write captions in (English is the module's own vocabulary).
LANGUAGES = ("en",) + tuple(LANG_VOCAB)


def lang_words(lang: str) -> list[str]:
    """Every concept word of a language (digits, colours, shapes, textures): what its metadata
    list needs for the captions to match."""
    if lang == "en":
        return list(DIGIT_WORDS) + list(COLOURS) + list(SHAPES)
    v = LANG_VOCAB[lang]
    return list(v["digits"]) + list(v["colours"].values()) + list(v["shapes"].values()) + list(v["textures"].values())


def describe_lang(spec: dict, rng: random.Random, lang: str, specific: bool = False) -> str:
    """A caption for ``spec`` in ``lang`` (``en``: :func:`describe`). ``specific``: one that names
    every visible attribute (held-out retrieval)."""
    if lang == "en":
        return _specific_caption(spec, rng) if specific else describe(spec, rng)
    v = LANG_VOCAB[lang]
    col, bg = v["colours"][spec["colour"]], v["colours"][spec["background"]]
    tex = v["textures"][spec.get("texture", "plain")]
    shape = v["shapes"].get(spec.get("shape") or "", None)
    d = spec.get("digit")
    if lang == "de":
        if d is not None:
            w = v["digits"][d]
            frame = f" in einem {shape}" if shape else ""
            options = [f"die Zahl {w} in der Farbe {col} auf {bg} mit {tex}{frame}",
                       f"ein Bild der Ziffer {d} ({w}) in {col} auf {bg}{frame}"]
            if not specific:
                options += [f"handgeschriebene Zahl {w} in {col}", f"die Ziffer {w} in {col} geschrieben",
                            f"ein Foto der Zahl {w}"]
        else:
            options = [f"ein {shape} in der Farbe {col} auf {bg} mit {tex}",
                       f"{shape} in {col} auf einem Hintergrund in {bg} mit {tex}"]
            if not specific:
                options += [f"ein einfacher {shape} in {col}", f"Symbol {shape} in der Farbe {col}"]
    else:
        if d is not None:
            w = v["digits"][d]
            frame = f"，在{shape}里" if shape else ""
            options = [f"{bg}背景上{col}的数字{w}，带有{tex}{frame}", f"{col}的数字{d}（{w}）在{bg}{tex}上{frame}"]
            if not specific:
                options += [f"手写的数字{w}", f"一个{col}的数字{w}", f"数字{w}的照片"]
        else:
            options = [f"{bg}背景上的{col}{shape}，带有{tex}", f"一个{col}的{shape}在{bg}{tex}上"]
            if not specific:
                options += [f"简单的{col}{shape}图标", f"{col}{shape}"]
    return rng.choice(options)


# --------------------------------------------------------------------------------------------
# fonts
# --------------------------------------------------------------------------------------------
_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", os.path.expanduser("~/.fonts"),
              os.path.expanduser("~/.local/share/fonts"))
_SKIP_FONT = ("sym", "cmex", "cmsy", "siz", "nonuni", "display", "emoji", "mono-?oblique")


def _font_renders_digits(path: str) -> bool:
    """A font is usable when all ten digits render as distinct, non-empty glyphs."""
    try:
        font = ImageFont.truetype(path, 32)
    except OSError:
        return False
    seen = set()
    for d in "0123456789":
        img = Image.new("L", (48, 48), 0)
        ImageDraw.Draw(img).text((4, 0), d, fill=255, font=font)
        data = img.tobytes()
        if not any(data) or data in seen:
            return False
        seen.add(data)
    return True


@lru_cache(maxsize=1)
def available_fonts() -> tuple[str, ...]:
    """Sorted TrueType/OpenType fonts on this machine that draw digits (may be empty)."""
    dirs = list(_FONT_DIRS)
    try:  # matplotlib ships a few faces (DejaVu, Computer Modern, STIX): more variety
        import matplotlib

        dirs.append(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf"))
    except ImportError:
        pass
    found: set[str] = set()
    for d in dirs:
        for ext in ("ttf", "otf", "TTF", "OTF"):
            found.update(glob.glob(os.path.join(d, "**", f"*.{ext}"), recursive=True))
    # one file per face name (the same DejaVu ships in several places)
    by_name: dict[str, str] = {}
    for p in sorted(found):
        by_name.setdefault(os.path.basename(p).lower(), p)
    skip = re.compile("|".join(_SKIP_FONT), re.I)
    fonts = tuple(sorted(p for n, p in by_name.items() if not skip.search(n) and _font_renders_digits(p)))
    log.debug("%d usable fonts", len(fonts))
    return fonts


@lru_cache(maxsize=512)
def _font(index: int, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Font ``index`` of [PIL's default] + available_fonts(); PIL's default when FreeType is absent."""
    fonts = available_fonts()
    if index == 0 or not fonts:
        try:
            return ImageFont.load_default(size=size)
        except (TypeError, ImportError, OSError):  # old PIL / no FreeType: fixed bitmap font
            return ImageFont.load_default()
    return ImageFont.truetype(fonts[(index - 1) % len(fonts)], size)


# --------------------------------------------------------------------------------------------
# digit strokes (pen-drawn "handwriting"): points in a unit box, x right, y down
# --------------------------------------------------------------------------------------------
def _loop(cx: float, cy: float, rx: float, ry: float, n: int = 8) -> list[tuple[float, float]]:
    """Control points of a closed oval, starting at the top."""
    return [(cx + rx * math.sin(2 * math.pi * i / n), cy - ry * math.cos(2 * math.pi * i / n)) for i in range(n)]


# stroke = (control points, mode); "sharp": straight segments, "smooth": Catmull-Rom spline,
# "loop": closed spline. Jittering the control points of a spline still looks inked.
DIGIT_STROKES: dict[int, list[tuple[list[tuple[float, float]], str]]] = {
    0: [(_loop(0.5, 0.5, 0.3, 0.46), "loop")],
    1: [([(0.4, 0.2), (0.56, 0.04), (0.56, 0.97)], "sharp")],
    2: [([(0.18, 0.26), (0.3, 0.09), (0.55, 0.04), (0.78, 0.18), (0.76, 0.42), (0.45, 0.72),
          (0.15, 0.95)], "smooth"), ([(0.15, 0.95), (0.87, 0.94)], "sharp")],
    3: [([(0.17, 0.14), (0.47, 0.03), (0.77, 0.17), (0.72, 0.4), (0.42, 0.49), (0.78, 0.6),
          (0.8, 0.84), (0.5, 0.97), (0.16, 0.87)], "smooth")],
    4: [([(0.64, 0.97), (0.64, 0.04), (0.1, 0.66), (0.9, 0.66)], "sharp")],
    5: [([(0.8, 0.05), (0.27, 0.05), (0.22, 0.45)], "sharp"),
        ([(0.22, 0.45), (0.52, 0.37), (0.8, 0.55), (0.78, 0.85), (0.48, 0.97), (0.16, 0.86)], "smooth")],
    6: [([(0.74, 0.07), (0.45, 0.12), (0.24, 0.42), (0.21, 0.76), (0.44, 0.97), (0.74, 0.86),
          (0.77, 0.62), (0.5, 0.5), (0.24, 0.64)], "smooth")],
    7: [([(0.12, 0.07), (0.88, 0.07), (0.38, 0.97)], "sharp")],
    8: [(_loop(0.5, 0.26, 0.24, 0.22), "loop"), (_loop(0.5, 0.71, 0.3, 0.26), "loop")],
    9: [(_loop(0.5, 0.29, 0.27, 0.24), "loop"), ([(0.77, 0.3), (0.74, 0.64), (0.56, 0.97)], "smooth")],
}


def _catmull_rom(points: Sequence[tuple[float, float]], closed: bool = False,
                 steps: int = 8) -> list[tuple[float, float]]:
    """A smooth curve through the points (closed: back to the first point)."""
    if len(points) < 3:
        return list(points)
    if closed:
        pts = [points[-1], *points, points[0], points[1]]
    else:
        pts = [points[0], *points, points[-1]]
    out = []
    for i in range(1, len(pts) - 2):
        p0, p1, p2, p3 = pts[i - 1], pts[i], pts[i + 1], pts[i + 2]
        for s in range(steps):
            t = s / steps
            t2, t3 = t * t, t * t * t
            out.append(tuple(0.5 * ((2 * p1[k]) + (-p0[k] + p2[k]) * t + (2 * p0[k] - 5 * p1[k] + 4 * p2[k] - p3[k]) * t2
                                    + (-p0[k] + 3 * p1[k] - 3 * p2[k] + p3[k]) * t3) for k in (0, 1)))
    out.append(points[0] if closed else points[-1])
    return out  # type: ignore[return-value]


def _digit_mask_hand(digit: int, rng: random.Random, canvas: int, pen_scale: float = 1.0) -> Image.Image:
    """A pen-drawn digit: jittered control points, random slant, width and aspect."""
    img = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(img)
    height = canvas * rng.uniform(0.55, 0.85)
    width = height * rng.uniform(0.5, 0.8)
    x0 = rng.uniform(0.08, 0.92) * (canvas - width)
    y0 = rng.uniform(0.08, 0.92) * (canvas - height)
    slant = rng.uniform(-0.3, 0.3)
    pen = max(2, int(canvas * rng.uniform(0.05, 0.11) * pen_scale))
    jitter = rng.uniform(0.01, 0.035)
    for points, mode in DIGIT_STROKES[digit]:
        pts = [(x + rng.gauss(0, jitter), y + rng.gauss(0, jitter)) for x, y in points]
        if mode != "sharp":
            pts = _catmull_rom(pts, closed=mode == "loop")
        xy = [(x0 + (x + slant * (0.5 - y)) * width, y0 + y * height) for x, y in pts]
        draw.line(xy, fill=255, width=pen, joint="curve")
        r = pen / 2
        for x, y in (xy[0], xy[-1]):  # round pen ends
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return img


def _digit_mask_font(digit: int, rng: random.Random, canvas: int) -> Image.Image:
    """A digit in a random font, scale, stroke and rotation, placed anywhere that fits."""
    n_fonts = 1 + len(available_fonts())
    font = _font(rng.randrange(n_fonts), max(8, int(canvas * rng.uniform(0.5, 0.9))))
    stroke = rng.choice((0, 0, 1, 2, 3)) * canvas // 96
    glyph = Image.new("L", (canvas * 2, canvas * 2), 0)
    ImageDraw.Draw(glyph).text((canvas // 2, canvas // 4), str(digit), fill=255, font=font,
                               stroke_width=stroke, stroke_fill=255)
    glyph = glyph.rotate(rng.uniform(-25, 25), resample=Image.BILINEAR)
    box = glyph.getbbox()
    img = Image.new("L", (canvas, canvas), 0)
    if box is None:
        return img
    glyph = glyph.crop(box)
    if glyph.width > canvas * 0.95 or glyph.height > canvas * 0.95:
        f = canvas * 0.9 / max(glyph.width, glyph.height)
        glyph = glyph.resize((max(1, int(glyph.width * f)), max(1, int(glyph.height * f))), Image.BILINEAR)
    x = int(rng.uniform(0, 1) * (canvas - glyph.width))
    y = int(rng.uniform(0, 1) * (canvas - glyph.height))
    img.paste(glyph, (x, y))
    return img


def _scan_like_sklearn(mask: Image.Image, size: int, stretch: bool) -> Image.Image:
    """Dark ink on white, the way sklearn's digits were made: 32×32 bitmap -> 4×4 block sums.

    The ink is cropped and fills the frame, as the original size normalisation did (``stretch``:
    to both sides, ignoring the aspect ratio, as many of the real scans look).
    """
    box = mask.getbbox()
    if box is not None:
        mask = mask.crop(box)
        if stretch:  # widen narrow glyphs, but not so far that a "1" becomes a blob
            mask = mask.resize((max(mask.width, min(mask.height, int(mask.width * 1.6))), mask.height),
                               Image.BILINEAR)
        if mask.width != mask.height:
            side = max(mask.width, mask.height)
            sq = Image.new("L", (side, side), 0)
            sq.paste(mask, ((side - mask.width) // 2, (side - mask.height) // 2))
            mask = sq
    bits = (np.asarray(mask.resize((32, 32), Image.BILINEAR)) > 96).astype(np.uint8)
    counts = bits.reshape(8, 4, 8, 4).sum(axis=(1, 3))  # 0..16
    pixels = (255 - counts * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="L").resize((size, size), Image.BILINEAR).convert("RGB")


# --------------------------------------------------------------------------------------------
# shapes and textures
# --------------------------------------------------------------------------------------------
def _polygon(n: int, cx: float, cy: float, r: float, rot: float, inner: float | None = None):
    pts = []
    k = 2 * n if inner else n
    for i in range(k):
        a = math.radians(rot) + 2 * math.pi * i / k - math.pi / 2
        rr = r if (inner is None or i % 2 == 0) else r * inner
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def _shape_mask(shape: str, rng: random.Random, canvas: int) -> Image.Image:
    img = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(img)
    r = canvas * rng.uniform(0.22, 0.42)
    cx = rng.uniform(r, canvas - r)
    cy = rng.uniform(r, canvas - r)
    rot = rng.uniform(-30, 30)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        ri = r * rng.uniform(0.5, 0.7)
        draw.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)
    elif shape == "square":
        draw.polygon(_polygon(4, cx, cy, r * 1.2, 45 + rot), fill=255)
    elif shape == "diamond":
        pts = [(cx, cy - r), (cx + r * 0.65, cy), (cx, cy + r), (cx - r * 0.65, cy)]
        draw.polygon(pts, fill=255)
    elif shape == "triangle":
        draw.polygon(_polygon(3, cx, cy, r, rot), fill=255)
    elif shape == "pentagon":
        draw.polygon(_polygon(5, cx, cy, r, rot), fill=255)
    elif shape == "hexagon":
        draw.polygon(_polygon(6, cx, cy, r, rot), fill=255)
    elif shape == "star":
        draw.polygon(_polygon(5, cx, cy, r, rot, inner=rng.uniform(0.38, 0.5)), fill=255)
    elif shape == "cross":
        w = r * 0.36
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=255)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")
    return img


def _contrast(rgb: tuple[int, int, int], amount: float) -> tuple[int, int, int]:
    """A lighter (dark colours) or darker (light colours) variant, for texture patterns."""
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    target = 255 if lum < 128 else 0
    return tuple(int(c + (target - c) * amount) for c in rgb)  # type: ignore[return-value]


def _background(texture: str, colour: str, rng: random.Random, size: int) -> Image.Image:
    base = COLOURS[colour]
    alt = _contrast(base, rng.uniform(0.2, 0.4))
    img = Image.new("RGB", (size, size), base)
    draw = ImageDraw.Draw(img)
    if texture == "plain":
        return img
    if texture == "stripes":
        period = rng.randint(max(4, size // 16), max(6, size // 5))
        big = Image.new("RGB", (size * 2, size * 2), base)
        d = ImageDraw.Draw(big)
        for x in range(0, size * 2, period):
            d.rectangle((x, 0, x + period // 2, size * 2), fill=alt)
        big = big.rotate(rng.choice((0, 45, 90, 135, rng.uniform(0, 180))), resample=Image.NEAREST)
        return big.crop((size // 2, size // 2, size // 2 + size, size // 2 + size))
    if texture == "dots":
        step = rng.randint(max(5, size // 12), max(8, size // 5))
        rad = step * rng.uniform(0.15, 0.35)
        off = rng.uniform(0, step)
        for j, y in enumerate(np.arange(off - step, size + step, step)):
            shift = step / 2 if j % 2 else 0
            for x in np.arange(off - step + shift, size + step, step):
                draw.ellipse((x - rad, y - rad, x + rad, y + rad), fill=alt)
        return img
    if texture == "noise":
        arr = np.asarray(img, dtype=np.float32)
        nrng = np.random.default_rng(rng.randrange(2 ** 32))
        sigma = rng.uniform(15, 40)
        grain = nrng.standard_normal((size, size, 1), dtype=np.float32) * sigma \
            + nrng.standard_normal((size, size, 3), dtype=np.float32) * (sigma / 3)
        return Image.fromarray(np.clip(arr + grain, 0, 255).astype(np.uint8))
    if texture == "gradient":
        t = np.linspace(0, 1, size, dtype=np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        ramp = np.cos(angle) * t[None, :] + np.sin(angle) * t[:, None]
        ramp = (ramp - ramp.min()) / max(1e-6, float(ramp.max() - ramp.min()))
        a, b = np.asarray(base, np.float32), np.asarray(_contrast(base, rng.uniform(0.4, 0.7)), np.float32)
        arr = a[None, None, :] * (1 - ramp[..., None]) + b[None, None, :] * ramp[..., None]
        return Image.fromarray(arr.astype(np.uint8))
    raise ValueError(f"unknown texture {texture!r}; choose one of {TEXTURES}")


# --------------------------------------------------------------------------------------------
# specs and rendering
# --------------------------------------------------------------------------------------------
def render_image(spec: dict, size: int = 96) -> Image.Image:
    """Render ``spec`` to an RGB image; the same spec (incl. ``seed``) gives the same pixels.

    Spec keys: ``seed`` (int), ``digit`` (0-9 or None), ``shape`` (a SHAPES name or None; with a
    digit the shape is drawn as a frame behind it), ``colour`` (ink), ``background`` (colour),
    ``texture`` (TEXTURES), ``style`` for digits (DIGIT_STYLES; "scan" ignores the colours: dark
    ink on white like a scanned form).
    """
    digit, shape = spec.get("digit"), spec.get("shape")
    if digit is None and shape is None:
        raise ValueError("spec needs a digit or a shape")
    colour, bg = spec.get("colour", "black"), spec.get("background", "white")
    for name in (colour, bg):
        if name not in COLOURS:
            raise ValueError(f"unknown colour {name!r}; choose one of {sorted(COLOURS)}")
    rng = random.Random(f"render:{spec.get('seed', 0)}")
    ss = 2  # supersampling for smooth edges
    canvas = size * ss
    if digit is not None and spec.get("style") == "scan":
        mask = _digit_mask_hand(int(digit), rng, canvas, pen_scale=1.6) if rng.random() < 0.6 \
            else _digit_mask_font(int(digit), rng, canvas)
        return _scan_like_sklearn(mask, size, stretch=rng.random() < 0.5)
    # the background is drawn at the output size; only the masks are supersampled (speed)
    img = _background(spec.get("texture", "plain"), bg, rng, size)
    ink = Image.new("RGB", (size, size), COLOURS[colour])

    def shrink(mask: Image.Image) -> Image.Image:
        return mask.resize((size, size), Image.BILINEAR, reducing_gap=2.0)

    if shape is not None:
        frame = shrink(_shape_mask(shape, rng, canvas))
        if digit is not None:  # a framed digit: the shape in a lighter tone, the digit on top
            img.paste(Image.new("RGB", (size, size), _contrast(COLOURS[bg], 0.55)), (0, 0), frame)
        else:
            img.paste(ink, (0, 0), frame)
    if digit is not None:
        style = spec.get("style", "hand")
        if style not in DIGIT_STYLES:
            raise ValueError(f"unknown digit style {style!r}; choose one of {DIGIT_STYLES}")
        mask = _digit_mask_hand(int(digit), rng, canvas) if style == "hand" \
            else _digit_mask_font(int(digit), rng, canvas)
        img.paste(ink, (0, 0), shrink(mask))
    if rng.random() < 0.25:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return img


def _zipf_weights(n: int, a: float, rng: random.Random) -> list[float]:
    """Zipf weights over a seed-shuffled order (which concept is common depends on the seed)."""
    order = list(range(n))
    rng.shuffle(order)
    w = [0.0] * n
    for rank, i in enumerate(order):
        w[i] = 1.0 / (rank + 1) ** a
    return w


class _Sampler:
    """Draws image specs with Zipf-skewed concepts (what balancing then flattens)."""

    def __init__(self, rng: random.Random, zipf_a: float, digit_fraction: float = 0.55) -> None:
        self.rng = rng
        self.digit_fraction = digit_fraction
        self.w_digit = _zipf_weights(10, zipf_a, rng)
        self.w_shape = _zipf_weights(len(SHAPES), zipf_a, rng)
        self.w_colour = _zipf_weights(len(COLOURS), zipf_a * 0.7, rng)
        self.w_texture = _zipf_weights(len(TEXTURES), zipf_a * 0.5, rng)

    def spec(self) -> dict:
        rng = self.rng
        colours = list(COLOURS)
        s: dict[str, Any] = {"seed": rng.randrange(2 ** 31), "digit": None, "shape": None,
                             "style": None}
        s["texture"] = rng.choices(TEXTURES, self.w_texture)[0]
        if rng.random() < self.digit_fraction:
            s["digit"] = rng.choices(range(10), self.w_digit)[0]
            s["style"] = rng.choices(DIGIT_STYLES, (0.45, 0.35, 0.2))[0]
            r = rng.random()
            if s["style"] == "scan":
                s["colour"], s["background"], s["texture"] = "black", "white", "plain"
            elif r < 0.4:  # ink on paper, like the eval set (and the web's scans)
                s["colour"], s["background"] = "black", rng.choice(("white", "white", "yellow", "gray"))
                s["texture"] = rng.choice(("plain", "plain", "noise", "gradient"))
            elif r < 0.6:  # chalk on a board
                s["colour"], s["background"] = "white", rng.choice(("black", "black", "green", "blue", "brown"))
            else:
                s["colour"] = rng.choices(colours, self.w_colour)[0]
                s["background"] = rng.choice([c for c in colours if c != s["colour"]])
            if s["style"] != "scan" and rng.random() < 0.12:
                s["shape"] = rng.choices(SHAPES, self.w_shape)[0]
        else:
            s["shape"] = rng.choices(SHAPES, self.w_shape)[0]
            s["colour"] = rng.choices(colours, self.w_colour)[0]
            s["background"] = rng.choice([c for c in colours if c != s["colour"]])
        return s


def describe(spec: dict, rng: random.Random, head_prefix_p: float = 0.15) -> str:
    """A concrete, web-like caption for ``spec`` in one of many phrasings (all plain words)."""
    d, shape, col, bg = spec.get("digit"), spec.get("shape"), spec.get("colour"), spec.get("background")
    tex = spec.get("texture", "plain")
    texp = rng.choice(TEXTURE_PHRASES[tex])
    if d is not None:
        w, n = DIGIT_WORDS[d], str(d)
        options = [
            w, n, f"number {n}", f"number {w}", f"the number {w}", f"the digit {n}", f"digit {w}",
            f"a handwritten {w}", f"handwritten number {n}", f"a photo of the number {w}",
            f"{w} {n}", f"the number {n} written in {col} ink", f"number {n} in {col}",
            f"a {col} {w} on {texp}", f"big {col} number {w}", f"{col} digit {n} on a {bg} background",
            f"the numeral {w}", f"a drawing of the number {w}",
        ]
        if spec.get("style") == "scan":
            options += [f"a scan of a handwritten {w}", f"scanned digit {n}", f"handwritten digit {w} on white paper",
                        f"a blurry scan of the number {w}", f"old scan of a handwritten number {n}"]
        elif spec.get("style") == "hand":
            options += [f"{w} drawn with a {col} marker", f"a hand drawn {w}", f"handwritten {w} in {col}"]
        else:
            options += [f"the number {w} in a {rng.choice(('bold', 'simple', 'printed'))} font",
                        f"printed digit {n}", f"{col} number {w} sign"]
        if shape is not None:
            options += [f"number {w} inside a {shape}", f"the digit {n} in a {shape}",
                        f"a {shape} with the number {w}"]
        text = rng.choice(options)
    else:
        options = [
            f"a {col} {shape}", f"{col} {shape}", shape, f"a {col} {shape} on {texp}",
            f"{col} {shape} on a {bg} background", f"a {shape} in {col}", f"{shape} icon {col}",
            f"simple {col} {shape} shape", f"a {col} {shape} on a {bg} {tex if tex != 'plain' else 'plain'} background",
            f"{col} {shape} clipart", f"big {col} {shape} with {texp}", f"a {shape} shape",
            f"{col} and {bg} {shape} pattern",
        ]
        text = rng.choice(options)
    if rng.random() < head_prefix_p and "photo" not in text:
        text = f"{rng.choice(HEAD_PREFIXES)} {text if not text.startswith('a ') else text[2:]}"
    if rng.random() < 0.08:
        text = text[0].upper() + text[1:]
    return text


def _generic_caption(rng: random.Random) -> str:
    texts, weights = zip(*GENERIC_CAPTIONS)
    return rng.choices(texts, weights)[0].format(n=rng.randrange(100, 10_000))


# --------------------------------------------------------------------------------------------
# the web pool
# --------------------------------------------------------------------------------------------
#: default share of pool rows per category (the remainder is the concrete tail)
DEFAULT_NOISE: dict[str, float] = {
    "generic": 0.25,        # head captions: "image", "photo", "IMG_1234.jpg", ...
    "dup_caption": 0.07,    # another image of the same concept with an exactly repeated caption
    "dup_url": 0.05,        # a URL already in the pool, again (same or another caption)
    "broken": 0.04,         # URL to a file that does not exist (HTTP 404)
    "corrupt": 0.01,        # truncated JPEG bytes
    "null_caption": 0.03,   # text is null
    "empty_caption": 0.02,  # text is "" or white space
}
LABEL_SCHEMA = pa.schema([
    ("url", pa.string()), ("digit", pa.int8()), ("shape", pa.string()), ("colour", pa.string()),
    ("background", pa.string()), ("texture", pa.string()), ("style", pa.string()),
    ("status", pa.string()), ("path", pa.string()),
])
PORT_PLACEHOLDER = "{port}"


def _encode(img: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", optimize=False)
    else:
        img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_web_pool(out_dir: str, n: int = 3000, seed: int = 0, base_url: str = "http://127.0.0.1:{port}",
                  *, size: int = 96, n_files: int = 4, zipf_a: float = 1.0,
                  noise: dict[str, float] | None = None, port: int | None = None,
                  workers: int | None = None, languages: dict[str, float] | None = None) -> dict:
    """Write ``out_dir/www/`` (images), ``out_dir/pool/part-*.parquet`` (url, text) and
    ``out_dir/labels.parquet`` (one row per distinct URL); return paths and counts.

    ``base_url`` is the server's address (start ``serve_directory(out_dir + "/www")`` first and
    pass its URL). A literal ``{port}`` in it is filled from ``port``; without one the URLs keep
    the placeholder and ``set_base_url`` fixes them once the port is known. ``workers``
    processes render the images (default: the CPU count, at most 4); the bytes do not depend on it.
    ``languages`` (e.g. ``{"en": 0.6, "de": 0.2, "zh": 0.2}``): the share of concrete captions
    written in each language (default: all English).
    """
    if languages:
        bad = set(languages) - set(LANGUAGES)
        if bad:
            raise ValueError(f"no caption vocabulary for {sorted(bad)}; known: {list(LANGUAGES)}")
        lang_names, lang_weights = list(languages), list(languages.values())
        lang_rng = random.Random(f"pool-lang:{seed}")  # apart: English captions stay as without languages
    fractions = dict(DEFAULT_NOISE, **(noise or {}))
    unknown = set(fractions) - set(DEFAULT_NOISE)
    if unknown:
        raise ValueError(f"unknown noise categories {sorted(unknown)}; known: {sorted(DEFAULT_NOISE)}")
    if sum(fractions.values()) >= 1:
        raise ValueError(f"noise fractions sum to {sum(fractions.values()):.2f}; they must leave room "
                         "for the concrete tail (sum < 1)")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if port is not None:
        base_url = base_url.replace(PORT_PLACEHOLDER, str(port))
    base_url = base_url.rstrip("/")
    rng = random.Random(f"pool:{seed}")
    sampler = _Sampler(rng, zipf_a)
    www = os.path.join(out_dir, "www")
    os.makedirs(os.path.join(www, "img"), exist_ok=True)

    categories = list(fractions) + ["concrete"]
    cat_weights = list(fractions.values()) + [1 - sum(fractions.values())]
    rows: list[tuple[str, str | None, str, str]] = []   # url, text, category, caption language

    def caption(spec: dict) -> tuple[str, str]:
        if not languages:
            return describe(spec, rng), "en"
        lang = lang_rng.choices(lang_names, lang_weights)[0]
        return describe_lang(spec, rng, lang), lang

    labels: dict[str, dict] = {}
    concrete: list[tuple[dict, str]] = []          # (spec, caption) of concrete rows, for duplicates
    counts: dict[str, int] = {c: 0 for c in categories}
    urls: list[str] = []                            # distinct URLs in order
    first_text: dict[str, str | None] = {}
    n_img = 0

    jobs: list[tuple] = []  # files to write: rendered after sampling, in parallel if asked

    def new_image(spec: dict, status: str = "ok") -> str:
        nonlocal n_img
        n_img += 1
        fmt = "png" if status != "corrupt" and rng.random() < 0.15 else "jpg"
        rel = f"{'gone' if status == 'missing' else 'img'}/{n_img:06d}.{fmt}"
        url = f"{base_url}/{rel}"
        if status != "missing":  # missing: the URL points at a file never written (404)
            keep = rng.randint(20, 60) if status == "corrupt" else 100  # a download cut short
            jobs.append((spec, size, fmt, rng.randint(75, 95), keep, os.path.join(www, rel)))
        labels[url] = {"url": url, "digit": spec.get("digit"), "shape": spec.get("shape"),
                       "colour": spec.get("colour"), "background": spec.get("background"),
                       "texture": spec.get("texture"), "style": spec.get("style"), "status": status,
                       "path": rel}
        return url

    text: str | None
    lang_of_text: dict[str | None, str] = {}
    for _ in range(n):
        cat = rng.choices(categories, cat_weights)[0]
        if cat in ("dup_caption", "dup_url") and not concrete:
            cat = "concrete"
        if cat == "dup_url":  # the same image linked again: same alt-text, or another page's
            url = rng.choice(urls)
            if rng.random() < 0.5:
                text = first_text[url]
            else:
                text, lang = caption(_spec_of(labels[url]))
                lang_of_text[text] = lang
        elif cat == "dup_caption":  # another image of the same concept, caption repeated exactly
            spec0, text = rng.choice(concrete)
            url = new_image(dict(spec0, seed=rng.randrange(2 ** 31)))
        else:
            spec = sampler.spec()
            url = new_image(spec, {"broken": "missing", "corrupt": "corrupt"}.get(cat, "ok"))
            if cat == "generic":
                text = _generic_caption(rng)
            elif cat == "null_caption":
                text = None
            elif cat == "empty_caption":
                text = rng.choice(("", " ", "   "))
            else:
                text, lang = caption(spec)
                lang_of_text[text] = lang
                if cat == "concrete":
                    concrete.append((spec, text))
        if url not in first_text:
            urls.append(url)
            first_text[url] = text
        rows.append((url, text, cat, lang_of_text.get(text, "")))
        counts[cat] += 1
    _render_files(jobs, workers)

    pool_dir = os.path.join(out_dir, "pool")
    os.makedirs(pool_dir, exist_ok=True)
    for old in glob.glob(os.path.join(pool_dir, "part-*.parquet")):
        os.remove(old)
    n_files = max(1, min(n_files, len(rows)))
    per = -(-len(rows) // n_files)
    schema = pa.schema([("url", pa.string()), ("text", pa.string())])
    for i in range(n_files):
        chunk = rows[i * per:(i + 1) * per]
        pq.write_table(pa.table({"url": [r[0] for r in chunk], "text": [r[1] for r in chunk]}, schema=schema),
                       os.path.join(pool_dir, f"part-{i:05d}.parquet"))
    labels_path = os.path.join(out_dir, "labels.parquet")
    pq.write_table(pa.Table.from_pylist(list(labels.values()), schema=LABEL_SCHEMA), labels_path)
    categories_path = os.path.join(out_dir, "pool_categories.parquet")
    pq.write_table(pa.table({"url": [r[0] for r in rows], "category": [r[2] for r in rows],
                             "lang": [r[3] for r in rows]}), categories_path)
    info = {"out_dir": out_dir, "www": www, "pool": pool_dir, "labels": labels_path,
            "categories": categories_path, "base_url": base_url, "rows": len(rows),
            "distinct_urls": len(labels), "image_files": sum(1 for v in labels.values() if v["status"] != "missing"),
            "counts": counts, "seed": seed, "needs_port": PORT_PLACEHOLDER in base_url}
    with open(os.path.join(out_dir, "web.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    log.info("web pool: %d rows, %d images under %s, %s", len(rows), info["image_files"], www, counts)
    return info


def _write_file(job: tuple) -> None:
    spec, size, fmt, quality, keep_pct, path = job
    data = _encode(render_image(spec, size), fmt, quality)
    if keep_pct < 100:  # truncated JPEG: the decoder hits the end of the data mid-scan
        data = data[: max(64, len(data) * keep_pct // 100)]
    with open(path, "wb") as f:
        f.write(data)


def _render_files(jobs: list[tuple], workers: int | None) -> None:
    """Render and write every image file; a process pool when there is enough work."""
    from tqdm import tqdm

    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    bar = dict(total=len(jobs), desc="rendering web pool", unit="img", leave=False,
               disable=len(jobs) < 500 or not log.isEnabledFor(logging.INFO))
    if workers <= 1 or len(jobs) < 200:
        for job in tqdm(jobs, **bar):
            _write_file(job)
        return
    import concurrent.futures as cf
    import multiprocessing as mp

    available_fonts()  # scan once here; forked workers inherit the cache
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        for _ in tqdm(pool.map(_write_file, jobs, chunksize=32), **bar):
            pass


def _spec_of(label: dict) -> dict:
    return {k: label[k] for k in ("digit", "shape", "colour", "background", "texture", "style")}


def set_base_url(out_dir: str, base_url: str) -> int:
    """Rewrite the URL prefix of a pool made with a ``{port}`` placeholder; return rows changed.

    Why: the server's port is only known once it runs; uids are derived from URLs later, so
    this must happen before the pipeline reads the pool.
    """
    with open(os.path.join(out_dir, "web.json"), encoding="utf-8") as f:
        info = json.load(f)
    old, new = info["base_url"], base_url.rstrip("/")
    changed = 0
    files = sorted(glob.glob(os.path.join(out_dir, "pool", "part-*.parquet")))
    files += [os.path.join(out_dir, "labels.parquet"), os.path.join(out_dir, "pool_categories.parquet")]
    for path in files:
        table = pq.read_table(path)
        urls = [u if u is None or not u.startswith(old + "/") else new + u[len(old):]
                for u in table.column("url").to_pylist()]
        changed += sum(1 for a, b in zip(urls, table.column("url").to_pylist()) if a != b) \
            if "part-" in os.path.basename(path) else 0
        idx = table.schema.get_field_index("url")
        table = table.set_column(idx, "url", pa.array(urls, pa.string()))
        pq.write_table(table, path + ".tmp")
        os.replace(path + ".tmp", path)
    info.update(base_url=new, needs_port=PORT_PLACEHOLDER in new)
    with open(os.path.join(out_dir, "web.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    return changed


# --------------------------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------------------------
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        log.debug("http %s", format % args)


class ServedDirectory(NamedTuple):
    """``(base_url, stop)``; also a context manager that stops the server on exit."""

    base_url: str
    stop: Callable[[], None]

    def __enter__(self) -> "ServedDirectory":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve_directory(root: str, host: str = "127.0.0.1", port: int = 0) -> ServedDirectory:
    """Serve ``root`` over HTTP on the loopback interface from a daemon thread.

    Only 127.0.0.1 / localhost is accepted: the quickstart must never expose files to a network.
    ``port=0`` picks a free port; pass a fixed one to keep URLs (and so uids) stable across runs.
    """
    if host not in ("127.0.0.1", "localhost"):
        raise ValueError(f"serve_directory binds only to 127.0.0.1, not {host!r}")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"cannot serve {root!r}: not a directory")
    handler = partial(_QuietHandler, directory=os.path.abspath(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=f"serve:{root}", daemon=True)
    thread.start()
    lock = threading.Lock()
    stopped = [False]

    def stop() -> None:
        with lock:
            if stopped[0]:
                return
            stopped[0] = True
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    base = f"http://127.0.0.1:{server.server_address[1]}"
    log.info("serving %s at %s", root, base)
    return ServedDirectory(base, stop)


# --------------------------------------------------------------------------------------------
# Wikipedia dump and pageviews
# --------------------------------------------------------------------------------------------
def wiki_vocabulary() -> list[str]:
    """Every word the pool's concrete captions can use (the wiki dump covers all of them)."""
    words = set(DIGIT_WORDS) | set(COLOURS) | set(SHAPES) | set(EVERYDAY_WORDS)
    for phrases in TEXTURE_PHRASES.values():
        for p in phrases:
            words.update(p.split())
    for w in EXTRA_WORDS:
        words.update(w.split())
    for p in HEAD_PREFIXES:
        words.update(p.split())
    words.update(("hand", "drawn", "bold", "printed", "numeral", "with", "marker", "shapes",
                  "colours", "numbers", "digits", "circles", "stars", "squares"))
    return sorted(words)


def _topics() -> list[tuple[str, list[str]]]:
    """(title, topic words) for the dump's articles: concepts and their combinations."""
    topics: list[tuple[str, list[str]]] = []
    for i, w in enumerate(DIGIT_WORDS):
        topics.append((w.capitalize(), [w, "number", "digit"]))
        topics.append((f"Number {w}", ["number", w, "numeral"]))
    for s in SHAPES:
        topics.append((s.capitalize(), [s, "shape"]))
    for c in COLOURS:
        topics.append((c.capitalize(), [c, "colour"]))
    for c in ("red", "blue", "yellow", "white", "black", "green"):
        for s in ("star", "circle", "cross", "square", "triangle"):
            topics.append((f"{c.capitalize()} {s}", [c, s]))
    for title, words in (("Polka dots", ["polka", "dots"]), ("Stripe", ["stripes", "striped"]),
                         ("Gradient", ["gradient", "colour"]), ("Noise", ["noise", "grainy"]),
                         ("Handwriting", ["handwritten", "writing"]), ("Numeral", ["numeral", "digit"])):
        topics.append((title, words))
    return topics


def _article(rng: random.Random, title: str, topic: list[str], vocab: list[str], weights: list[float]) -> str:
    """Wikitext about ``topic`` with templates, links, refs, a table and headings."""
    collocations = [f"{c} {s}" for c in COLOURS for s in SHAPES] + [f"number {w}" for w in DIGIT_WORDS] \
        + [f"digit {w}" for w in DIGIT_WORDS] + ["polka dots", "striped background", "plain background",
                                                 "stock photo", "soft gradient", "grainy texture"]

    def sentence() -> str:
        words = rng.choices(vocab, weights, k=rng.randint(7, 16))
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(topic))
        if rng.random() < 0.5:  # the article's own name: its bigrams get a high PMI
            words.insert(rng.randrange(len(words) + 1), title.lower())
        if rng.random() < 0.5:
            words.insert(rng.randrange(len(words) + 1), rng.choice(collocations))
        k = rng.randrange(len(words))
        words[k] = f"[[{words[k].capitalize()}|{words[k]}]]" if rng.random() < 0.5 else f"[[{words[k]}]]"
        if rng.random() < 0.2:
            j = rng.randrange(len(words))
            words[j] = f"'''{words[j]}'''"
        text = " ".join(words)
        return text[0].upper() + text[1:] + rng.choice((".", ".", ".", ";", ","))

    def paragraph(k: int) -> str:
        return " ".join(sentence() for _ in range(k))

    first = paragraph(rng.randint(3, 6))
    lead = f"'''{title}''' is a {' '.join(topic)} {first[0].lower()}{first[1:]}"
    parts = [
        f"{{{{Short description|{' '.join(topic)}}}}}",
        f"{{{{Infobox concept\n| name = {title}\n| image = {title.replace(' ', '_')}.svg\n| colour = {rng.choice(list(COLOURS))}\n}}}}",
        lead + f"<ref>{{{{cite web|url=http://example.org/{rng.randrange(10 ** 6)}|title={title}}}}}</ref>",
        "== History ==", paragraph(rng.randint(3, 7)),
        "=== Use ===", paragraph(rng.randint(2, 5)) + "<ref name=\"b\" />",
        '{| class="wikitable"\n|-\n! zzname !! zzvalue\n|-\n| zzcell || ' + str(rng.randrange(100)) + "\n|}",
        "== See also ==", "\n".join(f"* [[{t}]]" for t in rng.sample([w.capitalize() for w in topic], k=len(topic))),
        f"[[Category:{title}]]",
    ]
    return "\n".join(parts)


def make_wiki_dump(out_path: str, n_pages: int = 200, seed: int = 0, multistream: bool = True) -> dict:
    """Write a small ``pages-articles.xml.bz2`` whose prose uses the pool's vocabulary (Zipf).

    Topics cycle through digits, shapes, colours, colour+shape pairs and textures, so with
    ``n_pages >= len(topics)`` every concept has its own article and every caption word is
    counted many times (the build's unigram threshold must be small for a dump this size).
    """
    if n_pages < 1:
        raise ValueError(f"n_pages must be >= 1, got {n_pages}")
    rng = random.Random(f"wiki:{seed}")
    vocab = wiki_vocabulary()
    order = list(range(len(vocab)))
    rng.shuffle(order)
    weights = [0.0] * len(vocab)
    for rank, i in enumerate(order):
        weights[i] = 1.0 / (rank + 1) ** 0.8
    topics = _topics()
    pages: list[SynthPage] = []
    titles: list[str] = []
    for i in range(n_pages):
        title, topic = topics[i % len(topics)]
        if i >= len(topics):
            title = f"{title} ({i // len(topics) + 1})"
        titles.append(title)
        pages.append(SynthPage(title, _article(rng, title, topic, vocab, weights)))
        if i % 25 == 24:  # redirects and talk pages, as in a real dump
            pages.append(SynthPage(f"{title} redirect", f"#REDIRECT [[{title}]]", redirect=title))
            pages.append(SynthPage(f"Talk:{title}", "Discussion of " + title, ns=1))
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp"
    size = write_dump(tmp, pages, multistream=multistream, pages_per_stream=50)
    os.replace(tmp, out_path)
    return {"path": out_path, "pages": len(pages), "articles": n_pages, "xml_bytes": size, "titles": titles}


def pageview_titles() -> list[str]:
    """Popular titles of the miniature web (underscores as in the dumps)."""
    titles = [t.replace(" ", "_") for t, _ in _topics()]
    titles += ["Main_Page", "Digit", "Shape", "Colour", "Stock_photography", "Handwriting"]
    return titles


def make_pageviews(out_dir: str, n_files: int = 3, seed: int = 0) -> list[str]:
    """Write ``n_files`` hourly ``pageviews-20240101-HH0000.gz`` files; return their paths.

    Lines are ``project title views bytes`` for projects ``en``, ``en.m`` and ``de``; ``en``
    titles include namespaced ones (``Special:``, ``File:``, ``Talk:``) and a long tail of rare
    titles below the default per-line threshold, so the title filters have something to drop.
    """
    if not 1 <= n_files <= 24:
        raise ValueError(f"n_files must be between 1 and 24 (one day of hourly files), got {n_files}")
    rng = random.Random(f"pageviews:{seed}")
    titles = pageview_titles()
    popularity = {t: 2000.0 / (r + 1) ** 0.9 for r, t in enumerate(rng.sample(titles, len(titles)))}
    rare = [f"{rng.choice(list(COLOURS)).capitalize()}_{rng.choice(SHAPES)}_{rng.choice(EVERYDAY_WORDS)}"
            for _ in range(40)]
    namespaced = ["Special:Search", "Special:Random", "File:Red_star.svg", "Talk:Circle",
                  "Category:Numbers", "Wikipedia:About", "User:Example"]
    german = ["Roter_Stern", "Kreis", "Sieben", "Quadrat", "Hauptseite"]
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for h in range(n_files):
        lines: list[tuple[str, str, object]] = []
        for t in titles:
            v = max(1, int(popularity[t] * rng.uniform(0.5, 1.5)))
            lines.append(("en", t, v))
            lines.append(("en.m", t, max(1, int(v * rng.uniform(0.3, 1.2)))))
        lines += [("en", t, rng.randint(1, 30)) for t in rare]
        lines += [("en", t, rng.randint(100, 5000)) for t in namespaced]
        lines += [("de", t, rng.randint(10, 2000)) for t in german]
        lines.sort(key=lambda x: (x[0], x[1]))
        path = os.path.join(out_dir, f"pageviews-20240101-{h:02d}0000.gz")
        write_pageviews(path, lines)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# held-out split
# --------------------------------------------------------------------------------------------
def heldout_split(out_dir: str, n: int = 300, seed: int = 1_000_003, *, size: int = 96,
                  samples_per_shard: int = 1000, zipf_a: float = 0.0, lang: str = "en") -> dict:
    """Write ``n`` clean (image, caption) pairs as WebDataset shards for retrieval evaluation.

    Same generator as the pool but another seed (so no image repeats the pool's) and, by default,
    uniform concepts (``zipf_a=0``). Each sample: ``<key>.jpg``, ``<key>.txt`` (one caption),
    ``<key>.json`` (uid, url, entry_ids [], entries [], phash, p_keep 1.0, ``captions``: two
    phrasings, the labels, and ``label`` = the digit for digit images). ``lang``: the captions'
    language (the images are the same for every language of one seed: a parallel retrieval set).
    """
    if lang not in LANGUAGES:
        raise ValueError(f"no caption vocabulary for {lang!r}; known: {list(LANGUAGES)}")
    from curation.phash import hash_to_hex, phash_bytes
    from curation.shards import write_shards

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(f"heldout:{seed}")
    sampler = _Sampler(rng, zipf_a)
    # captions draw from their own generator: the images depend on the seed only
    cap_rng = random.Random(f"heldout:{seed}:{lang}")

    def samples():
        for i in range(n):
            spec = sampler.spec()
            data = _encode(render_image(spec, size), "jpg", 90)
            caps = []
            while len(caps) < 2:  # specific phrasings: retrieval needs captions that tell images apart
                c = describe_lang(spec, cap_rng, lang, specific=True)
                if c not in caps:
                    caps.append(c)
            key = f"{i:06d}"
            url = f"heldout://{seed}/{key}.jpg"
            meta = {"uid": hashlib.sha224(url.encode()).hexdigest()[:24], "url": url, "entry_ids": [],
                    "entries": [], "phash": hash_to_hex(phash_bytes(data)), "p_keep": 1.0,
                    "captions": caps, **_spec_of(spec), **({"lang": lang} if lang != "en" else {})}
            if spec.get("digit") is not None:
                meta["label"] = int(spec["digit"])
            yield {"key": key, "jpg": data, "txt": caps[0], "json": meta}

    result = write_shards(samples(), out_dir, samples_per_shard)
    return {"out_dir": out_dir, "shards": result.shards, "samples": result.samples}


def _specific_caption(spec: dict, rng: random.Random) -> str:
    """A caption naming every visible attribute (digit/shape, colours, texture)."""
    col, bg, tex = spec["colour"], spec["background"], spec.get("texture", "plain")
    texp = rng.choice(TEXTURE_PHRASES[tex])
    if spec.get("digit") is not None:
        w, n = DIGIT_WORDS[spec["digit"]], spec["digit"]
        if spec.get("style") == "scan":
            return rng.choice((f"a scan of a handwritten {w}", f"scanned handwritten digit {n} number {w}"))
        frame = f" inside a {spec['shape']}" if spec.get("shape") else ""
        return rng.choice((f"the number {w} in {col} on {bg} {texp}{frame}",
                           f"{col} digit {n} {w}{frame} on a {bg} background with {texp}"))
    return rng.choice((f"a {col} {spec['shape']} on a {bg} background with {texp}",
                       f"{col} {spec['shape']} on {bg} {texp}"))
