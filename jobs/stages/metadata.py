"""Stage `metadata`: the entry list every later stage matches against.

Either imports a list (``metadata.path``: a MetaCLIP-format ``metadata.json``, or a folder this
stage wrote before) or builds one from WordNet 3.0 + Wikipedia dumps (unigrams by count, bigrams
by PMI) + pageview files (titles by views), merged in that order with exact-string dedup and a
cap per source, as MetaCLIP does. Outputs in ``RUN/metadata/``: ``entries.parquet`` (entry_id,
entry, source, score, lang), ``metadata.json`` (the list itself, id = position, the file
MetaCLIP's tools read), ``_lists/<lang>.json`` (one language's strings, in id order) and
``_report.json`` (per-language and per-source counts, lint findings).

Several languages (``metadata.languages``; MetaCLIP 2 "worldwide"): each language is built from
its own sources (English WordNet 3.0 for ``en``, Open Multilingual Wordnet tab files for the
others, its own Wikipedia dump, its own project's pageview lines) with its own thresholds
(``metadata.thresholds``) and tokeniser (``metadata.segmenters``; ``metadata.segment``), merged
on its own, and the lists are concatenated in language order: the same string in two languages
is two entries. An English-only build is exactly the list it always was.

The Wikipedia and pageview counting runs on Spark (``jobs.wikicount``); a WordNet-only build or
an import needs no Spark session.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
import typing
from dataclasses import asdict, dataclass

import pyarrow as pa

from curation.errors import InputError
from curation.matching import load_metadata_json
from curation.rundir import StageDir, parquet_rows
from curation.settings import SettingError, build, setting
from curation.storage import Storage, join
from jobs.stages.base import Stage, StageContext
from metadata import pageviews as pv
from metadata import segment
from metadata.merge import (DEFAULT_CAPS, SourceCandidates, build_report, combine_reports, effective_cap,
                            list_path, merge_sources, write_outputs)

log = logging.getLogger(__name__)

ENTRIES = "entries.parquet"
LIST = "metadata.json"
REPORT = "_report.json"
ID_MAP = "_id_map.parquet"
LANG_PLACEHOLDER = "{lang}"
_LANG_CODE = re.compile(r"^[a-z]{2,8}(?:[-_][a-z0-9]{1,8})*$")


@dataclass
class MetadataConfig:
    path: str | None = setting(None, "an existing metadata.json (a JSON list of strings, id = position; "
                                     "e.g. MetaCLIP's), or a folder written by `metacurate metadata build`, "
                                     "used as it is; unset: build from wordnet / omw / wiki / pageviews",
                               flag="--metadata")
    lang: str = setting("en", "import: the language of the imported list's entries (an entries.parquet beside "
                              "it with a lang column is used as it is)")
    languages: list = setting(["en"], "build: the languages to build (ISO 639-1 codes, e.g. [en, de, zh]); each "
                                      "language's entries follow the previous one's in metadata.json",
                              metavar="LANG")
    wordnet: str | None = setting(None, "build: WordNet 3.0 dict folder (e.g. /usr/share/wordnet): English's "
                                        "WordNet names", metavar="DIR")
    omw: str | None = setting(None, "build: Open Multilingual Wordnet wn-data-<code>.tab files (a folder, "
                                    "searched recursively, a glob or a file): every other language's WordNet "
                                    "names", metavar="DIR")
    wiki: str | dict | None = setting(None, "build: pages-articles*.xml.bz2 file, glob or folder, or a parquet of "
                                            "title,text; with several languages a path holding {lang} "
                                            "(dumps/{lang}wiki-*.xml.bz2) or a mapping {lang: path}",
                                      metavar="DUMP")
    pageviews: str | dict | None = setting(None, "build: pageview dump files, e.g. 'DIR/*.gz' (each language "
                                                 "reads its own project's lines of them); {lang} or a mapping "
                                                 "{lang: glob} also work", metavar="GLOB")
    segmenters: dict = setting({}, "build: Wikipedia tokeniser per language, over the defaults (en: words_lower; "
                                   "zh: jieba, ja: mecab, th: thai; others: words): one of "
                                   + ", ".join(segment.SEGMENTERS))
    thresholds: dict = setting({}, "build: per-language overrides of the thresholds, caps and pageview_project "
                                   "below, e.g. {zh: {unigram_min_count: 50, cap_title: 30000}}")
    unigram_min_count: int = setting(100, "build: a Wikipedia word becomes an entry at this count", minimum=1)
    bigram_min_count: int = setting(5, "build: word pairs seen fewer times are ignored", minimum=1)
    bigram_min_pmi: float = setting(30.0, "build: log2 PMI a word pair needs to become an entry", finite=True)
    pageview_project: str = setting(pv.DEFAULT_PROJECT, "build: pageview project whose titles count for English "
                                                        "(e.g. en); any other language reads its own code")
    pageview_min_line_views: int = setting(pv.DEFAULT_MIN_LINE_VIEWS, "build: pageview lines below this are "
                                           "ignored", minimum=0)
    pageview_min_total_views: int = setting(pv.DEFAULT_MIN_TOTAL_VIEWS, "build: a title becomes an entry at "
                                            "this many views in total", minimum=0)
    cap_unigram: int | None = setting(DEFAULT_CAPS["unigram"], "build: at most this many unigram entries "
                                      "(null: no cap)", minimum=0)
    cap_bigram: int | None = setting(DEFAULT_CAPS["bigram"], "build: at most this many bigram entries "
                                     "(null: no cap)", minimum=0)
    cap_title: int | None = setting(DEFAULT_CAPS["title"], "build: at most this many title entries "
                                    "(null: no cap)", minimum=0)
    cap_unigram_share: float | None = setting(None, "build: also at most this share of a language's unigram "
                                                    "candidates (MetaCLIP 2: 0.1 for every language but en)",
                                              minimum=0, finite=True)
    cap_title_share: float | None = setting(None, "build: also at most this share of a language's title "
                                                  "candidates (MetaCLIP 2: 0.76 for every language but en)",
                                            minimum=0, finite=True)
    unit_mb: float | None = setting(None, "build: compressed MB of dump per Spark task (null: automatic)",
                                    minimum=1e-6)
    flush_keys: int = setting(4_000_000, "build: distinct word pairs a counting task holds before it "
                              "emits partial sums (memory per task)", minimum=1000)

    def validate(self) -> None:
        if self.path and (self.wordnet or self.omw or self.wiki or self.pageviews):
            raise SettingError("path", "and the build sources (wordnet, omw, wiki, pageviews) exclude each other: "
                                       "import a list or build one")
        if not _LANG_CODE.match(self.lang):
            raise SettingError("lang", f"must be a language code like en or zh, got {self.lang!r}")
        if not self.languages:
            raise SettingError("languages", "must name at least one language, e.g. [en]")
        for code in self.languages:
            if not isinstance(code, str) or not _LANG_CODE.match(code):
                raise SettingError("languages", f"must hold language codes like en, de, zh; got {code!r}")
        if len(set(self.languages)) != len(self.languages):
            raise SettingError("languages", f"names a language twice: {self.languages}")
        if self.wordnet and "en" not in self.languages:
            raise SettingError("wordnet", "is English WordNet 3.0, but `metadata.languages` has no en; "
                                          "the other languages' WordNet names come from `metadata.omw`")
        for key in ("wiki", "pageviews", "segmenters", "thresholds"):
            value = getattr(self, key)
            if isinstance(value, dict):
                other = [k for k in value if k not in self.languages]
                if other:
                    raise SettingError(key, f"names {other}, which `metadata.languages` ({self.languages}) "
                                            "does not build: add them there or remove them here")
        for key in ("wiki", "pageviews"):
            value = getattr(self, key)
            if isinstance(value, dict):
                bad = [k for k, v in value.items() if not isinstance(v, str) or not v]
                if bad:
                    raise SettingError(key, f"must map each language to a path; {bad[0]!r} maps to "
                                            f"{value[bad[0]]!r}")
        if (isinstance(self.wiki, str) and len(self.languages) > 1 and LANG_PLACEHOLDER not in self.wiki):
            raise SettingError("wiki", f"is one dump but {len(self.languages)} languages are built: put {{lang}} "
                                       f"in the path (e.g. dumps/{{lang}}wiki-latest-pages-articles.xml.bz2) or give "
                                       "a mapping {lang: path}")
        for lang, name in self.segmenters.items():
            if not isinstance(name, str) or name not in segment.SEGMENTERS:
                raise SettingError(f"segmenters.{lang}", f"must be one of {', '.join(segment.SEGMENTERS)}, "
                                                         f"got {name!r}")
        for lang, values in self.thresholds.items():
            if not isinstance(values, dict):
                raise SettingError(f"thresholds.{lang}", f"must be a mapping of settings, e.g. "
                                                         f"{{unigram_min_count: 50}}, got {values!r}")
        resolved = resolve_languages(self)  # checks every `thresholds` value against its setting's rules
        for ls in resolved:
            if ls.wiki and ls.segmenter is None:
                raise SettingError("segmenters", f"{ls.lang} is written without spaces between words and has no "
                                                 f"built-in tokeniser: set `metadata.segmenters: {{{ls.lang}: "
                                                 "NAME}}` (words: a phrase is one token; chars: a letter is one)")
        projects: dict[str, str] = {}
        for ls in resolved:
            if ls.pageviews:
                if ls.pageview_project in projects:
                    raise SettingError("thresholds", f"{projects[ls.pageview_project]} and {ls.lang} both read "
                                                     f"pageview project {ls.pageview_project!r}: give each "
                                                     "language its own `pageview_project`")
                projects[ls.pageview_project] = ls.lang

    def sources_given(self) -> bool:
        return bool(self.path or self.wordnet or self.omw or self.wiki or self.pageviews)


#: Settings that change how the build runs, not what it produces (left out of the fingerprint).
_RUNTIME_ONLY = ("unit_mb", "flush_keys")
#: Settings `metadata.thresholds` may set per language.
PER_LANGUAGE = ("unigram_min_count", "bigram_min_count", "bigram_min_pmi", "pageview_project",
                "pageview_min_line_views", "pageview_min_total_views", "cap_unigram", "cap_bigram", "cap_title",
                "cap_unigram_share", "cap_title_share")


@functools.lru_cache(maxsize=1)
def _overrides_class() -> type:
    """A dataclass of the per-language settings with MetadataConfig's types and rules, so that
    `metadata.thresholds.<lang>` is validated like the settings it overrides."""
    hints = typing.get_type_hints(MetadataConfig)
    fields = {f.name: f for f in dataclasses.fields(MetadataConfig)}
    return dataclasses.make_dataclass(
        "LanguageThresholds",
        [(k, hints[k], dataclasses.field(default=None, metadata=fields[k].metadata)) for k in PER_LANGUAGE])


@dataclass
class LanguageSettings:
    """What one language's build uses: its inputs, tokeniser, thresholds and caps, resolved."""

    lang: str
    wiki: str | None
    pageviews: str | None
    segmenter: str | None
    unigram_min_count: int
    bigram_min_count: int
    bigram_min_pmi: float
    pageview_project: str
    pageview_min_line_views: int
    pageview_min_total_views: int
    cap_unigram: int | None
    cap_bigram: int | None
    cap_title: int | None
    cap_unigram_share: float | None
    cap_title_share: float | None
    unit_mb: float | None
    flush_keys: int

    def report(self) -> dict:
        """The settings that decide this language's entries (for ``_report.json``)."""
        return {k: v for k, v in asdict(self).items() if k not in ("lang", "wiki", "pageviews") + _RUNTIME_ONLY}


