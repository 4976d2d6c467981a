"""Shared benchmark inputs: a ~500k-entry metadata and alt-text-like captions (cached on disk).

Why: every benchmark should measure against the same realistic data, not toy lists. The
metadata mimics MetaCLIP's mix (WordNet synset lemmas, frequent English unigrams, bigrams): real
WordNet 3.0 lemmas (Debian's ``wordnet-base``), ``wordfreq``'s large English list, then word
pairs drawn from frequent words until ``n`` entries. Captions mimic web alt-text: a skewed
length distribution, Zipf-distributed words, capitalisation, punctuation, file names, numbers,
some non-ASCII, stray whitespace, and heavy repetition of popular captions.

Files are cached under ``/tmp/metacurate-bench`` (override with ``METACURATE_BENCH_DIR``).
"""
from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CACHE_DIR = Path(os.environ.get("METACURATE_BENCH_DIR", "/tmp/metacurate-bench"))
WORDNET_DIR = Path(os.environ.get("METACURATE_WORDNET", "/usr/share/wordnet"))
_GEN_VERSION = 2  # bump when the generators change, so stale caches are not reused


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def wordnet_lemmas(wordnet_dir: Path = WORDNET_DIR) -> list[str]:
    """All WordNet 3.0 lemma names in file order, ``_`` -> space, adjective markers removed."""
    seen: dict[str, None] = {}
    for pos in ("noun", "verb", "adj", "adv"):
        path = wordnet_dir / f"data.{pos}"
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: `apt-get install wordnet-base` or set METACURATE_WORDNET")
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("  "):  # licence header
                    continue
                fields = line.split(" ")
                n_words = int(fields[3], 16)
                for k in range(n_words):
                    word = fields[4 + 2 * k]
                    cut = word.find("(")  # data.adj markers: (a) (p) (ip)
                    if cut > 0:
                        word = word[:cut]
                    seen.setdefault(word.replace("_", " "), None)
    return list(seen)


def _english_words() -> list[str]:
    import wordfreq

    return wordfreq.top_n_list("en", 1_000_000, wordlist="large")


def bench_metadata(n: int = 500_000) -> list[str]:
    """``n`` distinct entries: WordNet lemmas, then wordfreq words, then frequent-word bigrams."""
    path = CACHE_DIR / f"metadata_v{_GEN_VERSION}_{n}.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    entries: dict[str, None] = dict.fromkeys(wordnet_lemmas())
    words = _english_words()
    for w in words:
        entries.setdefault(w, None)
    rng = np.random.default_rng(0)
    head, tail = np.array(words[:3000]), np.array(words[:30000])
    while len(entries) < n:
        k = n - len(entries)
        first = head[_zipf_ranks(rng, len(head), 2 * k)]
        second = tail[_zipf_ranks(rng, len(tail), 2 * k)]
        for a, b in zip(first.tolist(), second.tolist()):
            if a != b:
                entries.setdefault(f"{a} {b}", None)
            if len(entries) >= n:
                break
    out = list(entries)[:n]
    _atomic_write(path, json.dumps(out, ensure_ascii=False).encode("utf-8"))
    return out


def _zipf_ranks(rng: np.random.Generator, size: int, count: int, s: float = 1.0, q: float = 10.0) -> np.ndarray:
    """Ranks in [0, size) with P(rank) ∝ 1 / (rank + q)^s (a Zipf–Mandelbrot law)."""
    weights = 1.0 / (np.arange(size) + q) ** s
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, rng.random(count)), size - 1)


_NON_ASCII = ["café", "naïve", "Zürich", "東京", "日本の風景", "Москва", "señor", "€20", "—", "★", "ü"]
_PREFIXES = ["Photo of", "Image of", "Stock photo:", "Close-up of", "Picture of a", "Buy", "Free", "A"]
_SUFFIXES = ["| Shutterstock", "- Etsy", "stock photo", "on Amazon", "(2019)", "HD wallpaper", "for sale"]


