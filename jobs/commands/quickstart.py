"""Offline end-to-end demo: the whole MetaCLIP story on a miniature web, in minutes, no network.

  metacurate quickstart [--out runs/quickstart] [--tiny] [--train-steps N] [--master local[*]]

Steps (each visible as it runs):
  1. metadata  — real WordNet 3.0 + a generated Wikipedia-format dump and pageview files (English),
                 Open Multilingual Wordnet files for German and Chinese
  2. web       — procedurally rendered images (digits, shapes, colours, textures) served by an
                 HTTP server on 127.0.0.1, a web-like pool of (URL, alt-text) in English, German and
                 Chinese with a head of generic captions, duplicates, broken links and corrupt files
  3. eval sets — scikit-learn's handwritten digits and a held-out split, hashed for dedup;
                 a few held-out images are planted in the pool (re-encoded) to be caught
  4. curate    — lid -> match -> count -> balance -> download -> dedup -> shard in Spark
                 (MetaCLIP 2 worldwide: each caption against its language's entries, a t per language)
  5. report    — distribution report + overlap audit
  6. train     — the tiny CLIP on the shards (FLIP masking, then unmasked tuning)
  7. eval      — zero-shot on the real digits, retrieval on the held-out split in each language
Prints where report/index.html is and the scores.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
import sys
import time

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/quickstart", help="output folder (default runs/quickstart)")
    p.add_argument("--tiny", action="store_true", help="a much smaller run (CI): fewer images and steps")
    p.add_argument("--pool-size", type=int, default=None, help=f"rows in the generated pool (default {DEFAULT_POOL_SIZE}; tiny 600)")
    p.add_argument("--train-steps", type=int, default=None,
                   help=f"training steps (default {DEFAULT_STEPS}; tiny 30)")
    p.add_argument("--t", type=float, default=None, help="balancing threshold of English (default 60; tiny 20); "
                                                         "the other languages get the t with the same tail share")
    p.add_argument("--languages", nargs="+", default=list(LANGUAGES), choices=list(LANGUAGES), metavar="LANG",
                   help=f"caption languages of the miniature web (default: {' '.join(LANGUAGES)}); "
                        "'en' alone runs MetaCLIP 1's English curation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--master", default="local[*]", help="Spark master (default local[*])")
    p.add_argument("--wordnet", default=None, help="WordNet 3.0 dict dir (default: /usr/share/wordnet)")


class _Steps:
    """Numbered steps on the console, each with its wall time (shown again in a table at the end)."""

    def __init__(self, total: int, out=None):
        self.total, self.i, self.t0 = total, 0, time.time()
        self.out = out or sys.stdout
        self.times: list[tuple[str, float]] = []
        self._started = None

    def _close(self) -> None:
        if self._started is not None:
            title, t = self._started
            self.times.append((title, time.time() - t))
            self._started = None

    def __call__(self, title: str) -> None:
        self._close()
        self.i += 1
        self._started = (title.split(":")[0], time.time())
        print(f"\n[{self.i}/{self.total}] {title}", file=self.out, flush=True)

    def say(self, text: str) -> None:
        print(f"  {text}", file=self.out, flush=True)

    def finish(self) -> None:
        self._close()
        width = max((len(t) for t, _ in self.times), default=10)
        print("\nTime per step:", file=self.out)
        for title, secs in self.times:
            print(f"  {title:<{width}}  {_duration(secs):>7}", file=self.out)
        print(f"  {'total':<{width}}  {_duration(time.time() - self.t0):>7}", file=self.out, flush=True)


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


class _Console:
    """A quiet run: everything the libraries and child processes print (Spark's JVM and Python
    workers, img2dataset's workers, warnings, tracebacks of a shutting-down worker daemon) goes to
    a log file, at the level of the file descriptors, so that child processes are covered too;
    the console shows the steps, progress lines and results. The log file is named at the end."""

    def __init__(self, log_path: str) -> None:
        self.log_path = log_path
        self.out = sys.stdout

    def __enter__(self) -> "_Console":
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self.out = os.fdopen(os.dup(self._saved[0]), "w", buffering=1)
        self._log = open(self.log_path, "ab", buffering=0)
        os.dup2(self._log.fileno(), 1)
        os.dup2(self._log.fileno(), 2)
        root = logging.getLogger()
        if not root.handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                                datefmt="%H:%M:%S")
        self._handler = _ProgressHandler(self.out)
        for name in ("jobs.stages", "jobs.spark"):
            logging.getLogger(name).addHandler(self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for name in ("jobs.stages", "jobs.spark"):
            logging.getLogger(name).removeHandler(self._handler)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._log.close()


class _ProgressHandler(logging.Handler):
    """Stage starts and ends, and Spark's task progress, as short console lines."""

    def __init__(self, out) -> None:
        super().__init__(logging.INFO)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.name == "jobs.stages":
            parts = msg.split("] ", 1)
            if len(parts) == 2 and (" done in " in parts[1] or parts[1].endswith("...")):
                print(f"    {parts[1]}", file=self.out, flush=True)
        elif record.name == "jobs.spark" and " tasks (" in msg:
            print(f"      {msg}", file=self.out, flush=True)


def _watch_training(metrics: str, steps: int, say, every: float = 10.0):
    """Progress of a training run from its metrics.jsonl (a thread; returns its stop function)."""
    import threading

    stop = threading.Event()
    t0 = time.time()

    shown = [-1]

    def poll() -> None:
        while not stop.wait(every):
            try:
                with open(metrics, encoding="utf-8") as f:
                    last = json.loads(f.readlines()[-1])
            except (OSError, IndexError, ValueError):
                continue
            step = int(last.get("step", 0))
            if step == shown[0]:
                continue
            shown[0] = step
            eta = (time.time() - t0) * (steps - step) / step if step else 0
            say(f"train: step {step}/{steps}, loss {last.get('loss', float('nan')):.3f}, "
                f"{last.get('images_per_s', 0):.0f} img/s, ETA {_duration(eta)}")

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()

    def done() -> None:
        stop.set()
        thread.join(timeout=2)
    return done


def find_wordnet(explicit: str | None) -> str:
    from curation.errors import InputError

    candidates = [explicit] if explicit else [os.environ.get("METACURATE_WORDNET"), "/usr/share/wordnet"]
    try:
        import nltk

        candidates += [os.path.join(p, "corpora", "wordnet") for p in nltk.data.path]
    except ImportError:
        pass
    for c in candidates:
        if c and os.path.exists(os.path.join(c, "data.noun")):
            return c
    raise InputError(
        "WordNet 3.0 not found. Install Debian's package (`apt-get install wordnet-base`, which puts it in "
        "/usr/share/wordnet), or point --wordnet at a folder holding data.noun/index.noun (e.g. an "
        "nltk_data/corpora/wordnet folder).")


def _cli(*argv: str) -> None:
    from jobs.cli import main

    log.debug("metacurate %s", " ".join(argv))
    rc = main(list(argv))
    if rc:
        raise RuntimeError(f"`metacurate {' '.join(argv)}` failed with status {rc}")


def _plant_overlaps(web: dict, heldout_dir: str, www: str, base_url: str, n: int, seed: int) -> list[str]:
    """Copy ``n`` held-out images into the web (resized + re-encoded), as extra pool rows."""
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = random.Random(seed)
    tars = sorted(os.path.join(heldout_dir, f) for f in os.listdir(heldout_dir) if f.endswith(".tar"))
    rows = []
    with tarfile.open(tars[0]) as tf:
        members = [m for m in tf.getmembers() if m.name.endswith(".jpg")]
        for m in rng.sample(members, min(n, len(members))):
            img = Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB")
            img = img.resize((int(img.width * 1.25), int(img.height * 1.25)))
            name = f"planted-{len(rows):03d}.jpg"
            os.makedirs(os.path.join(www, "planted"), exist_ok=True)
            img.save(os.path.join(www, "planted", name), quality=70)
            rows.append((f"{base_url}/planted/{name}", "a photo of the number seven in red"))
    pq.write_table(pa.table({"url": [u for u, _ in rows], "text": [t for _, t in rows]}),
                   os.path.join(web["pool"], "part-planted.parquet"))
    return [u for u, _ in rows]


#: The quickstart's caption languages and their share of the concrete captions (MetaCLIP 2
#: worldwide curation; zh is written without spaces).
LANGUAGES = {"en": 0.6, "de": 0.2, "zh": 0.2}


def write_omw_tabs(out_dir: str, languages) -> str:
    """Open Multilingual Wordnet ``wn-data-<code>.tab`` files for the non-English languages of the
    miniature web: every concept word of the language (digits, colours, shapes, textures) as a
    lemma of a made-up synset, the format MetaCLIP 2 builds its WordNet names from."""
    from jobs import synthetic

    codes = {"de": "deu", "zh": "cmn"}
    for lang in languages:
        if lang == "en":
            continue
        code = codes.get(lang, lang)
        folder = os.path.join(out_dir, code)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"wn-data-{code}.tab"), "w", encoding="utf-8") as f:
            f.write(f"# miniature web\t{code}\thttp://127.0.0.1/\tCC0\n")
            for i, word in enumerate(synthetic.lang_words(lang)):
                f.write(f"{90000000 + i:08d}-n\t{code}:lemma\t{word}\n")
    return out_dir


