"""Build the metadata entry list (WordNet + Wikipedia unigrams, bigrams, titles) on Spark, or
import an existing metadata.json.

  metacurate metadata build --wordnet /usr/share/wordnet --wiki 'dumps/*pages-articles*.xml.bz2' \\
      --pageviews 'pageviews/*.gz' --out RUN/metadata
  metacurate metadata import metadata.json --out RUN/metadata

Each source is optional (--wordnet alone builds a WordNet-only list). Outputs: entries.parquet
(entry_id, entry, source, score), metadata.json (id = position), report.json (per-source counts
before/after caps, lint findings, WordNet distinct-name count), summary.json, _SUCCESS.
"""
from __future__ import annotations

import argparse
import json
import logging

from curation.errors import InputError

log = logging.getLogger(__name__)


def _cap(value: str) -> int | None:
    if value.lower() in ("none", "inf", "-1"):
        return None
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError("a cap is a count >= 0, or 'none'")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="metadata_command", metavar="{build,import}")
    b = sub.add_parser("build", help="build from WordNet / Wikipedia dump / pageview files",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--wordnet", metavar="DIR", help="WordNet 3.0 dict folder (e.g. /usr/share/wordnet)")
    b.add_argument("--wiki", metavar="DUMP", help="pages-articles*.xml.bz2 file/glob/folder, or a parquet of title,text")
    b.add_argument("--pageviews", metavar="GLOB", help="pageview dump files, e.g. 'DIR/*.gz' (quote the glob)")
    b.add_argument("--out", required=True, metavar="DIR", help="output folder (written atomically)")
    b.add_argument("--master", default=None, help="Spark master (default local[*] or $METACURATE_MASTER)")
    b.add_argument("--unigram-min-count", type=int, default=100)
    b.add_argument("--bigram-min-count", type=int, default=5, help="pairs seen fewer times are ignored")
    b.add_argument("--bigram-min-pmi", type=float, default=30.0, help="log2 PMI threshold")
    b.add_argument("--pageview-project", default="en")
    b.add_argument("--pageview-min-line-views", type=int, default=50)
    b.add_argument("--pageview-min-total-views", type=int, default=70)
    b.add_argument("--cap-unigram", type=_cap, default=251_465, help="max unigram entries ('none' = no cap)")
    b.add_argument("--cap-bigram", type=_cap, default=100_646)
    b.add_argument("--cap-title", type=_cap, default=61_235)
    b.add_argument("--unit-mb", type=float, default=None, help="compressed MB per dump work unit (default: auto)")
    b.add_argument("--force", action="store_true",
                   help="rebuild even when --out already holds a build of the same inputs and settings")
    i = sub.add_parser("import", help="validate, lint and adopt an existing metadata.json")
    i.add_argument("metadata_json", metavar="metadata.json")
    i.add_argument("--out", required=True, metavar="DIR")


def _summary_line(report: dict) -> str:
    per = ", ".join(f"{k} {v}" for k, v in report["entries_per_source"].items())
    lint = report["lint"]
    return (f"{report['entries']} entries ({per}); lint: {lint['never_match']} can never match, "
            f"{json.dumps({k: v for k, v in lint['counts'].items() if v})}")


def run(args: argparse.Namespace) -> int:
    if args.metadata_command == "import":
        from metadata.importer import import_metadata

        report = import_metadata(args.metadata_json, args.out)
        print(f"imported into {args.out}: {_summary_line(report)}")
        return 0
    if args.metadata_command != "build":
        raise InputError("say what to do: `metacurate metadata build …` or `metacurate metadata import FILE --out DIR`")
    from jobs.metadata_job import BuildConfig, build_metadata

    if not (args.wordnet or args.wiki or args.pageviews):
        raise InputError("give at least one source: --wordnet DIR, --wiki DUMP or --pageviews GLOB")
    cfg = BuildConfig(
        unigram_min_count=args.unigram_min_count, bigram_min_count=args.bigram_min_count,
        bigram_min_pmi=args.bigram_min_pmi, pageview_project=args.pageview_project,
        pageview_min_line_views=args.pageview_min_line_views,
        pageview_min_total_views=args.pageview_min_total_views,
        caps={"wordnet": None, "unigram": args.cap_unigram, "bigram": args.cap_bigram, "title": args.cap_title},
        unit_mb=args.unit_mb,
    )
    spark = None
    if args.wiki or args.pageviews:
        from jobs.spark import get_spark

        spark = get_spark(args.master, "metacurate-metadata")
    report = build_metadata(spark, args.out, args.wordnet, args.wiki, args.pageviews, cfg, force=args.force)
    print(f"wrote {args.out}: {_summary_line(report)}")
    if "wordnet" in report:
        print(f"WordNet: {report['wordnet']['synsets']} synsets, {report['wordnet']['distinct_names']} distinct names")
    return 0
