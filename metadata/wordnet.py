"""WordNet 3.0 synset names as metadata entries, read with nltk's own WordNet reader.

MetaCLIP's first source is "every WordNet synset", named the way nltk names synsets: the first
lemma, lowercased, ``lemma.pos.NN``; the entry is the part before the first ``.`` with ``_`` turned
into a space. Using nltk's reader (not a hand parser) keeps that rule identical to MetaCLIP's.

nltk cannot read Debian's ``/usr/share/wordnet`` as shipped: the ``lexnames`` file is missing (nltk
opens it in the constructor). So we assemble a reader folder in a cache directory: symlinks copies of the dict files plus the standard WordNet 3.0 ``lexnames`` table. An nltk_data
``corpora/wordnet`` folder that already has ``lexnames`` is used as it is. Never ``nltk.download``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from curation.errors import InputError

log = logging.getLogger(__name__)

#: Files nltk's reader opens for synset enumeration (index.sense / cntlist.rev are optional).
REQUIRED_FILES = tuple(f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv"))
OPTIONAL_FILES = ("noun.exc", "verb.exc", "adj.exc", "adv.exc", "index.sense", "cntlist.rev")

#: WordNet 3.0's lexicographer file table (``lexnames``): number, name, syntactic category.
LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
]
_CATEGORY = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


def lexnames_text() -> str:
    """The ``lexnames`` file content nltk expects (``NN name category`` per line)."""
    return "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def _cache_root() -> Path:
    base = os.environ.get("METACURATE_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "metacurate"


def prepare_reader_dir(wordnet_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a folder nltk's WordNetCorpusReader can open for the dict files in ``wordnet_dir``.

    Why a folder: the reader needs ``lexnames`` next to the data files. The folder name is keyed by
    the resolved source path, and it is built under a temporary name then renamed (atomic), so
    concurrent builders never see a half-made folder.
    """
    src = Path(wordnet_dir)
    if not src.is_dir():
        raise InputError(f"WordNet directory not found: {src} (give the folder holding data.noun, "
                         "index.noun, …; Debian: `apt-get install wordnet-base` -> /usr/share/wordnet)")
    if not (src / "data.noun").is_file() and (src / "corpora" / "wordnet" / "data.noun").is_file():
        src = src / "corpora" / "wordnet"  # an nltk_data root was given
    missing = [f for f in REQUIRED_FILES if not (src / f).is_file()]
    if missing:
        raise InputError(f"{src}: not a WordNet 3.0 dict folder, missing {', '.join(missing)}")
    if (src / "lexnames").is_file():
        return src
    key = hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir else _cache_root()
    target = root / f"wordnet-{key}"
    if (target / "lexnames").is_file() and all((target / f).exists() for f in REQUIRED_FILES):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".wordnet-{key}-", dir=root))
    try:
        for name in REQUIRED_FILES + OPTIONAL_FILES:
            if (src / name).is_file():
                # copies, not symlinks: nltk's path sandbox refuses links that leave the folder
                shutil.copyfile(src / name, tmp / name)
        (tmp / "lexnames").write_text(lexnames_text(), encoding="utf-8")
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race: use its folder
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _reader_class():
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class EnglishWordNetReader(WordNetCorpusReader):
        """nltk's reader without the cross-version sense map.

        ``map_wn`` maps this WordNet onto nltk_data's installed ``corpora/wordnet`` via
        ``index.sense`` (Debian ships neither); the map only serves the multilingual OMW
        functions, which we do not use, so it is skipped.
        """

        def map_wn(self, version: str = "wordnet"):  # noqa: D401 - nltk's signature
            return None

    return EnglishWordNetReader


def open_reader(wordnet_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
    """nltk's ``WordNetCorpusReader`` over ``wordnet_dir`` (no OMW: English names only)."""
    import nltk

    folder = prepare_reader_dir(wordnet_dir, cache_dir)
    # nltk only opens corpora under nltk.data.path: authorise exactly this folder.
    if str(folder) not in nltk.data.path:
        nltk.data.path.append(str(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": expected
        try:
            return _reader_class()(str(folder), None)
        except (OSError, ValueError, AssertionError) as exc:  # PermissionError is an OSError
            raise InputError(f"{wordnet_dir}: nltk could not read this WordNet folder ({exc})") from exc


def synset_entry(synset_name: str) -> str:
    """nltk's synset name -> entry: cut at the first ``.``, ``_`` -> space, lowercase."""
    return synset_name.split(".", 1)[0].replace("_", " ").lower()


def _source_signature(src: Path) -> str:
    """Sizes and mtimes of the dict files: the cache key of the computed names."""
    parts = [str(src.resolve())]
    for name in REQUIRED_FILES:
        st = (src / name).stat()
        parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def wordnet_entries(wordnet_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None
                    ) -> tuple[list[tuple[str, int]], dict]:
    """Distinct synset-name entries with how many synsets carry each name, plus stats.

    Reading all 117,659 synsets through nltk takes ~15 s, so the result is cached in the
    cache folder, keyed by the reader folder and its files' sizes and mtimes.
    """
    folder = prepare_reader_dir(wordnet_dir, cache_dir)
    cache_file = Path(cache_dir or _cache_root()) / f"wordnet-names-{_source_signature(folder)}.json"
    if cache_file.is_file():
        data = json.loads(cache_file.read_text(encoding="utf-8"))
        names = [(e, int(n)) for e, n in data["names"]]
        stats = data["stats"]
    else:
        reader = open_reader(wordnet_dir, cache_dir)
        counts: Counter = Counter()
        n_synsets = 0
        for synset in tqdm(reader.all_synsets(), total=117_659, desc="WordNet synsets",
                           unit="synset", disable=None, leave=False):
            n_synsets += 1
            entry = synset_entry(synset.name())
            if entry:
                counts[entry] += 1
        names = sorted(counts.items())
        stats = {"synsets": n_synsets, "distinct_names": len(names)}
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"names": names, "stats": stats}), encoding="utf-8")
            os.replace(tmp, cache_file)
        except OSError as exc:  # a read-only cache only costs time
            log.warning("could not cache WordNet names in %s: %s", cache_file, exc)
    log.info("WordNet: %d synsets -> %d distinct names", stats["synsets"], stats["distinct_names"])
    return names, dict(stats)