#: The port the miniature web is served on when it is free. The pool's URLs carry it, and uids are
#: ``sha224(url)``, so with one port every run of the quickstart has the same uids and therefore the
#: same balance draw and the same curated set; when the port is taken another free one is used.
WEB_PORT = 18473


def serve_web(root: str, port: int = WEB_PORT, say=None):
    """``synthetic.serve_directory(root)`` on ``port``, or on another free port (said) when it is taken."""
    from jobs import synthetic

    try:
        return synthetic.serve_directory(root, port=port)
    except OSError as exc:
        if say:
            say(f"port {port} is taken ({exc.strerror or exc}); serving on another free port, so the uids "
                f"(sha224 of the URL) differ from those of a run on port {port}")
        return synthetic.serve_directory(root, port=0)


def prepare_world(out: str, *, tiny: bool, pool_size: int, seed: int, master: str, wordnet: str | None,
                  step=None, languages: dict[str, float] | None = None) -> dict:
    """Metadata, the served web + pool, the held-out split(s) and the hashed eval sets.

    ``languages``: the caption languages and their shares (default: English only); the metadata
    then has a list per language (English from WordNet 3.0 and the dump, the others from Open
    Multilingual Wordnet files) and the held-out split has a parallel copy per language.
    Returns paths and ``stop_server`` (the HTTP server keeps running for the download stage).
    """
    from eval.datasets import load_digits_dataset, write_image_folder
    from jobs import synthetic

    step = step or _Steps(0)
    data = os.path.join(out, "data")
    os.makedirs(data, exist_ok=True)
    wordnet_dir = find_wordnet(wordnet)

    langs = list(languages or {"en": 1.0})
    step("metadata: WordNet 3.0 + a generated Wikipedia dump and pageviews"
         + (f"; Open Multilingual Wordnet lists for {', '.join(l for l in langs if l != 'en')}" if len(langs) > 1
            else ""))
    wiki = os.path.join(data, "wiki", "enwiki-pages-articles.xml.bz2")
    pv = os.path.join(data, "pageviews")
    if not os.path.exists(wiki):
        os.makedirs(os.path.dirname(wiki), exist_ok=True)
        synthetic.make_wiki_dump(wiki, n_pages=60 if tiny else 200, seed=seed)
        synthetic.make_pageviews(pv, n_files=3, seed=seed)
    meta_dir = os.path.join(data, "metadata" if langs == ["en"] else "metadata-" + "-".join(langs))
    if not os.path.exists(os.path.join(meta_dir, "metadata.json")):
        extra: list[str] = []
        if len(langs) > 1:
            omw = write_omw_tabs(os.path.join(data, "omw"), langs)
            extra = [a for lang in langs for a in ("--languages", lang)] + [
                "--omw", omw, "--set", f"metadata.wiki={{en: {wiki}}}"]
        else:
            extra = ["--wiki", wiki]
        _cli("metadata", "build", "--wordnet", wordnet_dir, "--pageviews", os.path.join(pv, "*.gz"),
             "--out", meta_dir, "--unigram-min-count", "20", "--bigram-min-pmi", "5", "--bigram-min-count", "5",
             "--master", master, *extra)
    n_entries = len(json.load(open(os.path.join(meta_dir, "metadata.json"))))
    report = json.load(open(os.path.join(meta_dir, "_report.json")))
    per_lang = report.get("entries_per_lang") or {}
    step.say(f"metadata: {n_entries:,} entries"
             + (f" ({', '.join(f'{k} {v:,}' for k, v in per_lang.items())})" if len(per_lang) > 1 else "")
             + f" -> {meta_dir}")

    step("web: rendering images, starting an HTTP server on 127.0.0.1, writing the pool")
    www_root = os.path.join(data, "web")
    os.makedirs(os.path.join(www_root, "www"), exist_ok=True)
    base_url, stop_server = serve_web(os.path.join(www_root, "www"), say=step.say)
    try:
        # workers=1: forking beside a live Spark gateway lets the children disturb its socket
        web = synthetic.make_web_pool(www_root, n=pool_size, seed=seed, base_url=base_url, workers=1,
                                      languages=languages if len(langs) > 1 else None)
        heldouts = {}
        for lang in langs:  # the same images, captioned in each language
            heldouts[lang] = os.path.join(data, "heldout" if lang == "en" else f"heldout-{lang}")
            if not os.path.isdir(heldouts[lang]):
                synthetic.heldout_split(heldouts[lang], n=100 if tiny else 300, seed=seed + 1_000_003, lang=lang)
        heldout = heldouts[langs[0]]
        planted_urls = _plant_overlaps(web, heldout, os.path.join(www_root, "www"), base_url, 5 if tiny else 12, seed)
        from curation.balancing import uid_from_url

        with open(os.path.join(data, "planted.json"), "w") as f:  # the audit's ground truth
            json.dump(sorted(uid_from_url(u) for u in planted_urls), f)
        planted = len(planted_urls)
        step.say(f"pool: {pool_size + planted:,} rows ({planted} planted copies of held-out images) at {base_url}")

        step("eval sets: hashing scikit-learn digits and the held-out split")
        digits_dir = os.path.join(data, "digits")
        if not os.path.isdir(digits_dir):
            write_image_folder(load_digits_dataset(64), digits_dir, flat=True)
        evalsets = os.path.join(data, "evalsets")
        _cli("evalsets", "hash", "--name", "digits", "--images", digits_dir, "--out", evalsets)
        _cli("evalsets", "hash", "--name", "heldout", "--images", heldout, "--out", evalsets)
    except BaseException:
        stop_server()
        raise
    return {"metadata": os.path.join(meta_dir, "metadata.json"), "pool": web["pool"], "heldout": heldout,
            "heldouts": heldouts, "languages": langs,
            "planted": os.path.join(data, "planted.json"),
            "evalsets": evalsets, "stop_server": stop_server, "base_url": base_url}


