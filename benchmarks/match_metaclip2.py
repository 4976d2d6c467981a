"""MetaCLIP 2 matching throughput: ``FastMatcher(rule="metaclip2")`` vs the reference, one core, same run.

The reference is MetaCLIP 2's way: one pyahocorasick ``automaton.iter`` per prepared caption
(``Matcher(rule="metaclip2").match_batch``). FastMatcher is timed the way the Spark job calls it:
``match_arrow`` over Arrow batches of ``--batch-rows`` rows. Both must give identical ids (asserted).

Metadata (worldwide-style, one list): the English benchmark metadata (``benchmarks.data``: WordNet,
wordfreq words, bigrams), wordfreq's German, Chinese, Japanese and Arabic word lists, Thai words
(a short list written here plus syllable compounds: wordfreq has no Thai), Wikipedia-style
disambiguated titles ("Mercury (planet)") and a few edge-punctuation entries ("c++", "'s").
Chinese, Thai and kanji-initial Japanese entries have an unpadded side, so they go through the
character path (a raw substring search), as do the titles and the punctuation entries.

Captions: English alt-text (``benchmarks.data.bench_captions``) and generated German, Chinese,
Japanese, Thai, Arabic and mixed-script captions (Zipf-distributed words of those lists, the
script's own punctuation and spacing habits, brand names and numbers), ~30% repeats of popular
captions.

Run: ``python benchmarks/match_metaclip2.py [--captions 100000] [--en-entries 500000]``.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa  # noqa: E402

from benchmarks.data import bench_captions, bench_metadata  # noqa: E402
from benchmarks.match_throughput import best_of, print_profile, rss_mb  # noqa: E402
from curation.fastmatch import FastMatcher  # noqa: E402
from curation.matching import Matcher  # noqa: E402

RULE = "metaclip2"

#: Everyday Thai words (cat, dog, house, car, tree, sea, mountain, food, water, flower, ...).
THAI_WORDS = [
    "แมว", "หมา", "บ้าน", "รถ", "ต้นไม้", "ทะเล", "ภูเขา", "อาหาร", "น้ำ", "ดอกไม้", "สวย", "ใหญ่", "เล็ก",
    "สีแดง", "สีฟ้า", "สีเขียว", "สีขาว", "สีดำ", "กรุงเทพ", "ประเทศไทย", "ภาพ", "รูป", "ถ่าย", "คน", "เด็ก",
    "ผู้หญิง", "ผู้ชาย", "ถนน", "เมือง", "วัด", "ชายหาด", "ท้องฟ้า", "กาแฟ", "ข้าว", "ผลไม้", "เสื้อ",
    "รองเท้า", "กระเป๋า", "โทรศัพท์", "คอมพิวเตอร์", "หนังสือ", "โรงเรียน", "ตลาด", "ร้านอาหาร", "สวน",
    "แม่น้ำ", "ช้าง", "นก", "ปลา", "ม้า", "ดวงอาทิตย์", "กลางคืน", "ฝน", "ขาย", "ราคา", "ถูก", "ใหม่",
    "ผ้า", "ไม้", "ห้อง", "โรงแรม", "เที่ยว", "ทะเลสาบ", "งาน", "แต่งงาน", "ของขวัญ", "น่ารัก", "และ",
    "ที่", "ของ", "ใน", "กับ", "สำหรับ", "จาก", "ที่สุด", "ชุด", "แบบ", "สไตล์", "คุณภาพ", "ส่งฟรี",
]
_THAI_CONSONANTS = "กขคงจฉชซดตถทนบปผพฟมยรลวสหอ"
_THAI_VOWELS = ["า", "ิ", "ี", "ุ", "ู", "ะ", "ำ", ""]
_THAI_FINALS = ["", "", "น", "ง", "ม", "ก", "ด", "บ", "ย"]
_LATIN_BITS = ["iPhone 14", "LED", "USB-C", "Nike", "2023", "4K", "Samsung", "HD", "100%", "XL", "Apple",
               "Wi-Fi", "BTS", "Sony", "ZARA", "DIY", "T-shirt", "3D", "Lego", "Tokyo"]
_EDGE_ENTRIES = ["c++", "c#", "'s", "'hood", "(dog)", "Mercury (planet)", "AT&T", "#1", "e-", ".net", "+",
                 "@home", "“Hello”", "【公式】", "（株）", "—", "~", "...", "!", "?!", "-ish"]


def _unique(items) -> list[str]:
    return list(dict.fromkeys(items))


def _thai_words(n: int, rng: random.Random) -> list[str]:
    """The short list, then compounds of 2-3 generated syllables (Thai is written without spaces)."""
    syllables = [c + v + f for c in _THAI_CONSONANTS for v in _THAI_VOWELS for f in _THAI_FINALS]
    out = dict.fromkeys(THAI_WORDS)
    while len(out) < n:
        out.setdefault("".join(rng.choice(syllables) for _ in range(rng.randint(2, 3))), None)
    return list(out)


def _words(lang: str, n: int) -> list[str]:
    import wordfreq

    return wordfreq.top_n_list(lang, n, wordlist="large")


def worldwide_metadata(en_entries: int, per_lang: int, seed: int = 0) -> list[str]:
    """One worldwide-style entry list (see the module doc); deterministic."""
    rng = random.Random(seed)
    en = bench_metadata(en_entries)
    head = _words("en", 20000)
    titles = [f"{rng.choice(head).title()} ({rng.choice(head)})" for _ in range(per_lang // 5)]
    langs = [_words(lang, per_lang) for lang in ("de", "zh", "ja")] + [_words("ar", per_lang // 2)]
    return _unique(itertools.chain(en, *langs, _thai_words(per_lang // 20, rng), titles, _EDGE_ENTRIES))


class _Zipf:
    """Zipf-distributed draws from a word list (scalar ``random``; numpy is slow per call)."""

    def __init__(self, words: list[str], rng: random.Random):
        self.words, self.rng = words, rng
        self.cum = list(itertools.accumulate(1.0 / (r + 10.0) for r in range(len(words))))

    def __call__(self, k: int) -> list[str]:
        return self.rng.choices(self.words, cum_weights=self.cum, k=k)


class CaptionMaker:
    """Captions in one language with that script's spacing and punctuation habits."""

    def __init__(self, seed: int):
        self.rng = rng = random.Random(seed)
        self.zipf = {lang: _Zipf(_words(lang, 30000), rng) for lang in ("de", "zh", "ja", "ar", "en")}
        self.zipf["th"] = _Zipf(_thai_words(3000, random.Random(seed + 1)), rng)

    def _n(self, mu: float) -> int:
        return int(min(50, max(1, self.rng.lognormvariate(mu, 0.6))))

    def _glued(self, lang: str, mu: float, puncts: list[str]) -> str:
        """CJK / Thai style: words run together, the script's punctuation now and then."""
        rng, out = self.rng, []
        for w in self.zipf[lang](self._n(mu)):
            out.append(w)
            r = rng.random()
            if r < 0.08:
                out.append(rng.choice(puncts))
            elif r < 0.11:
                out.append(f" {rng.choice(_LATIN_BITS)} " if rng.random() < 0.5 else rng.choice(_LATIN_BITS))
            elif lang == "th" and r < 0.30:
                out.append(" ")  # Thai spaces between phrases
        if rng.random() < 0.05:
            out.insert(0, f"【{rng.choice(self.zipf[lang](3))}】")
        return "".join(out)

    def _spaced(self, lang: str, mu: float) -> str:
        rng = self.rng
        words = self.zipf[lang](self._n(mu))
        if lang == "de":
            words = [w.title() if rng.random() < 0.4 else w for w in words]
        parts = [words[0]]
        for w in words[1:]:
            p = rng.random()
            parts.append(", " if p < 0.05 else ("، " if lang == "ar" and p < 0.08 else " "))
            parts.append(w)
        if rng.random() < 0.08:
            parts.insert(rng.randrange(len(parts) + 1), f" {rng.choice(_LATIN_BITS)} ")
        return "".join(parts) + ("." if rng.random() < 0.15 else "")

    def __call__(self, lang: str) -> str:
        rng = self.rng
        if lang == "zh":
            text = self._glued("zh", 2.0, ["，", "。", "、", "！", "（", "）", "“", "”", " "])
        elif lang == "ja":
            text = self._glued("ja", 2.2, ["、", "。", "「", "」", "！", "・", " ", "～"])
        elif lang == "th":
            text = self._glued("th", 1.8, [" ", "!", " - "])
        elif lang == "mixed":  # bilingual product / tourism captions
            a, b = rng.sample(["zh", "ja", "th", "de", "ar", "en"], 2)
            text = f"{self(a)} | {self(b)}" if rng.random() < 0.5 else f"{self(a)} {rng.choice(_LATIN_BITS)}"
        else:
            text = self._spaced(lang, 2.0)
        if rng.random() < 0.03:  # stray whitespace, stripped by MetaCLIP 2
            text = rng.choice([" ", "\u00a0", "\u3000", "\n"]) + text + rng.choice([" ", "\u00a0", "\u3000"])
        return text