class _CaptionMaker:
    """Draws one caption at a time with ``random.Random`` (scalar draws; numpy is slow per call)."""

    def __init__(self, seed: int, words: list[str], phrases: list[str]):
        import itertools
        import random

        self.rng = random.Random(seed)
        self.words, self.phrases = words, phrases
        self.cum = list(itertools.accumulate(1.0 / (r + 10.0) for r in range(len(words))))

    def __call__(self) -> str:
        rng = self.rng
        n_words = int(min(60, max(1, rng.lognormvariate(2.0, 0.75))))
        toks = rng.choices(self.words, cum_weights=self.cum, k=n_words)
        r = [rng.random() for _ in range(10)]
        if r[0] < 0.25:  # a WordNet compound ("hot dog", "ice cream") somewhere
            toks.insert(rng.randrange(len(toks) + 1), rng.choice(self.phrases))
        if r[1] < 0.15:
            toks.insert(0, rng.choice(_PREFIXES))
        if r[2] < 0.10:
            toks.append(rng.choice(_SUFFIXES))
        if r[3] < 0.04:
            toks.append(f"IMG_{rng.randrange(10000):04d}.jpg")
        if r[4] < 0.06:
            toks.insert(rng.randrange(len(toks) + 1), str(rng.randrange(1, 3000)))
        if r[5] < 0.05:
            toks.insert(rng.randrange(len(toks) + 1), rng.choice(_NON_ASCII))
        if r[6] < 0.30:
            toks = [t[:1].upper() + t[1:] for t in toks]  # Title Case, common in product alt-text
        elif r[6] < 0.40:
            toks[0] = toks[0][:1].upper() + toks[0][1:]
        parts = [toks[0]]
        for t in toks[1:]:
            p = rng.random()
            parts.append(", " if p < 0.05 else (" - " if p < 0.07 else ("  " if p < 0.08 else " ")))
            parts.append(t)
        text = "".join(parts)
        if r[7] < 0.20:
            text += "."
        elif r[7] < 0.23:
            text += "!"
        if r[8] < 0.01:
            text = text.replace(" ", "\n", 1)
        if r[9] < 0.02:
            text = " " + text + " "
        return text


def bench_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` alt-text-like captions; ~30% are repeats of a few thousand popular captions."""
    path = CACHE_DIR / f"captions_v{_GEN_VERSION}_{n}_{seed}.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    import random

    make = _CaptionMaker(seed, _english_words()[:60000], [p for p in wordnet_lemmas() if " " in p][:40000])
    popular = [make() for _ in range(3000)]
    popular[:12] = ["image", "logo", "Untitled", "photo", "Click to enlarge", "thumbnail", "",
                    "Loading...", "product image", "banner", "icon", "Image"]
    pick = random.Random(seed + 1)
    pop_cum = list(itertools.accumulate(1.0 / (r + 1.0) ** 1.1 for r in range(len(popular))))
    out = [pick.choices(popular, cum_weights=pop_cum)[0] if pick.random() < 0.30 else make()
           for _ in range(n)]
    _atomic_write(path, json.dumps(out, ensure_ascii=False).encode("utf-8"))
    return out


def write_pool(n: int, path: Path, chunk: int = 250_000, seed: int = 1000) -> Path:
    """A pool folder of ``n`` (url, text) rows in parquet files of ``chunk`` rows (50k-row groups),
    file ``i``'s captions drawn with seed ``seed + i``; written once, reused while ``_done`` exists."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if (path / "_done").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    for i, start in enumerate(range(0, n, chunk)):
        m = min(chunk, n - start)
        pq.write_table(pa.table({"url": [f"http://example.invalid/{start + j}.jpg" for j in range(m)],
                                 "text": bench_captions(m, seed=seed + i)}), path / f"part-{i:05d}.parquet",
                       row_group_size=50_000)
    (path / "_done").write_text("")
    return path