def _input_for(value: str | dict | None, lang: str) -> str | None:
    if isinstance(value, dict):
        return value.get(lang)
    if isinstance(value, str):
        return value.replace(LANG_PLACEHOLDER, lang)
    return None


def resolve_languages(s: MetadataConfig) -> list[LanguageSettings]:
    """Every language's settings: the top-level values, then its `metadata.thresholds` entry."""
    out = []
    for lang in s.languages:
        values = {k: getattr(s, k) for k in PER_LANGUAGE}
        if lang != "en":  # pageview dumps spell Wikipedia's zh_yue as zh-yue
            values["pageview_project"] = lang.replace("_", "-")
        given = s.thresholds.get(lang) or {}
        checked = build(_overrides_class(), given, f"metadata.thresholds.{lang}")  # types coerced, rules kept
        values.update({k: getattr(checked, k) for k in given})
        out.append(LanguageSettings(
            lang=lang, wiki=_input_for(s.wiki, lang), pageviews=_input_for(s.pageviews, lang),
            segmenter=s.segmenters.get(lang) or segment.default_segmenter(lang),
            unit_mb=s.unit_mb, flush_keys=s.flush_keys, **values))
    return out


class MetadataStage(Stage):
    name = "metadata"
    #: 2: entries.parquet has a lang column, and the folder a _lists/ folder
    version = "2"
    help = "the entry list: import a metadata.json, or build it from WordNet + Wikipedia (Spark)"
    section = "metadata"
    Config = MetadataConfig
    section_doc = "the entry list: import one (path) or build one (wordnet, omw, wiki, pageviews), per language"
    cli_actions = "jobs.commands.metadata"
    reject_rows = False

    def check(self, ctx: StageContext) -> None:
        s = ctx.settings(self)
        if not s.sources_given():
            raise InputError("no metadata: set `metadata.path` to a metadata.json (or --metadata FILE), or "
                             "`metadata.wordnet` / `metadata.omw` / `metadata.wiki` / `metadata.pageviews` to "
                             "build one")
        self.inputs(ctx)  # every input exists
        if not s.path:
            for ls in resolve_languages(s):
                if ls.wiki:
                    segment.check_available(ls.segmenter, ls.lang)

    def inputs(self, ctx: StageContext) -> list:
        s = ctx.settings(self)
        st = ctx.storage
        if s.path:
            if not st.exists(s.path):
                raise InputError(f"metadata not found: {s.path} (`metadata.path` in the config, or --metadata)")
            return [st.stamp(u) for u in _import_files(s.path, st)]
        return build_input_stamps(s, st)

    def run(self, ctx: StageContext, out: StageDir) -> dict:
        s = ctx.settings(self)
        if s.path:
            return import_metadata(s.path, out, ctx.storage, s.lang)
        return build_metadata(ctx, s, out)

    def fingerprint_settings(self, settings: MetadataConfig) -> dict:
        return {k: v for k, v in asdict(settings).items() if k not in _RUNTIME_ONLY}

    def output_rows(self, ctx: StageContext, out: StageDir) -> int:
        return parquet_rows(ctx.storage, [entries_url(out)])