def curate_run(world: dict, run_dir: str, *, t: float | None, seed: int, master: str,
               mode: str = "metaclip", target_size: int | None = None, config_path: str,
               stages: list[str] | None = None) -> dict:
    """Write the run's config and run it (``stages``: only these and what they need); returns the
    balance stage's summary, or the match stage's when balance did not run."""
    size = f"target_size: {target_size}" if target_size is not None else f"t: {t}"
    balance = f"{{{size}, seed: {seed}}}" if mode == "metaclip" else f"{{mode: random, {size}, seed: {seed}}}"
    with open(config_path, "w") as f:
        f.write(f"run_dir: {run_dir}\npool: {{path: {world['pool']}, rows_per_unit: 1000}}\n"
                f"metadata: {{path: {world['metadata']}}}\nbalance: {balance}\n"
                # the miniature web is served on 127.0.0.1, which the download stage refuses by default
                f"download: {{image_size: 64, processes: 2, threads: 8, timeout: 5, allow_loopback: true}}\n"
                f"dedup: {{evalsets: {world['evalsets']}, k: 8}}\n"
                # several caption languages: MetaCLIP 2 worldwide (language ID, each caption against
                # its language's entries, the metaclip2 rule for Chinese, a t per language); captions
                # with no detectable language ('image', 'IMG_1234.jpg') count as English web alt-text
                + ("lid: {enabled: true, undetermined: en}\nmatch: {rule: metaclip2}\n"
                   if len(world.get("languages", ["en"])) > 1 else "")
                + f"shard: {{samples_per_shard: 250}}\nspark: {{master: '{master}'}}\n")
    _cli("run", "--config", config_path, *(["--set", f"stages=[{', '.join(stages)}]"] if stages else []))
    from curation.rundir import RunDir
    from jobs.stages import balance, match

    run = RunDir(run_dir)
    return run.stage(balance.STAGE.name).summary() or run.stage(match.STAGE.name).summary()


