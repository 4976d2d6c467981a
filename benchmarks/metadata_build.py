"""Benchmark: Wikipedia unigram+bigram counting on Spark scales with cores, driver memory flat.

    python benchmarks/metadata_build.py [--mb 200] [--small-mb 50] [--unit-mb MB]

Generates (once, cached under /tmp/metacurate-bench) a multistream ``pages-articles`` dump of
``--mb`` MB of uncompressed XML whose prose draws words from wordfreq's English list with Zipf
frequencies, plus a ``--small-mb`` one. Each measurement runs in its own subprocess with its own
SparkSession (so ``local[1]`` and ``local[2]`` really get their own master):

* MB/s of counting (dump -> summed unigram/bigram counts, materialised) in local[1] and local[2],
  and their ratio (the baseline is local[1] in the same run; target >= 1.8x);
* CPU seconds of the JVM and of the Python workers while counting (from /proc), i.e. how many
  cores each master really kept busy;
* the Python driver's peak RSS (``ru_maxrss``) at both dump sizes: it must not grow with the
  dump, since the driver only plans work units and collects metadata-sized results.

MB are MiB of uncompressed XML (the compressed size is printed too).
"""
from __future__ import annotations

import argparse
import bz2
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CACHE = Path(os.environ.get("METACURATE_BENCH_CACHE", "/tmp/metacurate-bench"))


def _vocab() -> tuple[list[str], list[float]]:
    from wordfreq import top_n_list, word_frequency

    words = [w for w in top_n_list("en", 30_000) if w.isalpha()]
    weights = [word_frequency(w, "en") for w in words]
    return words, weights


def _stream_chunk(args: tuple[int, int, int]) -> tuple[bytes, int]:
    """Pages [first, first + n) of the dump, compressed as one bz2 stream; (bytes, raw size)."""
    from metadata.synthetic import SynthPage, page_xml

    seed, first, n = args
    rng = random.Random(seed * 1_000_003 + first)
    words, weights = _VOCAB
    cum = []
    acc = 0.0
    for w in weights:
        acc += w
        cum.append(acc)
    parts = []
    for i in range(first, first + n):
        paras = []
        for _ in range(rng.randint(3, 8)):
            toks = rng.choices(words, cum_weights=cum, k=rng.randint(40, 160))
            for _ in range(3):  # some markup
                k = rng.randrange(len(toks))
                toks[k] = f"[[{toks[k].capitalize()}|{toks[k]}]]"
            paras.append(" ".join(toks).replace(" the ", ". The ", 2) + ".")
        text = ("{{Infobox generic|name=" + words[i % 500] + "}}\n" + "\n\n".join(paras)
                + "<ref>{{cite web|url=http://example.org}}</ref>\n[[Category:Generated]]")
        parts.append(page_xml(SynthPage(f"Generated {i}", text), i + 1))
    raw = "".join(parts).encode()
    return bz2.compress(raw, 9), len(raw)


_VOCAB: tuple[list[str], list[float]] = ([], [])


def _init_worker() -> None:
    global _VOCAB
    _VOCAB = _vocab()


def ensure_dump(mb: int, seed: int = 0) -> tuple[Path, int]:
    """The cached dump of at least ``mb`` MiB of XML; (path, uncompressed bytes)."""
    from metadata.synthetic import FOOTER, HEADER

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"enwiki-synth-{mb}MB-pages-articles-multistream.xml.bz2"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return path, json.loads(meta.read_text())["xml_bytes"]
    print(f"generating a {mb} MB dump at {path} (cached for later runs) ...", flush=True)
    t0 = time.time()
    target = mb << 20
    tmp = path.with_suffix(".tmp")
    total = 0
    with open(tmp, "wb") as f, Pool(os.cpu_count() or 2, initializer=_init_worker) as pool:
        head = HEADER.encode()
        f.write(bz2.compress(head, 9))
        total += len(head)
        batch, first = 100, 0
        while total < target:
            jobs = [(seed, first + k * batch, batch) for k in range(16)]
            first += 16 * batch
            for comp, raw in pool.imap(_stream_chunk, jobs):
                f.write(comp)
                total += raw
        foot = FOOTER.encode()
        f.write(bz2.compress(foot, 9))
        total += len(foot)
    os.replace(tmp, path)
    meta.write_text(json.dumps({"xml_bytes": total}))
    print(f"  {total / 2**20:.0f} MB XML, {path.stat().st_size / 2**20:.0f} MB bz2 in {time.time() - t0:.0f} s",
          flush=True)
    return path, total


