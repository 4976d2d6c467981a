"""Generate small WebDataset shards in the format of the shard stage (ARCHITECTURE.md, "Data flow"):
simple coloured shapes with captions that describe them, so a tiny CLIP can actually learn the pairing."""
from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (235, 220, 30)}
SHAPES = ("circle", "square", "triangle")


def render(colour: str, shape: str, rng: random.Random, size: int = 72) -> Image.Image:
    bg = tuple(rng.randint(150, 255) for _ in range(3))
    image = Image.new("RGB", (size + rng.randint(0, 16), size), bg)
    draw = ImageDraw.Draw(image)
    r = rng.randint(size // 4, size // 3)
    cx, cy = rng.randint(r + 2, image.width - r - 2), rng.randint(r + 2, size - r - 2)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image


def jpeg_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_sample(index: int, rng: random.Random, p_keep: float = 1.0) -> dict[str, bytes]:
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    caption = rng.choice(["a {c} {s}", "photo of a {c} {s}", "{c} {s} on a plain background"]).format(c=colour, s=shape)
    url = f"http://example.test/{index}.jpg"
    uid = hashlib.sha224(url.encode()).hexdigest()[:24]
    meta = {"uid": uid, "url": url, "entry_ids": [0, 1], "entries": [colour, shape],
            "phash": "0123456789abcdef", "p_keep": p_keep}
    return {"jpg": jpeg_bytes(render(colour, shape, rng)), "txt": caption.encode(), "json": json.dumps(meta).encode()}


def write_shards(directory: str | Path, n_shards: int = 4, per_shard: int = 32, seed: int = 0,
                 p_keep: float = 1.0) -> list[Path]:
    """Write ``{000000..}.tar`` + ``sizes.json``; returns the shard paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths, sizes = [], {}
    for s in range(n_shards):
        path = directory / f"{s:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                key = f"{s:06d}{i:04d}"
                for ext, data in make_sample(s * per_shard + i, rng, p_keep).items():
                    _add(tar, f"{key}.{ext}", data)
        sizes[path.name] = per_shard
        paths.append(path)
    (directory / "sizes.json").write_text(json.dumps(sizes))
    return paths


def write_custom_shard(path: str | Path, samples: list[dict[str, bytes]]) -> Path:
    """A shard from explicit members (to build bad samples: missing .txt, corrupt .jpg ...)."""
    path = Path(path)
    with tarfile.open(path, "w") as tar:
        for i, sample in enumerate(samples):
            for ext, data in sample.items():
                _add(tar, f"k{i:05d}.{ext}", data)
    return path
