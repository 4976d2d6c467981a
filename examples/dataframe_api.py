"""The DataFrame API end to end: MetaCLIP curation of a pool you hold as a Spark DataFrame.

  python examples/dataframe_api.py [--out OUT] [--master local[*]] [--t 40]

Spark reads and writes the data (here parquet; a Delta/Iceberg/Hive table or gs://, abfs:// paths
through your cluster's connectors work the same), and metacurate adds columns: `entry_ids`
(substring matching against the metadata, MetaCLIP's rule), then `p_keep` and the balanced draw.
The pool here is generated (a head of generic captions and a long tail), with LAION-style column
names, so the example also shows the column mapping.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="where the curated parquet goes (default: a temp dir)")
    ap.add_argument("--master", default="local[*]")
    ap.add_argument("--t", type=float, default=40.0, help="balancing threshold (MetaCLIP: 20000 at 400M scale)")
    args = ap.parse_args(argv)

    import pyarrow.parquet as pq

    from jobs.dataframe import balance, entry_counts, match, parquet_options
    from jobs.demo import make_demo_pool
    from jobs.spark import get_spark

    work = tempfile.mkdtemp(prefix="metacurate-example-")
    paths = make_demo_pool(work, n_rows=5000, seed=0, n_files=4)
    for name in os.listdir(paths["pool"]):  # LAION's parquet names the columns URL and TEXT
        f = os.path.join(paths["pool"], name)
        pq.write_table(pq.read_table(f).rename_columns(["URL", "TEXT"]), f)

    # Here Spark's JVM does the reading and writing, so it keeps its own JIT and collector
    # (metacurate's local sessions otherwise give it C1 only, for runs where it just schedules tasks).
    spark = get_spark(args.master, "metacurate-example", conf={"spark.driver.extraJavaOptions": ""})
    pool = spark.read.parquet(paths["pool"])
    matched = match(pool, paths["metadata"], url_col="URL", text_col="TEXT")
    counts = entry_counts(matched).cache()
    kept = balance(matched, counts, t=args.t, seed=0)

    out = args.out or os.path.join(work, "curated")
    # v2 pages, no dictionaries for the nearly unique columns: a third less of Spark's write CPU
    kept.write.mode("overwrite").options(**parquet_options(url_col="URL", text_col="TEXT")).parquet(out)
    n_pool, n_matched, n_kept = pool.count(), matched.count(), spark.read.parquet(out).count()
    print(f"pool {n_pool:,} rows -> matched {n_matched:,} -> kept {n_kept:,} at t={args.t:g}")
    entries = json.load(open(paths["metadata"], encoding="utf-8"))  # id = position in the list
    print("most matched entries (texts containing them):")
    for row in counts.orderBy("count", ascending=False).limit(5).collect():
        print(f"  {entries[row['entry_id']]!r:<16} {row['count']:>6,}")
    print(f"curated rows: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
