"""A small generated pool + metadata for the quickstart and tests (no network, no files shipped).

Captions follow the web's shape: a head of generic words ("photo", "image", "stock photo") that
would dominate an unbalanced set, a Zipf-distributed long tail of concrete entries, and noise
(camera file names, "untitled", empty and null captions, exact duplicates, non-English text).
"""
from __future__ import annotations

import json
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq

HEAD = ["photo", "image", "picture", "stock photo", "background", "design", "logo", "free"]
OBJECTS = [
    "dog", "cat", "hot dog", "car", "bicycle", "tree", "house", "mountain", "beach", "flower", "bird",
    "horse", "boat", "train", "airplane", "pizza", "coffee", "guitar", "piano", "chair", "table",
    "lamp", "book", "clock", "shoe", "hat", "shirt", "dress", "bridge", "castle", "river", "lake",
    "forest", "desert", "snow", "sunset", "city", "street", "market", "garden", "kitchen", "bedroom",
    "elephant", "giraffe", "zebra", "lion", "tiger", "bear", "penguin", "dolphin", "whale", "owl",
    "butterfly", "bee", "apple", "banana", "orange", "lemon", "cake", "bread", "cheese", "wine",
    "new york", "paris", "london", "tokyo", "golden gate bridge", "eiffel tower", "red panda",
    "sea turtle", "fire truck", "ice cream", "teddy bear", "solar panel", "wind turbine",
    "lighthouse", "windmill", "volcano", "waterfall", "canyon", "glacier", "coral reef",
]
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple", "pink", "brown"]
NOISE = ["untitled", "IMG_{n}.jpg", "DSC{n}", "", "   ", "click here", "Bild {n}", "写真 {n}", "image"]
TEMPLATES = [
    "{obj}", "a {col} {obj}", "{head} of a {obj}", "{obj} {head}", "a {obj} near the {obj2}",
    "{col} {obj} on a {col2} background", "{head}: {obj}, {obj2}.", "my {obj} in {obj2}",
]


def make_demo_pool(out_dir: str, n_rows: int = 20_000, seed: int = 0, n_files: int = 4) -> dict:
    """Write ``out_dir/pool/part-*.parquet`` and ``out_dir/metadata/metadata.json``; return paths."""
    rng = random.Random(seed)
    entries = sorted(set(HEAD + OBJECTS + COLOURS))
    weights = [1.0 / (i + 1) ** 1.1 for i in range(len(OBJECTS))]  # Zipf tail
    rows = []
    for i in range(n_rows):
        r = rng.random()
        if r < 0.06:
            text = rng.choice(NOISE).format(n=rng.randrange(10_000))
        elif r < 0.07:
            text = None
        elif r < 0.12 and rows:
            text = rows[rng.randrange(len(rows))][1]  # exact duplicate caption, new URL
        else:
            obj, obj2 = rng.choices(OBJECTS, weights, k=2)
            text = rng.choice(TEMPLATES).format(obj=obj, obj2=obj2, head=rng.choice(HEAD),
                                                col=rng.choice(COLOURS), col2=rng.choice(COLOURS))
            if rng.random() < 0.4:
                text = f"{rng.choice(HEAD)} {text}"
        rows.append((f"http://127.0.0.1:8000/img/{i:07d}.jpg", text))
    pool_dir = os.path.join(out_dir, "pool")
    os.makedirs(pool_dir, exist_ok=True)
    per = (n_rows + n_files - 1) // n_files
    for f in range(n_files):
        chunk = rows[f * per:(f + 1) * per]
        pq.write_table(pa.table({"url": [u for u, _ in chunk], "text": [t for _, t in chunk]}),
                       os.path.join(pool_dir, f"part-{f:05d}.parquet"), row_group_size=max(1, per // 2))
    meta_dir = os.path.join(out_dir, "metadata")
    os.makedirs(meta_dir, exist_ok=True)
    meta = os.path.join(meta_dir, "metadata.json")
    with open(meta, "w", encoding="utf-8") as fh:
        json.dump(entries, fh, ensure_ascii=False)
    return {"pool": pool_dir, "metadata": meta}
