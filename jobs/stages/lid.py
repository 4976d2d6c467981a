"""Stage `lid`: the language of every pool caption, for MetaCLIP 2 "worldwide" curation.

Off by default (``lid.enabled``): MetaCLIP 1's English curation matches every caption against one
entry list. On, every caption gets a language code (``curation.lid.LanguageID``: CLD2, its model
compiled into its wheel, or a fastText model given by path), mapped to the metadata's languages;
anything else is ``other``. The match stage then matches each caption against its language's
entries only, writes the ``lang`` column, and balancing sets a threshold per language.

The stage plans its work units exactly as the match stage does (the same pool footers and
``pool.rows_per_unit``) and writes, per unit, ``lid/part-N.parquet`` with one ``lang`` row per
pool row, in pool order: the match unit of the same number reads it beside its own rows. Nothing
else is copied: the pool is read once more, caption column only.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass

import pyarrow as pa

from curation.errors import InputError
from curation.pool import plan_units
from curation.rundir import StageDir, parquet_rows
from curation.settings import setting
from curation.storage import Storage
from jobs.stages import metadata
from jobs.stages.base import PhaseClock, Stage, StageContext, merge_unit_summaries, run_units, throttle

log = logging.getLogger(__name__)

OTHER = "other"


@dataclass
class LidConfig:
    enabled: bool = setting(False, "detect every caption's language (MetaCLIP 2 worldwide curation): the match "
                                   "stage then uses each language's entries, balancing a threshold per language")
    fasttext_model: str | None = setting(None, "a fastText language-ID model file (lid.176.bin/.ftz format) to use "
                                               "instead of the bundled CLD2")
    min_confidence: float = setting(0.0, "captions detected with a lower confidence (0-1) count as 'other'",
                                    minimum=0, finite=True)
    undetermined: str | None = setting(None, "the language of captions nothing is detected in (no letters, or "
                                             "too short: CLD2 gives 'image' or 'IMG_1234.jpg' no language); "
                                             "default 'other' (rejected at match), e.g. en to match them against "
                                             "English entries")


class LidStage(Stage):
    name = "lid"
    help = "language of every caption (MetaCLIP 2 worldwide curation; off unless lid.enabled)"
    upstream = (metadata.MetadataStage,)
    section = "lid"
    Config = LidConfig
    section_doc = "language ID of the captions"

    @classmethod
    def active(cls, ctx: StageContext) -> bool:
        return bool(ctx.settings(cls).enabled)

    def inputs(self, ctx: StageContext) -> list:
        """The pool (its files and how it is cut into units) decides the rows this stage labels."""
        if not ctx.settings(self).enabled:
            return []
        pool = ctx.cfg.pool
        return [asdict(pool), [ctx.stamp(f) for f in ctx.storage.list_files(pool.path, ".parquet")]]

    def run(self, ctx: StageContext, out: StageDir) -> dict:
        s: LidConfig = ctx.settings(self)
        if not s.enabled:
            return {"in": 0, "out": 0, "rejected": {}, "enabled": False}
        pool = ctx.cfg.pool
        languages = metadata_languages(ctx.dir(metadata.MetadataStage))
        _detector(s, languages)  # a wrong undetermined/model fails here, on the driver, in one line
        units, bad = plan_units(pool, ctx.storage)
        task = {"settings": asdict(s), "languages": languages, "text_col": pool.text_col, "storage": ctx.storage,
                "out": out.url}
        t0 = time.perf_counter()
        results = run_units(ctx, out, units, _lid_unit, task, self.name)
        total = merge_unit_summaries(results)
        langs: Counter = Counter()
        for r in results:
            langs.update(r["languages"])
        return {**total, "enabled": True, "languages": dict(langs.most_common()), "metadata_languages": languages,
                "files_skipped": [b["path"] for b in bad], "seconds": {"units": round(time.perf_counter() - t0, 3)}}

    def output_rows(self, ctx: StageContext, out: StageDir) -> int | None:
        return parquet_rows(ctx.storage, out.part_files()) if ctx.settings(self).enabled else None


STAGE = LidStage()


def metadata_languages(meta: StageDir) -> list[str]:
    """The languages the metadata has entries for (``entries.parquet``'s ``lang``; English when it
    has no such column)."""
    t = metadata.entries_table_of(meta)
    if "lang" not in t.column_names:
        return ["en"]
    return sorted(set(t.column("lang").to_pylist()))


def unit_langs(out: StageDir, unit_id: int) -> pa.Array:
    """The ``lang`` column the stage wrote for one pool unit (row-aligned with the pool)."""
    return out.storage.read_parquet(out.path(f"part-{unit_id:06d}.parquet"), ["lang"]).column("lang").combine_chunks()


_DETECTORS: dict[tuple, object] = {}


def _detector(s: LidConfig, languages: list[str]):
    """One LanguageID per worker process (a fastText model is loaded once)."""
    from curation.lid import LanguageID

    key = (s.fasttext_model, s.min_confidence, tuple(languages), s.undetermined)
    if key not in _DETECTORS:
        _DETECTORS.clear()
        _DETECTORS[key] = LanguageID(languages=languages, threshold=s.min_confidence, fasttext_model=s.fasttext_model,
                                     undetermined=s.undetermined)
    return _DETECTORS[key]


def _lid_unit(unit: dict, task: dict) -> dict:
    s = LidConfig(**task["settings"])
    storage: Storage = task["storage"]
    out = StageDir(task["out"], storage)
    throttle()
    clock = PhaseClock()
    try:
        with storage.parquet_file(unit["path"]) as pf:
            texts = pf.read_row_groups(list(range(unit["rg_start"], unit["rg_end"])),
                                       columns=[task["text_col"]]).column(0).combine_chunks()
    except (OSError, ValueError, pa.ArrowException):  # the match stage reports the unreadable file
        texts = pa.nulls(unit["rows"], pa.string())
    if pa.types.is_dictionary(texts.type):
        texts = texts.cast(texts.type.value_type)
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        texts = pa.array([None if b is None else b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)
                          for b in texts.to_pylist()], pa.string())
    clock.lap("read")
    try:
        codes = _detector(s, task["languages"]).detect(texts)
    except InputError:
        raise
    except Exception as exc:  # one bad caption must not lose the unit: label them one by one
        log.warning("lid: batch detection failed (%s); labelling the unit's captions one by one", exc)
        det = _detector(s, task["languages"])
        codes = []
        for t in texts.to_pylist():
            try:
                codes.append(det.detect([t])[0])
            except Exception:
                codes.append(OTHER)
    clock.lap("detect")
    storage.write_parquet(pa.table({"lang": pa.array(codes, pa.string())}), out.path(f"part-{unit['unit']:06d}.parquet"),
                          use_dictionary=["lang"], write_statistics=False)
    clock.lap("write")
    summary = {"unit": unit["unit"], "in": len(codes), "out": len(codes), "rejected": {},
               "languages": dict(Counter(codes)), "phases": clock.as_dict()}
    out.write_unit(unit["unit"], summary)
    return summary

