"""A labelled multilingual caption set for comparing language-ID libraries (labelled by construction).

Why: language ID decides which per-language metadata and balancing threshold a caption gets
(MetaCLIP 2 "worldwide" curation), and web alt-text is short, noisy and mixed: "Nike Air Max 90
Herren Sneaker weiß | zalando.de", "iPhone 15 ケース 手帳型". Public LID benchmarks use sentences,
so this builds captions that look like alt-text instead, offline and deterministically.

How: 43 languages. 41 come from ``wordfreq`` word lists (``wordfreq.top_n_list(lang, 6000)``;
every wordfreq language except ``sh``, whose Serbo-Croatian list mixes hr/sr/bs), two (Thai and
Swahili, which wordfreq lacks) from word lists written here. Each list is cleaned so that a label
is trustworthy: a word must be letters of the language's script only (no digits, no punctuation),
and a word of a Latin-script language is dropped where ``wordfreq`` finds it more frequent in
English than in that language (loanwords such as "the", "experience", "online").

Captions (``kind``):

* ``normal``: 2-12 words drawn with a flattened Zipf law (content words get their share, not
  only function words), cased like alt-text (as is / Capitalised / Title Case / UPPER for cased
  scripts), no spaces between words in zh/ja/th (sometimes a space between phrases, as on the
  web). About 45% are ``decorated`` with alt-text noise: a year, size, price or model number,
  a URL or site name, a file name (``IMG_1234.jpg``), hashtags, or a Latin-script brand name
  (which makes a non-Latin caption ``mixed`` script: "iPhone 15 ケース").
* ``short``: 1-3 words, no decoration: the hard case ("Zapatos rojos", "夜景").

Labels are ISO 639-1 codes as ``curation.lid`` normalises them: wordfreq's ``nb`` is ``no`` and
``fil`` is ``tl``. Japanese captions always hold at least one kana word (a kanji-only caption is
Chinese as much as Japanese; real Japanese alt-text nearly always has kana).

Run ``python benchmarks/lid_data.py [--out captions.jsonl]`` to write or inspect the set.
"""
from __future__ import annotations

import argparse
import functools
import json
import random
import sys
import unicodedata
from dataclasses import asdict, dataclass

# label -> (wordfreq code or None for a list below, script)
LANGUAGES: dict[str, tuple[str | None, str]] = {
    "ar": ("ar", "ARABIC"), "bg": ("bg", "CYRILLIC"), "bn": ("bn", "BENGALI"), "ca": ("ca", "LATIN"),
    "cs": ("cs", "LATIN"), "da": ("da", "LATIN"), "de": ("de", "LATIN"), "el": ("el", "GREEK"),
    "en": ("en", "LATIN"), "es": ("es", "LATIN"), "fa": ("fa", "ARABIC"), "fi": ("fi", "LATIN"),
    "fr": ("fr", "LATIN"), "he": ("he", "HEBREW"), "hi": ("hi", "DEVANAGARI"), "hu": ("hu", "LATIN"),
    "id": ("id", "LATIN"), "is": ("is", "LATIN"), "it": ("it", "LATIN"), "ja": ("ja", "JA"),
    "ko": ("ko", "HANGUL"), "lt": ("lt", "LATIN"), "lv": ("lv", "LATIN"), "mk": ("mk", "CYRILLIC"),
    "ms": ("ms", "LATIN"), "nl": ("nl", "LATIN"), "no": ("nb", "LATIN"), "pl": ("pl", "LATIN"),
    "pt": ("pt", "LATIN"), "ro": ("ro", "LATIN"), "ru": ("ru", "CYRILLIC"), "sk": ("sk", "LATIN"),
    "sl": ("sl", "LATIN"), "sv": ("sv", "LATIN"), "sw": (None, "LATIN"), "ta": ("ta", "TAMIL"),
    "th": (None, "THAI"), "tl": ("fil", "LATIN"), "tr": ("tr", "LATIN"), "uk": ("uk", "CYRILLIC"),
    "ur": ("ur", "ARABIC"), "vi": ("vi", "LATIN"), "zh": ("zh", "CJK"),
}
NO_SPACE = frozenset({"zh", "ja", "th"})
LOWER_RESOURCE = ("is", "lt", "lv", "mk", "sl", "sw", "ta", "bn", "ur", "tl")