STAGE = MetadataStage()


# --------------------------------------------------------------------------- reading the outputs
def entries_url(d: StageDir) -> str:
    return d.path(ENTRIES)


def list_url(d: StageDir) -> str:
    return d.path(LIST)


def language_list_url(d: StageDir, lang: str) -> str:
    """``_lists/<lang>.json``: that language's entry strings, in global id order."""
    return list_path(d.url, lang)


def report_url(d: StageDir) -> str:
    return d.path(REPORT)


def load_entries(d: StageDir) -> list[str]:
    return load_metadata_json(list_url(d), d.storage)


# --------------------------------------------------------------------------- import
def _import_files(path: str, storage: Storage) -> list[str]:
    """The files an import reads: the list, and ``entries.parquet`` beside it when present."""
    if storage.isdir(path):
        listed = join(path, LIST)
        if not storage.exists(listed):
            raise InputError(f"{path} is a folder without {LIST}; point `metadata.path` at a metadata.json "
                             "or at a folder written by `metacurate metadata build`")
        path = listed
    beside = join(path.rsplit("/", 1)[0], ENTRIES) if "/" in path else ENTRIES
    return [path] + ([beside] if storage.exists(beside) else [])


def import_metadata(path: str, out: StageDir, storage: Storage, lang: str = "en") -> dict:
    """Validate + lint a list and write it as this stage's outputs. Sources, scores and languages
    come from an ``entries.parquet`` beside it when that file describes the same list; else
    ``import`` and ``lang`` (`metadata.lang`).

    A string listed twice in one language would split its texts between two ids and so halve its
    count: each is kept once, at its first position (the same string in two languages is two
    entries). The later copies are rejected (``duplicate_entry``) and ``_id_map.parquet`` maps
    every original position to the id it now has."""
    files = _import_files(path, storage)
    entries = load_metadata_json(files[0], storage)
    sources, scores, langs = ["import"] * len(entries), [None] * len(entries), [lang] * len(entries)
    if len(files) > 1:
        t = storage.read_parquet(files[1])
        if t.column_names[:2] == ["entry_id", "entry"] and t.column("entry").to_pylist() == entries:
            sources = [s or "unknown" for s in t.column("source").to_pylist()] if "source" in t.column_names else sources
            if "score" in t.column_names:
                scores = t.column("score").to_pylist()
            if "lang" in t.column_names:
                langs = t.column("lang").to_pylist()
                bad = next((i for i, x in enumerate(langs) if not isinstance(x, str) or not _LANG_CODE.match(x)), None)
                if bad is not None:
                    raise InputError(f"{files[1]}: entry {bad} has language {langs[bad]!r}; the lang column must "
                                     "hold codes like en or zh (or drop the column and set `metadata.lang`)")
        else:
            log.warning("%s does not describe the list in %s; sources are recorded as 'import'", files[1], files[0])
    first: dict[tuple[str, str], int] = {}
    new_id: list[int] = []
    keep: list[int] = []
    for i, e in enumerate(entries):
        key = (langs[i], e)
        if key not in first:
            first[key] = len(keep)
            keep.append(i)
        new_id.append(first[key])
    duplicates = len(entries) - len(keep)
    merged = [(entries[i], sources[i], scores[i]) for i in keep]
    kept_langs = [langs[i] for i in keep]
    extra: dict = {"imported_from": files[0]}
    if duplicates:
        repeated = [(i, entries[i], new_id[i]) for i in range(len(entries)) if keep[new_id[i]] != i]
        extra["duplicates_removed"] = duplicates
        extra["duplicate_examples"] = [{"original_id": i, "entry": e, "kept_as": k} for i, e, k in repeated[:50]]
        storage.write_parquet(pa.table({"original_id": pa.array(range(len(entries)), pa.int32()),
                                        "entry_id": pa.array(new_id, pa.int32())}), out.path(ID_MAP))
        log.warning("metadata: %d entries are listed more than once in %s (e.g. %r); each is kept once, at its "
                    "first position: ids after it shift, %s maps the original positions", duplicates, files[0],
                    repeated[0][1], out.path(ID_MAP))
    blocks = {}
    for code in dict.fromkeys(kept_langs):  # languages in order of first appearance
        ids = [i for i, x in enumerate(kept_langs) if x == code]
        part = [merged[i] for i in ids]
        per_source: dict[str, int] = {}
        for _, src, _ in part:
            per_source[src] = per_source.get(src, 0) + 1
        blocks[code] = build_report(part, {s: {"candidates": n, "kept": n} for s, n in per_source.items()},
                                    ids=ids)
    report = combine_reports(blocks, extra)
    write_outputs(out.url, merged, report, storage, kept_langs)
    lint = report["lint"]
    log.info("metadata: imported %d entries from %s (%d can never match)", len(merged), files[0], lint["never_match"])
    return {"in": len(entries), "out": len(merged), "rejected": {"duplicate_entry": duplicates} if duplicates else {},
            "mode": "import", "entries": len(merged), "entries_per_source": report["entries_per_source"],
            "entries_per_lang": report["entries_per_lang"],
            "lint_never_match": lint["never_match"], "lint_duplicates": lint["counts"]["duplicate"]}


