"""Hash evaluation image sets for dedup.

`metacurate evalsets hash --name NAME --images DIR|TARS|PARQUET --out RUN` computes the pHash of
every image (a folder searched recursively, webdataset tars given as a folder / glob /
`{000..009}` pattern, or a parquet with an image-bytes column) and merges them into
`RUN/dedup/eval_hashes.parquet` (dataset, key, phash, source); rows of an earlier hashing of the
same NAME are replaced.
"""
from __future__ import annotations

import argparse
import json

from curation.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    h = sub.add_parser("hash", help="hash one evaluation image set into RUN/dedup/eval_hashes.parquet")
    h.add_argument("--name", required=True, help="eval set name, e.g. imagenet-val")
    h.add_argument("--images", required=True, help="image folder, tar folder/glob/{a..b} pattern, or parquet")
    h.add_argument("--out", required=True, help="run directory (local or s3://)")
    h.add_argument("--phash-mode", default="exact", choices=["exact", "fast"],
                   help="must match the dedup stage's dedup.phash_mode (default exact)")
    h.add_argument("--config", "-c", help="run configuration (YAML) whose `storage:` section (S3 endpoint, "
                   "keys) is used for --images and --out; default: AWS_* variables")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) != "hash":
        raise InputError("usage: metacurate evalsets hash --name NAME --images PATH --out RUN")
    from jobs.images import hash_evalset
    from jobs.config import storage_options_for

    options = storage_options_for(getattr(args, "config", None))
    result = hash_evalset(args.name, args.images, f"{args.out.rstrip('/')}/dedup", phash_mode=args.phash_mode,
                          storage_options=options)
    print(json.dumps(result))
    return 0
