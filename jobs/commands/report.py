"""Write the distribution report of a run directory.

Reads only per-entry aggregates and stage summaries (count/entry_counts.parquet,
balance/kept_counts.parquet, balance/t_sweep.json, */summary.json, */_SUCCESS) and writes
RUN/report/index.html, PNG plots and summary.json. RUN and --out may be local paths or s3:// URLs
(endpoint and credentials from the standard AWS_* variables, AWS_ENDPOINT_URL included).
Prints the path of index.html.
"""
from __future__ import annotations

import argparse

from jobs.report import write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run directory (local path or s3://bucket/prefix)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="where to write the report (default: RUN/report)")


def run(args: argparse.Namespace) -> int:
    print(write_report(args.run, args.out))
    return 0