# --------------------------------------------------------------------------- build
def build_input_stamps(s: MetadataConfig, storage: Storage) -> list:
    """What the build reads, per source (wiki and pageviews per language), as file stamps."""
    from jobs import wikicount

    stamps: dict = {"wordnet": [], "omw": [], "wiki": {}, "pageviews": {}}
    if s.wordnet:
        if not storage.isdir(s.wordnet):
            raise InputError(f"WordNet folder not found: {s.wordnet} (`metadata.wordnet`)")
        fs, root = storage.fs(s.wordnet)
        stamps["wordnet"] = [storage.stamp(p) for p in sorted(fs.find(root))]
    if s.omw:
        from metadata.omw import find_tab_files

        found = find_tab_files(s.omw, storage)
        stamps["omw"] = [storage.stamp(f) for lang in s.languages if lang != "en" for f in found.get(lang, [])]
    for ls in resolve_languages(s):
        if ls.wiki:
            stamps["wiki"][ls.lang] = [storage.stamp(f) for f in wikicount.expand_inputs(
                ls.wiki, _what("Wikipedia dump", ls.lang, s.wiki), storage)]
            versions = segment.package_versions(ls.segmenter)
            if versions:  # a segmenter's dictionary decides the words: a new version rebuilds
                stamps.setdefault("tokenisers", {})[ls.lang] = versions
        if ls.pageviews:
            stamps["pageviews"][ls.lang] = [storage.stamp(f) for f in wikicount.expand_inputs(
                ls.pageviews, _what("pageview files", ls.lang, s.pageviews), storage)]
    return [stamps]