def _jvm_peak_rss_kb() -> int | None:
    """Peak RSS of the driver JVM child (in local mode it also hosts the executors' JVM side)."""
    try:
        kids = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    except OSError:
        return None
    best = None
    for pid in kids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    best = max(best or 0, int(line.split()[1]))
        except OSError:
            pass
    return best


def _clock_ticks() -> float:
    return float(os.sysconf("SC_CLK_TCK"))


def _cpu_seconds(pid: int, with_children: bool) -> float:
    """utime + stime of a process (all its threads, live or exited), + its reaped children's."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if with_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / _clock_ticks()


def _children(pid: int) -> list[int]:
    """Child pids of every thread of ``pid`` (the JVM forks Python workers from worker threads)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            pass
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cpu_split() -> dict[str, float]:
    """CPU seconds so far of the JVM (its own threads) and of the Python workers under it.

    In local mode the executors live in the driver JVM (started by spark-submit under this
    process); the Python workers are its descendants (pyspark's daemon forks them). Workers that
    already exited are in the daemon's children's time, counted as Python too.
    """
    jvm = python = 0.0
    todo = _children(os.getpid())
    while todo:
        pid = todo.pop()
        kids = _children(pid)
        if _comm(pid) == "java":
            jvm += _cpu_seconds(pid, with_children=False)
            for k in kids:  # everything under the JVM is a Python worker (or the daemon)
                python += _cpu_seconds(k, with_children=True)
                kids_todo = _children(k)
                while kids_todo:
                    q = kids_todo.pop()
                    python += _cpu_seconds(q, with_children=False)
                    kids_todo.extend(_children(q))
        else:
            todo.extend(kids)
    return {"jvm": jvm, "python": python}


def worker(master: str, dump: str, unit_mb: float | None) -> None:
    """One measurement in a fresh process; prints one JSON line."""
    from curation.storage import Storage
    from jobs.stages.metadata import MetadataConfig
    from jobs.spark import get_spark
    from jobs.wikicount import unigram_and_bigram_candidates, wiki_counts
    from metadata.synthetic import SynthPage, synthetic_article, write_dump

    spark = get_spark(master, "metacurate-bench")
    cfg = MetadataConfig(unit_mb=unit_mb, bigram_min_pmi=10.0, bigram_min_count=5)
    storage = Storage()
    # Warm-up: the same job on a tiny dump, so the fixed costs (JVM JIT compiling the Arrow,
    # shuffle and cache paths; Python worker start and imports) are measured apart from the per-MB
    # work. Without it the JIT's compiler threads (several CPU-seconds) run on the second core
    # during a local[1] run, and local[1] is not a one-core baseline any more.
    t_warm = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tiny = os.path.join(tmp, "tiny-pages-articles-multistream.xml.bz2")
        rng = random.Random(0)
        words = ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 9))) for _ in range(2000)]
        write_dump(tiny, [SynthPage(f"P{i}", synthetic_article(rng, words, 20)) for i in range(400)],
                   pages_per_stream=20)
        warm, _ = wiki_counts(spark, tiny, MetadataConfig(unit_mb=0.01, bigram_min_pmi=1.0, bigram_min_count=2),
                              storage)
        warm.count()
        for df in unigram_and_bigram_candidates(warm, cfg)[:2]:
            df.count()
        warm.unpersist()
    t_warm = time.perf_counter() - t_warm
    cpu0 = cpu_split()
    t0 = time.perf_counter()
    summed, info = wiki_counts(spark, dump, cfg, storage)
    t_plan = time.perf_counter() - t0
    n_keys = summed.count()  # materialises the counting (parse + tokenise + shuffle + sum + cache)
    t_count = time.perf_counter() - t0
    cpu1 = cpu_split()
    unigrams, bigrams, totals = unigram_and_bigram_candidates(summed, cfg)
    n_uni, n_bi = unigrams.count(), bigrams.count()
    t_all = time.perf_counter() - t0
    jvm = _jvm_peak_rss_kb()
    driver_cpu = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"master": master, "seconds_count": t_count, "seconds_plan": t_plan,
                      "seconds_with_pmi": t_all, "keys": n_keys,
                      "seconds_warmup": t_warm,
                      "cpu_jvm": cpu1["jvm"] - cpu0["jvm"], "cpu_python_workers": cpu1["python"] - cpu0["python"],
                      "cpu_driver_python_total": driver_cpu.ru_utime + driver_cpu.ru_stime,
                      "unigrams_kept": n_uni, "bigrams_kept": n_bi, "units": info["work_units"],
                      "reduce_partitions": info.get("reduce_partitions"),
                      "tokens": totals.get("n_unigrams"),
                      "driver_py_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "driver_jvm_peak_rss_mb": jvm / 1024 if jvm else None}), flush=True)
    spark.stop()