def shard_sizes(run_dir: str) -> tuple[str, dict[str, int]]:
    """The shard stage's folder in a run and its ``sizes.json`` (open_clip's format)."""
    from curation.rundir import RunDir
    from jobs.stages import shard

    d = RunDir(run_dir).stage(shard.STAGE.name, shard.STAGE.dir_name())
    return d.url, d.storage.read_json(shard.sizes_url(d))


def shard_pattern(run_dir: str) -> str:
    folder, sizes = shard_sizes(run_dir)
    names = sorted(k.rsplit(".", 1)[0] for k in sizes)
    if len(names) == 1:
        return os.path.join(folder, names[0] + ".tar")
    return os.path.join(folder, "{" + ",".join(names) + "}.tar")


def headline_chance(results: dict) -> dict[str, float]:
    """The chance level of each score the quickstart prints (``metrics`` names): zero-shot top-1 on
    the digits (1 / classes) and each held-out split's mean recall (that of a random ranking)."""
    from eval.report import retrieval_chance

    out = {}
    digits = results.get("zeroshot", {}).get("digits")
    if digits and digits.get("class_counts"):
        out["zeroshot/digits/top1"] = 1.0 / len(digits["class_counts"])
    for name, r in results.get("retrieval", {}).items():
        if name.startswith("heldout"):
            levels = [v for side in retrieval_chance(r).values() for v in side.values()]
            if levels:
                out[f"retrieval/{name}/mean_recall"] = sum(levels) / len(levels)
    return out