def _what(kind: str, lang: str, setting_value: str | dict | None) -> str:
    """How an input is named in a not-found error: which language, and how to leave it out."""
    if isinstance(setting_value, dict):
        return f"{kind} of {lang}"
    if isinstance(setting_value, str) and LANG_PLACEHOLDER in setting_value:
        return (f"{kind} of {lang} (to build a language without one, give a mapping {{lang: path}} "
                "instead of {lang})")
    return kind


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _relative_to(root: str, path: str) -> str:
    root = root.rstrip("/") + "/"
    return path[len(root):] if path.startswith(root) else path.rsplit("/", 1)[-1]


def build_metadata(ctx: StageContext, s: MetadataConfig, out: StageDir) -> dict:
    """Build every requested language and source, merge each language, lint and write the
    outputs; return the summary."""
    from jobs import wikicount

    storage = ctx.storage
    languages = resolve_languages(s)
    omw_files: dict[str, list[str]] = {}
    if s.omw:
        from metadata.omw import find_tab_files

        omw_files = find_tab_files(s.omw, storage)
    missing = [ls.lang for ls in languages
               if not (ls.wiki or ls.pageviews or (ls.lang == "en" and s.wordnet) or omw_files.get(ls.lang))]
    if missing:
        found = sorted(omw_files)
        raise InputError(f"no source for {', '.join(missing)}: no Wikipedia dump, pageview files or WordNet "
                         f"(`metadata.omw` has wn-data files for {found or 'no language'}); give one or remove "
                         "the language from `metadata.languages`")
    extra: dict = {"config": {k: v for k, v in asdict(s).items() if k not in _RUNTIME_ONLY},
                   "inputs": {"wordnet": s.wordnet, "wiki": s.wiki, "pageviews": s.pageviews}}
    if s.omw:
        extra["inputs"]["omw"] = s.omw
    readers = {ls.lang: (ls.pageviews, ls.pageview_project, ls.pageview_min_line_views)
               for ls in languages if ls.pageviews}
    title_totals, pv_info = (wikicount.title_totals_by_lang(ctx.spark, readers, storage) if readers
                             else (None, {}))
    blocks: dict[str, dict] = {}
    merged: list[tuple[str, str, float]] = []
    langs: list[str] = []
    try:
        for ls in languages:
            part, block = build_language(ctx, s, ls, omw_files.get(ls.lang, []), title_totals, pv_info.get(ls.lang))
            if not part:
                raise InputError(f"the build produced no entries for {ls.lang}: every source was empty after its "
                                 "thresholds (see the counts above); lower the thresholds (`metadata.thresholds."
                                 f"{ls.lang}`)")
            ids = range(len(merged), len(merged) + len(part))
            blocks[ls.lang] = build_report(part, block.pop("source_stats"), block, ids=ids)
            merged.extend(part)
            langs.extend([ls.lang] * len(part))
    finally:
        if title_totals is not None:
            title_totals.unpersist()
    report = combine_reports(blocks, extra)
    write_outputs(out.url, merged, report, storage, langs)
    lint = report["lint"]
    stats = [st for b in blocks.values() for st in b["sources"].values()]
    summary = {"in": sum(v["candidates"] for v in stats), "out": len(merged),
               "rejected": {"duplicate": sum(v["duplicates_of_earlier"] for v in stats),
                            "over_cap": sum(v["over_cap"] for v in stats)},
               "mode": "build", "entries": len(merged), "entries_per_source": report["entries_per_source"],
               "entries_per_lang": report["entries_per_lang"],
               "lint_never_match": lint["never_match"], "lint_duplicates": lint["counts"]["duplicate"]}
    if "en" in blocks and "wordnet" in blocks["en"]:
        summary.update({"wordnet_distinct_names": blocks["en"]["wordnet"]["distinct_names"],
                        "wordnet_synsets": blocks["en"]["wordnet"]["synsets"]})
    return summary


