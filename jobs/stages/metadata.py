"""Stage `metadata`: the entry list every later stage matches against.

Either imports a list (``metadata.path``: a MetaCLIP-format ``metadata.json``, or a folder this
stage wrote before) or builds one from WordNet 3.0 + Wikipedia dumps (unigrams by count, bigrams
by PMI) + pageview files (titles by views), merged in that order with exact-string dedup and a
cap per source, as MetaCLIP does. Outputs in ``RUN/metadata/``: ``entries.parquet`` (entry_id,
entry, source, score), ``metadata.json`` (the list itself, id = position, the file MetaCLIP's
tools read) and ``_report.json`` (per-source counts, lint findings).

The Wikipedia and pageview counting runs on Spark (``jobs.wikicount``); a WordNet-only build or
an import needs no Spark session.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import pyarrow as pa

from curation.errors import InputError
from curation.matching import load_metadata_json
from curation.rundir import StageDir, parquet_rows
from curation.settings import SettingError, setting
from curation.storage import Storage, join
from jobs.stages.base import Stage, StageContext
from metadata import pageviews as pv
from metadata.merge import DEFAULT_CAPS, SourceCandidates, build_report, merge_sources, write_outputs

log = logging.getLogger(__name__)

ENTRIES = "entries.parquet"
LIST = "metadata.json"
REPORT = "_report.json"
ID_MAP = "_id_map.parquet"


@dataclass
class MetadataConfig:
    path: str | None = setting(None, "an existing metadata.json (a JSON list of strings, id = position; "
                                     "e.g. MetaCLIP's), or a folder written by `metacurate metadata build`, "
                                     "used as it is; unset: build from wordnet / wiki / pageviews",
                               flag="--metadata")
    wordnet: str | None = setting(None, "build: WordNet 3.0 dict folder (e.g. /usr/share/wordnet)", metavar="DIR")
    wiki: str | None = setting(None, "build: pages-articles*.xml.bz2 file, glob or folder, or a parquet of "
                                     "title,text", metavar="DUMP")
    pageviews: str | None = setting(None, "build: pageview dump files, e.g. 'DIR/*.gz'", metavar="GLOB")
    unigram_min_count: int = setting(100, "build: a Wikipedia word becomes an entry at this count", minimum=1)
    bigram_min_count: int = setting(5, "build: word pairs seen fewer times are ignored", minimum=1)
    bigram_min_pmi: float = setting(30.0, "build: log2 PMI a word pair needs to become an entry", finite=True)
    pageview_project: str = setting(pv.DEFAULT_PROJECT, "build: pageview project whose titles count (e.g. en)")
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
    unit_mb: float | None = setting(None, "build: compressed MB of dump per Spark task (null: automatic)",
                                    minimum=1e-6)
    flush_keys: int = setting(4_000_000, "build: distinct word pairs a counting task holds before it "
                              "emits partial sums (memory per task)", minimum=1000)

    def validate(self) -> None:
        if self.path and (self.wordnet or self.wiki or self.pageviews):
            raise SettingError("path", "and the build sources (wordnet, wiki, pageviews) exclude each other: "
                                       "import a list or build one")

    def sources_given(self) -> bool:
        return bool(self.path or self.wordnet or self.wiki or self.pageviews)


#: Settings that change how the build runs, not what it produces (left out of the fingerprint).
_RUNTIME_ONLY = ("unit_mb", "flush_keys")


class MetadataStage(Stage):
    name = "metadata"
    help = "the entry list: import a metadata.json, or build it from WordNet + Wikipedia (Spark)"
    section = "metadata"
    Config = MetadataConfig
    section_doc = "the entry list: import one (path) or build one (wordnet, wiki, pageviews)"
    cli_actions = "jobs.commands.metadata"
    reject_rows = False

    def check(self, ctx: StageContext) -> None:
        s = ctx.settings(self)
        if not s.sources_given():
            raise InputError("no metadata: set `metadata.path` to a metadata.json (or --metadata FILE), or "
                             "`metadata.wordnet` / `metadata.wiki` / `metadata.pageviews` to build one")
        self.inputs(ctx)  # every input exists

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
            return import_metadata(s.path, out, ctx.storage)
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


def import_metadata(path: str, out: StageDir, storage: Storage) -> dict:
    """Validate + lint a list and write it as this stage's outputs. Sources and scores come from
    an ``entries.parquet`` beside it when that file describes the same list; else ``import``.

    A string listed twice would split its texts between two ids and so halve its count: each is
    kept once, at its first position. The later copies are rejected (``duplicate_entry``) and
    ``_id_map.parquet`` maps every original position to the id it now has."""
    files = _import_files(path, storage)
    entries = load_metadata_json(files[0], storage)
    sources, scores = ["import"] * len(entries), [None] * len(entries)
    if len(files) > 1:
        t = storage.read_parquet(files[1])
        if t.column_names[:2] == ["entry_id", "entry"] and t.column("entry").to_pylist() == entries:
            sources = [s or "unknown" for s in t.column("source").to_pylist()] if "source" in t.column_names else sources
            if "score" in t.column_names:
                scores = t.column("score").to_pylist()
        else:
            log.warning("%s does not describe the list in %s; sources are recorded as 'import'", files[1], files[0])
    first: dict[str, int] = {}
    new_id: list[int] = []
    keep: list[int] = []
    for i, e in enumerate(entries):
        if e not in first:
            first[e] = len(keep)
            keep.append(i)
        new_id.append(first[e])
    duplicates = len(entries) - len(keep)
    merged = [(entries[i], sources[i], scores[i]) for i in keep]
    per_source: dict[str, int] = {}
    for _, src, _ in merged:
        per_source[src] = per_source.get(src, 0) + 1
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
    report = build_report(merged, {s: {"candidates": n, "kept": n} for s, n in per_source.items()}, extra)
    write_outputs(out.url, merged, report, storage)
    lint = report["lint"]
    log.info("metadata: imported %d entries from %s (%d can never match)", len(merged), files[0], lint["never_match"])
    return {"in": len(entries), "out": len(merged), "rejected": {"duplicate_entry": duplicates} if duplicates else {},
            "mode": "import", "entries": len(merged), "entries_per_source": report["entries_per_source"],
            "lint_never_match": lint["never_match"], "lint_duplicates": lint["counts"]["duplicate"]}


# --------------------------------------------------------------------------- build
def build_input_stamps(s: MetadataConfig, storage: Storage) -> list:
    from jobs import wikicount

    stamps: dict[str, list] = {"wordnet": [], "wiki": [], "pageviews": []}
    if s.wordnet:
        if not storage.isdir(s.wordnet):
            raise InputError(f"WordNet folder not found: {s.wordnet} (`metadata.wordnet`)")
        fs, root = storage.fs(s.wordnet)
        stamps["wordnet"] = [storage.stamp(p) for p in sorted(fs.find(root))]
    if s.wiki:
        stamps["wiki"] = [storage.stamp(f) for f in wikicount.expand_inputs(s.wiki, "Wikipedia dump", storage)]
    if s.pageviews:
        stamps["pageviews"] = [storage.stamp(f) for f in wikicount.expand_inputs(s.pageviews, "pageview files",
                                                                                  storage)]
    return [stamps]


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def build_metadata(ctx: StageContext, s: MetadataConfig, out: StageDir) -> dict:
    """Build every requested source, merge, lint and write the outputs; return the summary."""
    from jobs import wikicount
    from metadata import wiki
    from metadata.wordnet import wordnet_entries

    storage = ctx.storage
    caps = {"wordnet": None, "unigram": s.cap_unigram, "bigram": s.cap_bigram, "title": s.cap_title}
    extra: dict = {"config": {k: v for k, v in asdict(s).items() if k not in _RUNTIME_ONLY},
                   "inputs": {"wordnet": s.wordnet, "wiki": s.wiki, "pageviews": s.pageviews}}
    sources: list[SourceCandidates] = []
    n_prior = 0
    if s.wordnet:
        names, wn_stats = wordnet_entries(s.wordnet)
        extra["wordnet"] = wn_stats
        sources.append(SourceCandidates("wordnet", [(e, float(n)) for e, n in names],
                                        stats={"synsets": wn_stats["synsets"]}))
        n_prior += len(names)
    if s.wiki:
        summed, wiki_info = wikicount.wiki_counts(ctx.spark, s.wiki, s, storage)
        try:
            unigrams, bigrams, totals = wikicount.unigram_and_bigram_candidates(summed, s)
            n_uni, n_bi = totals.get("n_unigrams", 0), totals.get("n_bigrams", 0)
            bound = wiki.pmi_upper_bound(s.bigram_min_count, n_uni, n_bi) if n_bi else 0.0
            if bound < s.bigram_min_pmi:
                log.warning("bigram PMI >= %.1f is unreachable with pair count >= %d on this corpus "
                            "(%d tokens; max possible PMI %.2f): lower metadata.bigram_min_pmi",
                            s.bigram_min_pmi, s.bigram_min_count, n_uni, bound)
            extra["wikipedia"] = {**wiki_info, **totals, "pmi_upper_bound": _finite(bound)}
            uni = wikicount.collect_best(unigrams, "unigram", caps["unigram"], n_prior,
                                         {"min_count": s.unigram_min_count})
            sources.append(uni)
            n_prior += len(uni.candidates)
            big = wikicount.collect_best(bigrams, "bigram", caps["bigram"], n_prior,
                                         {"min_count": s.bigram_min_count, "min_pmi": s.bigram_min_pmi})
            sources.append(big)
            n_prior += len(big.candidates)
        finally:
            summed.unpersist()
    if s.pageviews:
        titles, pv_info, title_totals = wikicount.title_candidates(ctx.spark, s.pageviews, s, storage)
        try:
            extra["pageviews"] = pv_info
            sources.append(wikicount.collect_best(titles, "title", caps["title"], n_prior,
                                                  {"min_line_views": s.pageview_min_line_views,
                                                   "min_total_views": s.pageview_min_total_views,
                                                   "project": s.pageview_project}))
        finally:
            title_totals.unpersist()
    merged, source_stats = merge_sources(sources, caps)
    if not merged:
        raise InputError("the build produced no entries: every source was empty after its thresholds "
                         "(see the counts above); lower the thresholds")
    report = build_report(merged, source_stats, extra)
    write_outputs(out.url, merged, report, storage)
    lint = report["lint"]
    return {"in": sum(v["candidates"] for v in source_stats.values()), "out": len(merged),
            "rejected": {"duplicate": sum(v["duplicates_of_earlier"] for v in source_stats.values()),
                         "over_cap": sum(v["over_cap"] for v in source_stats.values())},
            "mode": "build", "entries": len(merged), "entries_per_source": report["entries_per_source"],
            "lint_never_match": lint["never_match"], "lint_duplicates": lint["counts"]["duplicate"],
            **({"wordnet_distinct_names": extra["wordnet"]["distinct_names"],
                "wordnet_synsets": extra["wordnet"]["synsets"]} if "wordnet" in extra else {})}


def entries_table_of(d: StageDir, columns: list[str] | None = None) -> pa.Table:
    return d.storage.read_parquet(entries_url(d), columns)