# Thai: everyday alt-text vocabulary (shops, food, travel, home, people), written here.
THAI = """
บ้าน รถ แมว หมา สวย อาหาร ร้าน ทะเล ภูเขา ดอกไม้ เสื้อ ผ้า สี แดง ขาว ดำ เขียว น้ำเงิน เหลือง ใหม่ เก่า
ใหญ่ เล็ก ราคา ถูก ขาย ซื้อ ลด โปรโมชั่น ภาพ รูป ถ่าย วัน คืน เช้า เย็น ปี เดือน ประเทศไทย กรุงเทพ
เชียงใหม่ ภูเก็ต วัด พระ ตลาด โรงเรียน นักเรียน ครู เด็ก ผู้หญิง ผู้ชาย ครอบครัว ความรัก งาน แต่งงาน
ของขวัญ เค้ก กาแฟ ชา ข้าว ไก่ หมู ปลา ผัก ผลไม้ มะม่วง กล้วย ทุเรียน ต้มยำ ส้มตำ ก๋วยเตี๋ยว อร่อย
โรงแรม ห้อง ห้องนอน ห้องน้ำ ห้องครัว โต๊ะ เก้าอี้ เตียง ประตู หน้าต่าง สวน ต้นไม้ ท้องฟ้า พระอาทิตย์
ฝน แม่น้ำ ถนน เมือง หมู่บ้าน การท่องเที่ยว เที่ยว เดินทาง รถไฟ เครื่องบิน เรือ จักรยาน โทรศัพท์ มือถือ
หนังสือ เพลง ดนตรี ภาพยนตร์ ฟุตบอล กีฬา สุขภาพ ความงาม แฟชั่น กระเป๋า รองเท้า นาฬิกา แหวน ทอง เงิน
สินค้า คุณภาพ ดี มาก ที่สุด และ ของ ใน กับ สำหรับ ที่ การ ความ เป็น มี ไม่ จาก ให้ ได้ ไป มา คน สวัสดี
ขอบคุณ ยินดีต้อนรับ ชุด ผม ใบหน้า ยิ้ม น่ารัก แบบ ลาย ไม้ หิน เหล็ก ตกแต่ง ออกแบบ ภายใน คอนโด เช่า
ที่ดิน ข่าว วันนี้ พรุ่งนี้ เทศกาล สงกรานต์ ลอยกระทง ปีใหม่ ช้าง นก ม้า วัว ชายหาด เกาะ น้ำตก ป่า
ธรรมชาติ สวนสาธารณะ ผู้ใหญ่ คุณแม่ คุณพ่อ ลูก เพื่อน ร้อน เย็นสบาย หวาน เผ็ด เปรี้ยว ทำอาหาร กิน ดื่ม
น้ำ นม ขนม ขนมปัง ไข่ เนื้อ กุ้ง ปู หอย ผลงาน ศิลปะ ภาพวาด วัฒนธรรม ประเพณี ชีวิต ความสุข
""".split()

# Swahili: the same kind of vocabulary, written here.
SWAHILI = """
nyumba gari paka mbwa mzuri chakula duka bahari mlima maua shati nguo rangi nyekundu nyeupe nyeusi
kijani njano mpya zamani kubwa ndogo bei nafuu kuuza kununua punguzo picha siku usiku asubuhi jioni
mwaka mwezi msikiti kanisa soko shule mwanafunzi mwalimu mtoto watoto mwanamke wanawake mwanaume
familia upendo kazi harusi zawadi keki kahawa chai wali kuku nyama samaki mboga matunda embe ndizi
tamu hoteli chumba kulala choo jiko meza kiti kitanda mlango dirisha bustani mti miti anga jua mvua
mto barabara mji kijiji utalii safari mashua baiskeli simu kitabu vitabu wimbo muziki mpira michezo
afya urembo mkoba viatu saa pete dhahabu fedha bidhaa ubora sana na ya wa kwa katika ni hii huu yetu
wetu habari leo kesho sikukuu tembo simba twiga ufukwe kisiwa maporomoko msitu asili karibu asante
mama baba rafiki marafiki furaha sherehe mavazi kitenge kanga mtindo ubunifu nyumbani kupika kula
kunywa maji moto mkate maziwa sokoni mjini wakati mtu watu bora mwisho mwanzo hapa pamoja juu chini
nzuri wazazi mzee vijana kijana mpishi ndege wanyama mnyama pwani jangwa ziwa mawingu nyota mwezi
elimu chuo hospitali daktari mgonjwa dawa kilimo shamba mkulima mahindi maharagwe viazi nazi
""".split()