def run_one(master: str, dump: Path, unit_mb: float | None) -> dict:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    extra = ["--unit-mb", str(unit_mb)] if unit_mb else []
    proc = subprocess.run([sys.executable, __file__, "--worker", master, "--dump", str(dump), *extra],
                          env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"worker {master} failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--small-mb", type=int, default=50)
    ap.add_argument("--unit-mb", type=float, default=None,
                    help="compressed MB per work unit (default: the job's automatic size)")
    ap.add_argument("--worker", metavar="MASTER")
    ap.add_argument("--dump")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.dump, args.unit_mb)
        return
    big, big_bytes = ensure_dump(args.mb)
    small, small_bytes = ensure_dump(args.small_mb)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (shared machine: "
          "absolute figures are noisy)", flush=True)
    results = {}
    for label, master, dump, nbytes in (("small local[2]", "local[2]", small, small_bytes),
                                        ("big local[1]", "local[1]", big, big_bytes),
                                        ("big local[2]", "local[2]", big, big_bytes)):
        r = run_one(master, dump, args.unit_mb)
        r["mb_per_s"] = nbytes / 2**20 / r["seconds_count"]
        results[label] = r
        print(f"{label:<15} {nbytes / 2**20:6.0f} MB XML ({dump.stat().st_size / 2**20:.0f} MB bz2), "
              f"{r['units']} units, {r['reduce_partitions']} reduce partitions, {r['keys']} kept keys "
              f"(warm-up on a tiny dump {r['seconds_warmup']:.1f} s): counting {r['seconds_count']:.1f} s "
              f"= {r['mb_per_s']:.2f} MB/s (driver planning {r['seconds_plan']:.2f} s; +PMI "
              f"{r['seconds_with_pmi']:.1f} s total); driver peak RSS python {r['driver_py_peak_rss_mb']:.0f} MB, "
              f"JVM {r['driver_jvm_peak_rss_mb'] or float('nan'):.0f} MB", flush=True)
        busy = (r["cpu_jvm"] + r["cpu_python_workers"]) / r["seconds_count"]
        print(f"{'':<15} CPU while counting: python workers {r['cpu_python_workers']:.1f} s, JVM "
              f"{r['cpu_jvm']:.1f} s -> {busy:.2f} cores busy on average", flush=True)
    ratio = results["big local[2]"]["mb_per_s"] / results["big local[1]"]["mb_per_s"]
    print(f"speed-up local[2] / local[1]: {ratio:.2f}x (target >= 1.8x)")
    rss_small = results["small local[2]"]["driver_py_peak_rss_mb"]
    rss_big = results["big local[2]"]["driver_py_peak_rss_mb"]
    print(f"driver (python) peak RSS: {rss_small:.0f} MB at {small_bytes / 2**20:.0f} MB vs {rss_big:.0f} MB at "
          f"{big_bytes / 2**20:.0f} MB -> ratio {rss_big / rss_small:.2f} (flat = ~1.0)")
    print(f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
