"""Hash evaluation image sets for dedup.

`metacurate evalsets hash --name NAME --images DIR|TARS|PARQUET --out DIR` computes the pHash of
every image (a folder searched recursively, WebDataset tars given as a folder / glob /
`{000..009}` pattern, or a parquet with an image-bytes column) into `DIR/NAME.parquet` (dataset,
key, phash, source), replacing an earlier hashing of NAME. The dedup stage reads `RUN/evalsets`
by default (`dedup.evalsets` names another folder), so `--out RUN/evalsets` needs no setting.
"""
from __future__ import annotations

import argparse
import json

from curation.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    h = sub.add_parser("hash", help="hash one evaluation image set into DIR/NAME.parquet")
    h.add_argument("--name", required=True, help="eval set name, e.g. imagenet-val")
    h.add_argument("--images", required=True, help="image folder, tar folder/glob/{a..b} pattern, or parquet")
    h.add_argument("--out", required=True, help="eval-hash folder, e.g. RUN/evalsets (local or s3://)")
    h.add_argument("--phash-mode", default="exact", choices=["exact", "fast"],
                   help="must match the dedup stage's dedup.phash_mode (default exact)")
    h.add_argument("--config", "-c", help="run configuration (YAML) whose `storage:` section (S3 endpoint, "
                   "keys) is used for --images and --out; default: AWS_* variables")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) != "hash":
        raise InputError("usage: metacurate evalsets hash --name NAME --images PATH --out DIR")
    from curation.evalsets import hash_evalset
    from curation.storage import absolute
    from jobs.config import storage_for

    result = hash_evalset(args.name, args.images, absolute(args.out), storage_for(args.config),
                          phash_mode=args.phash_mode)
    print(json.dumps(result))
    return 0
