"""The metadata stage's own actions: build or import an entry list into any folder.

  metacurate metadata --config run.yaml          (the stage of a run: RUN/metadata/)
  metacurate metadata build --wordnet /usr/share/wordnet --wiki 'dumps/*pages-articles*.xml.bz2' \\
      --pageviews 'pageviews/*.gz' --out DIR
  metacurate metadata build --languages en --languages de --languages zh --wordnet /usr/share/wordnet \\
      --omw omw-data/wns --wiki 'dumps/{lang}wiki-*-pages-articles-multistream.xml.bz2' \\
      --pageviews 'pageviews/*.gz' --set 'metadata.thresholds={zh: {unigram_min_count: 50}}' --out DIR
  metacurate metadata import metadata.json [--lang de] --out DIR

`build` and `import` write the same folder the stage writes in a run (entries.parquet,
metadata.json, _lists/<lang>.json, _report.json, _summary.json, _SUCCESS); point `metadata.path`
(or `curate --metadata`) at it to use it. Each build source is optional (--wordnet alone builds a
WordNet-only list); a folder already built from the same inputs and settings is not rebuilt.
Per-language mappings (metadata.thresholds, metadata.segmenters, a {lang: path} wiki) are given
with --set KEY=YAML.
"""
from __future__ import annotations

import argparse
import json

from curation.errors import InputError

#: The build's settings as flags (names and help from the config fields of the metadata stage).
BUILD_KEYS = ["metadata.wordnet", "metadata.wiki", "metadata.pageviews", "metadata.omw", "metadata.languages",
              "metadata.unigram_min_count", "metadata.bigram_min_count", "metadata.bigram_min_pmi",
              "metadata.pageview_project", "metadata.pageview_min_line_views", "metadata.pageview_min_total_views",
              "metadata.cap_unigram", "metadata.cap_bigram", "metadata.cap_title", "metadata.cap_unigram_share",
              "metadata.cap_title_share", "metadata.unit_mb", "metadata.flush_keys"]
#: The build sources: at least one must be given.
SOURCE_KEYS = BUILD_KEYS[:4]


def add_actions(parser: argparse.ArgumentParser) -> None:
    from curation.settings import add_flags
    from jobs.config import RunConfig

    sub = parser.add_subparsers(dest="action", metavar="{build,import}",
                                title="actions (without one, the stage of the --config run runs)")
    b = sub.add_parser("build", help="build an entry list from WordNet / Wikipedia dump / pageview files",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(b, RunConfig, BUILD_KEYS)
    b.add_argument("--out", required=True, metavar="DIR", help="output folder (local or s3://)")
    b.add_argument("--master", default=None, help="Spark master (default local[*])")
    b.add_argument("--config", "-c", help="a run configuration whose `storage:` section applies")
    b.add_argument("--force", action="store_true", help="rebuild even when DIR holds a build of the same "
                                                        "inputs and settings")
    b.add_argument("--set", dest="build_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any other setting, the value as YAML (e.g. 'metadata.segmenters={ko: words}')")
    i = sub.add_parser("import", help="validate, lint and adopt an existing metadata.json")
    i.add_argument("metadata_json", metavar="metadata.json")
    add_flags(i, RunConfig, ["metadata.lang"])
    i.add_argument("--out", required=True, metavar="DIR")
    i.add_argument("--config", "-c", help="a run configuration whose `storage:` section applies")


def summary_line(summary: dict) -> str:
    per = ", ".join(f"{k} {v}" for k, v in summary["entries_per_source"].items())
    langs = summary.get("entries_per_lang") or {}
    per_lang = f" in {len(langs)} languages ({', '.join(f'{k} {v}' for k, v in langs.items())})" \
        if len(langs) > 1 else ""
    return (f"{summary['entries']} entries{per_lang} ({per}); lint: {summary['lint_never_match']} can never match, "
            f"{summary['lint_duplicates']} duplicates")


def run_action(args: argparse.Namespace) -> int | None:
    """``build`` / ``import``: the metadata stage run with its folder set to ``--out``; no action:
    None (the stage runs from the config)."""
    if not getattr(args, "action", None):
        return None
    from curation.rundir import RunDir, RunLock, StageDir
    from curation.settings import flag_values
    from jobs.config import load_config, storage_for
    from jobs.stages import metadata
    from jobs.stages.base import StageContext, execute

    storage = storage_for(args.config)
    overrides: list[str] = []
    if args.action == "import":
        values = {"metadata.path": args.metadata_json, **flag_values(args, ["metadata.lang"])}
    else:
        values = flag_values(args, BUILD_KEYS)
        overrides = list(getattr(args, "overrides", None) or []) + args.build_overrides
        given = {k.split("=", 1)[0].strip() for k in overrides}
        if not any(values.get(k) for k in SOURCE_KEYS) and not given & set(SOURCE_KEYS):
            raise InputError("give at least one source: --wordnet DIR, --omw DIR, --wiki DUMP or --pageviews GLOB")
    values["run_dir"] = args.out
    if getattr(args, "master", None):
        values["spark.master"] = args.master
    cfg = load_config(None, overrides, values=values)
    run = RunDir(args.out, storage)
    out = StageDir(run.url, storage)

    def spark():
        from jobs.spark import get_spark

        return get_spark(cfg.spark.master, "metacurate-metadata")

    ctx = StageContext(cfg=cfg, run=run, spark_factory=spark)
    metadata.STAGE.check(ctx)
    with RunLock(run, command=f"metadata {args.action}"):
        summary = execute(metadata.STAGE, ctx, out=out, force=getattr(args, "force", False))
    print(f"wrote {args.out}: {summary_line(summary)}")
    if "wordnet_synsets" in summary:
        print(f"WordNet: {summary['wordnet_synsets']} synsets, {summary['wordnet_distinct_names']} distinct names")
    print(json.dumps({k: summary[k] for k in ("in", "out", "rejected")}))
    return 0
