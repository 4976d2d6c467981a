"""Run metadata -> match -> count -> balance over a pool parquet, configured by flags.

Example:
  metacurate curate --pool pool/ --metadata metadata.json --out RUN --t 20000 --seed 0

Each flag is shorthand for `--set` on the config key it names (see the README's configuration
reference); `--config run.yaml` may give the rest. Writes RUN/metadata/, RUN/match/,
RUN/count/entry_counts.parquet, RUN/balance/ (kept rows with p_keep) and RUN/rejects/<stage>/.
Completed stages are skipped on re-run; an interrupted stage resumes where it stopped. Use
`metacurate run --config run.yaml` for the whole pipeline, image stages included.
"""
from __future__ import annotations

import argparse

from curation.settings import add_flags, flag_values

#: The config keys `curate` takes as flags (the flag names and help come from the fields).
KEYS = ["pool.path", "metadata.path", "run_dir", "balance.t", "balance.target_size", "balance.seed",
        "pool.url_col", "pool.text_col", "pool.uid_col", "pool.max_text_bytes", "pool.rows_per_unit",
        "pool.on_bad_file", "pool.check_duplicate_uids", "match.rule", "spark.master"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from jobs.config import RunConfig

    add_flags(p, RunConfig, KEYS)
    p.add_argument("--config", "-c", help="a run configuration (YAML) for everything else")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any other config key (repeatable)")


def stages() -> list[str]:
    from jobs.stages import balance, count, match, metadata

    return [metadata.STAGE.name, match.STAGE.name, count.STAGE.name, balance.STAGE.name]


def run(args) -> int:
    from jobs.commands.stages import print_summaries, run_and_record
    from jobs.config import load_config

    cfg = load_config(args.config, args.overrides, values=flag_values(args, KEYS))
    print_summaries(run_and_record(cfg, stages()))
    return 0
