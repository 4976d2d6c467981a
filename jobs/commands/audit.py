"""Train/test overlap audit page (audit/index.html).

`metacurate audit RUN` audits a run's downloaded images against the eval hashes its dedup stage
used (k, the pHash path and the colour check come from that stage). Every pHash pair within k is
listed with its colour difference and verdict; `--truth FILE` (pool uids known to be copies) adds
the precision and recall of pHash alone and of pHash + the colour check. `metacurate audit --shards 'X/{00000..00009}.tar'
--evalsets DIR --out OUT` audits any existing WebDataset shards against an eval-hash folder
(written by `metacurate evalsets hash`). Paths may be local or `s3://`; `--config run.yaml` takes
the S3 endpoint and keys from its `storage:` section (default: the AWS_* variables).
"""
from __future__ import annotations

import argparse
import json

from curation.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", nargs="?", help="run directory to audit (writes RUN/audit/)")
    parser.add_argument("--shards", help="shards to audit instead of a run: folder, glob or {a..b} pattern "
                                         "(several joined with ::)")
    parser.add_argument("--evalsets", help="eval-hash folder (or one of its files), for --shards")
    parser.add_argument("--out", help="output folder (default RUN/audit)")
    parser.add_argument("-k", type=int, default=8, help="Hamming threshold for --shards (default 8)")
    parser.add_argument("--phash-mode", default="exact", choices=["exact", "fast"], help="for --shards")
    parser.add_argument("--max-colour-distance", type=_optional_float, default=6.0, metavar="D",
                        help="for --shards: the colour check of every pHash pair, as the dedup stage's "
                             "dedup.max_colour_distance (default 6.0; 'none': pHash alone)")
    parser.add_argument("--truth", metavar="FILE",
                        help="pool uids known to be copies of eval images (a JSON list, or one per line): the "
                             "page then states the precision and recall of the audit")
    parser.add_argument("--config", "-c", help="run configuration (YAML) whose `storage:` section (S3 endpoint, "
                        "keys) is used for every read and write; default: AWS_* variables")


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("none", "null", "off") else float(text)


def _truth(path: str | None, storage) -> set[str] | None:
    if not path:
        return None
    text = storage.read_bytes(path).decode("utf-8")
    try:
        items = json.loads(text)
    except ValueError:
        items = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(items, list):
        raise InputError(f"--truth {path}: expected a JSON list of uids or one uid per line")
    return {str(x) for x in items}


def run(args: argparse.Namespace) -> int:
    from curation.rundir import RunDir
    from eval.audit import audit_hashes, audit_shards
    from jobs.config import storage_for
    from jobs.stages import dedup

    storage = storage_for(args.config)
    if args.shards:
        if not args.evalsets or not args.out:
            raise InputError("--shards needs --evalsets DIR (where the eval hashes are) and --out DIR")
        summary = audit_shards(args.shards, args.evalsets, args.out, storage, k=args.k, phash_mode=args.phash_mode,
                               max_colour_distance=args.max_colour_distance, truth=_truth(args.truth, storage))
    elif args.run_dir:
        run = RunDir(args.run_dir, storage)
        d = run.stage(dedup.STAGE.name, dedup.STAGE.dir_name())
        if not d.is_complete():
            raise InputError(f"{run.url} has no completed {dedup.STAGE.name} stage to audit: run "
                             f"`metacurate {dedup.STAGE.name} --config run.yaml` (or `metacurate run`) first, or "
                             "audit shards with --shards PATTERN --evalsets DIR --out DIR")
        params = dedup.params(d)
        summary = audit_hashes(dedup.hashes_url(d), dedup.eval_hashes_url(d), args.out or run.path("audit"),
                               storage, k=int(params.get("k", 8)), phash_mode=params.get("phash_mode", "exact"),
                               max_colour_distance=params.get("max_colour_distance"), base=run.url,
                               truth=_truth(args.truth, storage))
    else:
        raise InputError("give a run directory, or --shards PATTERN --evalsets DIR --out DIR")
    print(json.dumps({k: summary[k] for k in ("k", "phash_mode", "overlapping_pool_images", "pairs")}))
    return 0