BRANDS = ["Nike", "Adidas", "Samsung Galaxy S23", "iPhone 15 Pro", "IKEA", "Toyota Corolla", "Coca-Cola",
          "Canon EOS 5D", "LEGO", "Zara", "H&M", "Sony", "BMW X5", "Honda", "Xiaomi", "Huawei P30", "Netflix",
          "YouTube", "Instagram", "Amazon", "Google Pixel", "Lenovo ThinkPad", "Gucci", "Uniqlo", "Nintendo Switch"]
TLD = {"de": "de", "fr": "fr", "es": "es", "it": "it", "nl": "nl", "pl": "pl", "pt": "com.br", "ru": "ru",
       "uk": "com.ua", "ja": "co.jp", "zh": "cn", "ko": "co.kr", "th": "co.th", "vi": "vn", "id": "co.id",
       "tr": "com.tr", "sv": "se", "no": "no", "da": "dk", "fi": "fi", "cs": "cz", "sk": "sk", "hu": "hu",
       "ro": "ro", "el": "gr", "he": "co.il", "ar": "com.sa", "fa": "ir", "hi": "in", "bn": "com.bd",
       "ta": "in", "ur": "pk", "ms": "com.my", "tl": "ph", "sw": "co.ke", "bg": "bg", "mk": "mk",
       "sl": "si", "lt": "lt", "lv": "lv", "is": "is", "ca": "cat", "en": "com"}
SITES = ["shop", "store", "photos", "images", "news", "blog", "market", "media", "stock", "deals"]
CASED = frozenset({"LATIN", "CYRILLIC", "GREEK"})


@dataclass(frozen=True)
class Caption:
    text: str
    lang: str
    kind: str  # "normal" (2-12 words) or "short" (1-3 words)
    n_words: int
    decorated: bool  # has alt-text noise (numbers, URL, file name, hashtags, brand)
    mixed: bool  # holds Latin-script tokens in a non-Latin-script caption


def _in_script(word: str, script: str) -> bool:
    """Every letter of ``word`` is in ``script`` (marks and ZWNJ/ZWJ allowed); no digits/punctuation."""
    has_letter = False
    for ch in word:
        cat = unicodedata.category(ch)
        if cat.startswith("M") or ch in "\u200c\u200d":
            continue
        if not cat.startswith("L"):
            return False
        name = unicodedata.name(ch, "")
        if script == "JA":
            ok = name.startswith(("HIRAGANA", "KATAKANA", "CJK UNIFIED")) or ch == "ー"
        elif script == "CJK":
            ok = name.startswith("CJK UNIFIED")
        else:
            ok = name.startswith(script)
        if not ok:
            return False
        has_letter = True
    return has_letter


def _has_kana(word: str) -> bool:
    return any(unicodedata.name(c, "").startswith(("HIRAGANA", "KATAKANA")) for c in word)


@functools.lru_cache(maxsize=None)
def word_list(lang: str, n: int = 6000) -> tuple[str, ...]:
    """The cleaned word list of ``lang`` (a label of ``LANGUAGES``), most frequent first."""
    code, script = LANGUAGES[lang]
    if code is None:
        return tuple(dict.fromkeys({"th": THAI, "sw": SWAHILI}[lang]))
    import wordfreq

    out = []
    for w in wordfreq.top_n_list(code, n):
        if not _in_script(w, script):
            continue
        if script == "LATIN" and lang != "en" and wordfreq.word_frequency(w, "en") > wordfreq.word_frequency(w, code):
            continue
        out.append(w)
    return tuple(out)


def _number(rng: random.Random) -> str:
    """A year, size, price, share or model number, as alt-text carries them."""
    k = rng.randrange(7)
    if k == 0:
        return str(rng.randrange(1990, 2025))
    if k == 1:
        return f"{rng.randrange(2, 60)}x{rng.randrange(2, 90)} cm"
    if k == 2:
        return f"${rng.randrange(5, 500)}.99"
    if k == 3:
        return f"{rng.randrange(10, 80)}%"
    if k == 4:
        return f"No. {rng.randrange(1, 40)}"
    return ("4K", "1920x1080")[k - 5]


