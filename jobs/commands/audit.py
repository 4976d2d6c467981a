"""Train/test overlap audit page (audit/index.html).

`metacurate audit RUN` audits a run's downloaded images against its eval hashes (k and the
pHash path come from the dedup stage). `metacurate audit --shards 'X/{00000..00009}.tar'
--evalsets RUN --out DIR` audits any existing WebDataset shards. Paths may be local or `s3://`;
`--config run.yaml` takes the S3 endpoint and keys from its `storage:` section (default: AWS_*).
"""
from __future__ import annotations

import argparse
import json

from curation.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", nargs="?", help="run directory to audit (writes RUN/audit/)")
    parser.add_argument("--shards", help="shards to audit instead of a run: folder, glob or {a..b} pattern")
    parser.add_argument("--evalsets", help="run dir (or eval_hashes.parquet) with the eval hashes, for --shards")
    parser.add_argument("--out", help="output folder (default RUN/audit)")
    parser.add_argument("-k", type=int, default=8, help="Hamming threshold for --shards (default 8)")
    parser.add_argument("--phash-mode", default="exact", choices=["exact", "fast"], help="for --shards")
    parser.add_argument("--config", "-c", help="run configuration (YAML) whose `storage:` section (S3 endpoint, "
                        "keys) is used for every read and write; default: AWS_* variables")


def run(args: argparse.Namespace) -> int:
    from eval.audit import audit_run, audit_shards
    from jobs.config import storage_options_for

    options = storage_options_for(getattr(args, "config", None))
    if args.shards:
        if not args.evalsets or not args.out:
            raise InputError("--shards needs --evalsets RUN (where eval hashes are) and --out DIR")
        summary = audit_shards(args.shards, args.evalsets, args.out, k=args.k, phash_mode=args.phash_mode,
                               storage_options=options)
    elif args.run_dir:
        summary = audit_run(args.run_dir, args.out, storage_options=options)
    else:
        raise InputError("give a run directory, or --shards PATTERN --evalsets RUN --out DIR")
    print(json.dumps({k: summary[k] for k in ("k", "phash_mode", "overlapping_pool_images", "pairs")}))
    return 0