MIX = {"en": 0.40, "de": 0.10, "zh": 0.15, "ja": 0.10, "th": 0.05, "ar": 0.10, "mixed": 0.10}


def worldwide_captions(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` captions in the ``MIX`` of languages and their language labels; ~30% repeats."""
    rng = random.Random(seed)
    make = CaptionMaker(seed)
    langs = list(MIX)
    cum = list(itertools.accumulate(MIX.values()))
    labels = rng.choices(langs, cum_weights=cum, k=n)
    english = iter(bench_captions(max(1, labels.count("en")), seed))
    popular = [(lang, make(lang)) for lang in rng.choices([x for x in langs if x != "en"], k=2000)]
    pop_cum = list(itertools.accumulate(1.0 / (r + 1.0) ** 1.1 for r in range(len(popular))))
    texts, out_labels = [], []
    for lang in labels:
        if lang == "en":
            texts.append(next(english))
            out_labels.append(lang)
        elif rng.random() < 0.30:
            plang, text = rng.choices(popular, cum_weights=pop_cum)[0]
            texts.append(text)
            out_labels.append(plang)
        else:
            texts.append(make(lang))
            out_labels.append(lang)
    return texts, out_labels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions", type=int, default=100_000)
    ap.add_argument("--en-entries", type=int, default=500_000)
    ap.add_argument("--per-lang-entries", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-rows", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-breakdown", action="store_true", help="skip the per-language rates")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one match_arrow pass")
    args = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, honestly

    entries = worldwide_metadata(args.en_entries, args.per_lang_entries, args.seed)
    captions, labels = worldwide_captions(args.captions, args.seed)
    n = len(captions)
    mix = Counter(labels)
    print(f"metadata: {len(entries):,} entries; captions: {n:,} ({len(set(captions)):,} distinct), mean "
          f"{sum(map(len, captions)) / n:.1f} chars; mix {', '.join(f'{k} {v / n:.0%}' for k, v in mix.items())}; "
          "one core")

    gc.collect()
    rss0 = rss_mb()
    t0 = time.perf_counter()
    ref_matcher = Matcher(entries, rule=RULE)
    ref_build = time.perf_counter() - t0
    rss1 = rss_mb()
    t0 = time.perf_counter()
    fast = FastMatcher(entries, rule=RULE)
    fast_build = time.perf_counter() - t0
    rss2 = rss_mb()
    n_chars = 0 if fast._chars is None else len(fast._chars.key_ids_flat)
    print(f"build: pyahocorasick automaton {ref_build:.2f} s, +{rss1 - rss0:.0f} MB RSS; FastMatcher "
          f"{fast_build:.2f} s, +{rss2 - rss1:.0f} MB RSS ({n_chars:,} entries on the character path, "
          f"{fast.n_never_match} can never match)")

    arrow = pa.array(captions, pa.string())
    batches = [arrow.slice(i, args.batch_rows) for i in range(0, n, args.batch_rows)]
    ref_t, ref_ids = best_of(args.repeat, n, lambda: ref_matcher.match_batch(captions))
    fast_t, fast_lists = best_of(args.repeat, n, lambda: [fast.match_arrow(b) for b in batches])
    nodedup_t, nodedup = best_of(args.repeat, n, lambda: [fast.match_arrow(b, dedup=False) for b in batches])
    fast_ids = [ids for part in fast_lists for ids in part.to_pylist()]
    identical = fast_ids == ref_ids and [ids for part in nodedup for ids in part.to_pylist()] == ref_ids
    print(f"reference Matcher(rule='metaclip2') (automaton.iter per caption): {ref_t.rate()}; "
          f"{sum(map(len, ref_ids)) / n:.2f} matched ids per caption")
    print(f"FastMatcher(rule='metaclip2').match_arrow, {args.batch_rows:,}-row batches: {fast_t.rate()}; "
          f"{fast_t.ratio(ref_t)}")
    print(f"  same, repeated captions not matched once (dedup=False): {nodedup_t.rate()}; {nodedup_t.ratio(ref_t)}")

    if not args.no_breakdown:
        print("per language (one timed pass each):")
        for lang in MIX:
            sub = [t for t, lab in zip(captions, labels) if lab == lang]
            if not sub:
                continue
            sub_arrow = pa.array(sub, pa.string())
            sub_batches = [sub_arrow.slice(i, args.batch_rows) for i in range(0, len(sub), args.batch_rows)]
            r_t, r_ids = best_of(1, len(sub), lambda: ref_matcher.match_batch(sub))
            f_t, _ = best_of(1, len(sub), lambda: [fast.match_arrow(b) for b in sub_batches])
            print(f"  {lang:<6} {len(sub):>7,} captions, {sum(map(len, r_ids)) / len(sub):5.1f} ids each: reference "
                  f"{len(sub) / r_t.wall:>9,.0f}/s, FastMatcher {len(sub) / f_t.wall:>9,.0f}/s, "
                  f"{r_t.wall / f_t.wall:.1f}x")
    print(f"load average {os.getloadavg()[0]:.1f} (shared machine: absolute figures are noisy)")
    print(f"identical ids: {identical}")
    assert identical, "FastMatcher and Matcher disagree"

    if args.profile:
        print_profile(fast, batches, 20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
