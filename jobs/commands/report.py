"""Write the distribution report of a run directory.

Reads only per-entry aggregates and stage summaries (the count stage's entry counts, the balance
stage's kept counts and t sweep, every stage's _summary.json and _SUCCESS) and writes
RUN/report/index.html, PNG plots and summary.json. RUN and --out may be local paths or s3:// URLs;
`--config run.yaml` gives the S3 endpoint and keys (its `storage:` section), else the AWS_*
variables. Prints the path of index.html.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run directory (local path or s3://bucket/prefix)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="where to write the report (default: RUN/report)")
    parser.add_argument("--config", "-c", help="run configuration (YAML) whose `storage:` section is used")


def run(args: argparse.Namespace) -> int:
    from curation.rundir import RunDir
    from jobs.config import storage_for
    from jobs.report import write_report

    print(write_report(RunDir(args.run, storage_for(args.config)), args.out))
    return 0