class _Maker:
    def __init__(self, lang: str, rng: random.Random):
        self.lang, self.rng = lang, rng
        self.script = LANGUAGES[lang][1]
        self.words = word_list(lang)
        if LANGUAGES[lang][0] is None:  # hand lists: uniform
            self.cum = list(range(1, len(self.words) + 1))
        else:  # flattened Zipf: P(rank) ∝ 1 / (rank + 100)
            acc, self.cum = 0.0, []
            for r in range(len(self.words)):
                acc += 1.0 / (r + 100.0)
                self.cum.append(acc)
        self.kana = [w for w in self.words if _has_kana(w)] if lang == "ja" else None

    def draw(self, k: int) -> list[str]:
        words = self.rng.choices(self.words, cum_weights=self.cum, k=k)
        if self.kana is not None and not any(map(_has_kana, words)):
            words[self.rng.randrange(k)] = self.rng.choice(self.kana[:1500])
        return words

    def _case(self, words: list[str]) -> list[str]:
        if self.script not in CASED:
            return words
        r = self.rng.random()
        if r < 0.25:
            return [words[0][:1].upper() + words[0][1:], *words[1:]]
        if r < 0.35:
            return [w[:1].upper() + w[1:] for w in words]
        if r < 0.40:
            return [w.upper() for w in words]
        return words

    def _join(self, words: list[str]) -> str:
        if self.lang not in NO_SPACE:
            return " ".join(words)
        out = words[0]
        for w in words[1:]:  # sometimes a space between phrases, as alt-text often has
            out += (" " if self.rng.random() < 0.15 else "") + w
        return out

    def short(self) -> Caption:
        k = self.rng.choice((1, 1, 2, 2, 2, 3, 3))
        return Caption(self._join(self._case(self.draw(k))), self.lang, "short", k, False, False)

    def normal(self) -> Caption:
        rng = self.rng
        k = rng.choices(range(2, 13), weights=(6, 9, 10, 10, 9, 8, 6, 5, 4, 3, 2))[0]
        text = self._join(self._case(self.draw(k)))
        decorated = mixed = False
        if rng.random() < 0.45:
            decorated = True
            r = rng.random()
            tld = TLD.get(self.lang, "com")
            if r < 0.18:
                text = f"{text} {_number(rng)}"
            elif r < 0.34:
                sep = rng.choice([" | ", " - ", " :: "])
                text = f"{text}{sep}{rng.choice(SITES)}.{tld}"
            elif r < 0.46:
                text = f"{text} https://www.{rng.choice(SITES)}.{tld}/p/{rng.randrange(10**5, 10**7)}"
            elif r < 0.58:
                k = rng.randrange(3)
                n = rng.randrange(10000)
                text = (f"IMG_{n:04d}.jpg {text}", f"{text} DSC{n:05d}", f"{text}.png")[k]
            elif r < 0.70:
                tags = " ".join("#" + w for w in self.draw(rng.randrange(1, 3)))
                text = f"{text} {tags}"
            else:
                brand = rng.choice(BRANDS)
                text = f"{brand} {text}" if rng.random() < 0.5 else f"{text} {brand}"
            mixed = self.script != "LATIN" and any(c.isascii() and c.isalpha() for c in text)
        return Caption(text, self.lang, "normal", k, decorated, mixed)


def build_captions(per_lang_normal: int = 80, per_lang_short: int = 40, seed: int = 0,
                   languages: tuple[str, ...] | None = None) -> list[Caption]:
    """The labelled set: ``per_lang_normal`` + ``per_lang_short`` captions per language (deterministic)."""
    out = []
    for i, lang in enumerate(sorted(languages or LANGUAGES)):
        maker = _Maker(lang, random.Random(seed * 1000 + i))
        out += [maker.normal() for _ in range(per_lang_normal)]
        out += [maker.short() for _ in range(per_lang_short)]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--normal", type=int, default=80)
    ap.add_argument("--short", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write JSON lines here; else print a sample per language")
    args = ap.parse_args(argv)
    caps = build_captions(args.normal, args.short, args.seed)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for c in caps:
                f.write(json.dumps(asdict(c), ensure_ascii=False) + "\n")
        print(f"{len(caps)} captions, {len(LANGUAGES)} languages -> {args.out}")
        return 0
    for lang in sorted(LANGUAGES):
        mine = [c for c in caps if c.lang == lang]
        print(f"{lang} ({len(word_list(lang))} words): " + " ‖ ".join(c.text for c in mine[:3] + mine[-2:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