def train_and_eval(run_dir: str, world: dict, out: str, *, steps: int, seed: int, overlap: bool = True,
                   say=None) -> dict:
    train_dir = os.path.join(out, "train")
    if os.path.isdir(train_dir):  # a fresh model every time the quickstart runs (the trainer refuses to mix runs)
        import shutil

        shutil.rmtree(train_dir)
    done = _watch_training(os.path.join(train_dir, "metrics.jsonl"), steps, say) if say else (lambda: None)
    try:
        _cli("train", "--shards", shard_pattern(run_dir), "--model", "tiny", "--steps", str(steps), "--out",
             train_dir, "--batch-size", "64", "--mask-ratio", "0.5", "--unmasked-steps", str(max(steps // 5, 1)),
             "--save-every", str(max(steps // 2, 1)), "--seed", str(seed), "--workers", "1", "--no-progress")
    finally:
        done()
    results = os.path.join(out, "eval", "results.json")
    extra = ["--overlap", run_dir] if overlap else []
    heldouts = list((world.get("heldouts") or {"en": world["heldout"]}).values())
    _cli("eval", "--checkpoint", train_dir, "--zeroshot", "digits",
         *[a for h in heldouts for a in ("--retrieval", h)],
         "--out", results, "--html", os.path.join(out, "eval"), *extra)
    return json.load(open(results))


def run(args) -> int:
    tiny = args.tiny
    pool_size = args.pool_size or (600 if tiny else DEFAULT_POOL_SIZE)
    steps = args.train_steps or (30 if tiny else DEFAULT_STEPS)
    t = args.t or (20 if tiny else 60)
    out = os.path.abspath(args.out)
    find_wordnet(args.wordnet)  # fail fast with the install hint
    log_path = os.path.join(out, "quickstart.log")
    console = _Console(log_path)
    try:
        with console:
            _run(args, out, tiny=tiny, pool_size=pool_size, steps=steps, t=t, out_stream=console.out)
    except BaseException:
        print(f"\nThe quickstart failed; the details are in {log_path}. Its last lines:", file=sys.stderr)
        try:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                print("".join(f.readlines()[-25:]), file=sys.stderr)
        except OSError:
            pass
        raise
    print(f"  log (Spark, img2dataset, training): {log_path}")
    return 0


#: Training steps and pool rows of the full quickstart: enough for the scores to rise above chance,
#: few enough for the whole run to stay within about five minutes on 2 cores. Measured on 2 cores
#: (training seeds 0, 1, 2; ``--seed`` is 0): with 3,000 rows, held-out retrieval mean recall
#: 0.36 / 0.34 / 0.32 and zero-shot top-1 on the real digits 0.08 / 0.16 / 0.11 (chance 0.10);
#: with 6,000 rows, 0.45 / 0.46 / 0.45 and 0.13 / 0.10 / 0.19, for 11 s more in all (2m48s).
#: Zero-shot on the real digits is a transfer from synthetic scans to scikit-learn's 8x8 ones and
#: stays close to chance at this size, so the quickstart prints each score with its chance level.
#: 300 steps left the digits' image features nearly one point.
DEFAULT_STEPS = 600
DEFAULT_POOL_SIZE = 6000


def _run(args, out: str, *, tiny: bool, pool_size: int, steps: int, t: float, out_stream) -> None:
    from jobs.spark import get_spark

    run_dir = os.path.join(out, "run")
    step = _Steps(6, out_stream)
    get_spark(args.master)  # one session for every step
    languages = {lang: share for lang, share in LANGUAGES.items() if lang in args.languages}
    world = prepare_world(out, tiny=tiny, pool_size=pool_size, seed=args.seed, master=args.master,
                          wordnet=args.wordnet, step=step, languages=languages)
    try:
        step("curate: match -> count -> balance -> download -> dedup -> shard (Spark)")
        summary = curate_run(world, run_dir, t=t, seed=args.seed, master=args.master,
                             config_path=os.path.join(out, "run.yaml"))
        step.say(f"kept {summary['kept']:,} of {summary['matched']:,} matched captions (t = {t:g})")
        for lang, v in (summary.get("per_language") or {}).items():
            step.say(f"  {lang}: t = {v['t']:g} (tail share {v['tail_proportion']:.2f}), kept {v['rows_kept']:,} of "
                     f"{v['rows_in']:,} rows, {v['head_entries']} head entries")
    finally:
        world["stop_server"]()

    step("report: distribution report and overlap audit")
    _cli("report", run_dir)
    _cli("audit", run_dir, "--truth", world["planted"])
    audit = json.load(open(os.path.join(run_dir, "audit", "audit.json")))
    truth = audit.get("truth", {}).get("confirmed", {})
    step.say(f"audit: {audit['overlapping_pool_images']} pool images overlap the eval sets "
             f"({audit['phash_pairs']} pHash pairs, {audit['pairs']} confirmed by the colour check); of the "
             f"{truth.get('known_copies', 0)} planted copies {truth.get('true_positives', 0)} were found")

    step(f"train + eval: tiny CLIP, {steps} steps (FLIP masking 0.5, then unmasked tuning); "
         "zero-shot on scikit-learn digits, retrieval on the held-out split")
    results = train_and_eval(run_dir, world, out, steps=steps, seed=args.seed, say=step.say)
    chance = headline_chance(results)
    for name, value in sorted(results.get("metrics", {}).items()):
        if name in chance:
            step.say(f"{name} = {value:.3f} (chance {chance[name]:.3f})")
    for name in results.get("collapsed", []):
        step.say(f"note: the model does not tell the {name} images apart yet "
                 f"({results['diagnostics'][name].get('why', '')}), so its zero-shot score there is a matter of "
                 f"chance, above or below the chance level")
    step.finish()
    p = step.out
    print(f"\n  distribution report: {os.path.join(run_dir, 'report', 'index.html')}", file=p)
    print(f"  overlap audit:       {os.path.join(run_dir, 'audit', 'index.html')}", file=p)
    print(f"  eval results:        {os.path.join(out, 'eval', 'results.json')}", file=p, flush=True)