def build_language(ctx: StageContext, s: MetadataConfig, ls: LanguageSettings, omw_files: list[str],
                   title_totals, pv_info: dict | None) -> tuple[list[tuple[str, str, float]], dict]:
    """One language's sources, merged in MetaCLIP's order with its own caps: its entries, and its
    report block (``source_stats`` plus what each source read)."""
    from jobs import wikicount
    from metadata import wiki

    storage = ctx.storage
    caps = {"wordnet": None, "unigram": ls.cap_unigram, "bigram": ls.cap_bigram, "title": ls.cap_title}
    block: dict = {"settings": ls.report()}
    sources: list[SourceCandidates] = []
    n_prior = 0
    if ls.lang == "en" and s.wordnet:
        from metadata.wordnet import wordnet_entries

        names, wn_stats = wordnet_entries(s.wordnet)
        block["wordnet"] = wn_stats
        sources.append(SourceCandidates("wordnet", [(e, float(n)) for e, n in names],
                                        stats={"synsets": wn_stats["synsets"]}))
        n_prior += len(names)
    elif omw_files:
        from metadata.omw import omw_entries

        names, wn_stats = omw_entries(omw_files, storage)
        wn_stats["files"] = {_relative_to(s.omw, f): st for f, st in wn_stats["files"].items()}
        block["wordnet"] = wn_stats
        log.info("WordNet %s: %d synsets -> %d distinct names (%d files)", ls.lang, wn_stats["synsets"],
                 wn_stats["distinct_names"], len(omw_files))
        sources.append(SourceCandidates("wordnet", [(e, float(n)) for e, n in names],
                                        stats={"synsets": wn_stats["synsets"]}))
        n_prior += len(names)
    if ls.wiki:
        summed, wiki_info = wikicount.wiki_counts(ctx.spark, ls.wiki, ls, storage, segmenter=ls.segmenter)
        try:
            unigrams, bigrams, totals = wikicount.unigram_and_bigram_candidates(
                summed, ls, joiner=segment.bigram_joiner(ls.segmenter))
            n_uni, n_bi = totals.get("n_unigrams", 0), totals.get("n_bigrams", 0)
            bound = wiki.pmi_upper_bound(ls.bigram_min_count, n_uni, n_bi) if n_bi else 0.0
            if bound < ls.bigram_min_pmi:
                log.warning("%s: bigram PMI >= %.1f is unreachable with pair count >= %d on this corpus "
                            "(%d tokens; max possible PMI %.2f): lower metadata.bigram_min_pmi", ls.lang,
                            ls.bigram_min_pmi, ls.bigram_min_count, n_uni, bound)
            block["wikipedia"] = {**wiki_info, **totals, "pmi_upper_bound": _finite(bound)}
            uni = wikicount.collect_best(unigrams, "unigram", caps["unigram"], n_prior,
                                         {"min_count": ls.unigram_min_count}, share=ls.cap_unigram_share)
            caps["unigram"] = effective_cap(ls.cap_unigram, ls.cap_unigram_share, uni.total)
            sources.append(uni)
            n_prior += len(uni.candidates)
            big = wikicount.collect_best(bigrams, "bigram", caps["bigram"], n_prior,
                                         {"min_count": ls.bigram_min_count, "min_pmi": ls.bigram_min_pmi})
            sources.append(big)
            n_prior += len(big.candidates)
        finally:
            summed.unpersist()
    if ls.pageviews:
        block["pageviews"] = pv_info
        titles = wikicount.titles_of(title_totals, ls.lang, ls.pageview_min_total_views)
        src = wikicount.collect_best(titles, "title", caps["title"], n_prior,
                                     {"min_line_views": ls.pageview_min_line_views,
                                      "min_total_views": ls.pageview_min_total_views,
                                      "project": ls.pageview_project}, share=ls.cap_title_share)
        caps["title"] = effective_cap(ls.cap_title, ls.cap_title_share, src.total)
        sources.append(src)
    if len(s.languages) > 1:
        log.info("metadata: language %s", ls.lang)
    merged, source_stats = merge_sources(sources, caps)
    block["source_stats"] = source_stats
    return merged, block


def entries_table_of(d: StageDir, columns: list[str] | None = None) -> pa.Table:
    return d.storage.read_parquet(entries_url(d), columns)
