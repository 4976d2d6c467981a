"""Fixtures of the metadata tests: a private WordNet cache (so every run reads WordNet through
nltk once, then reuses the names) and small generated Wikipedia / pageview inputs."""
from __future__ import annotations

import os
import random

import pytest

from metadata.synthetic import SynthPage, synthetic_article, write_dump, write_pageviews

VOCAB = ["alpha", "beta", "gamma", "delta", "epsilon", "new", "york", "hot", "dog", "river", "city"]


@pytest.fixture(scope="session", autouse=True)
def metadata_cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("metacurate-cache")
    old = os.environ.get("METACURATE_CACHE")
    os.environ["METACURATE_CACHE"] = str(d)
    yield d
    if old is None:
        os.environ.pop("METACURATE_CACHE", None)
    else:
        os.environ["METACURATE_CACHE"] = old


def make_pages(n: int, seed: int = 1) -> list[SynthPage]:
    """Articles with markup; every fifth one says "ice cream" (a high-PMI pair)."""
    rng = random.Random(seed)
    pages = []
    for i in range(n):
        text = synthetic_article(rng, VOCAB, 6)
        if i % 5 == 0:
            text += "\nWe ate ice cream. Ice cream, again."
        pages.append(SynthPage(f"Article {i}", text))
    pages.append(SynthPage("Talk:Article 1", "talkonly words", ns=1))
    pages.append(SynthPage("Alias", "#REDIRECT [[Article 2]]", redirect="Article 2"))
    return pages


@pytest.fixture(scope="session")
def wiki_inputs(tmp_path_factory):
    """A multistream dump, its pages, and two hourly pageview files."""
    d = tmp_path_factory.mktemp("wiki-inputs")
    pages = make_pages(150)
    dump = d / "enwiki-20240101-pages-articles-multistream.xml.bz2"
    write_dump(str(dump), pages, pages_per_stream=10)
    pv = d / "pageviews"
    pv.mkdir()
    write_pageviews(str(pv / "pageviews-20240101-000000.gz"),
                    [("en", "Hot_dog", 60), ("en", "New_York_City", 80), ("en", "Washington,_D.C.", 90),
                     ("en", "Special:Random", 500), ("en.m", "Dog", 900), ("fr", "Chien", 900),
                     ("en", "Rare", 10), ("en", "Dog", 75)])
    write_pageviews(str(pv / "pageviews-20240101-010000.gz"),
                    [("en", "Hot_dog", 55), ("en", "Rare", 49), ("en", "Borderline", 69)])
    return {"dir": d, "dump": str(dump), "pages": pages, "pageviews": str(pv / "*.gz")}


def build_metadata(spark, out: str, wordnet: str | None = None, wiki: str | None = None,
                   pageviews: str | None = None, force: bool = False, **settings) -> dict:
    """Run the metadata stage into the folder ``out`` (as `metacurate metadata build --out` does);
    returns the build's report (``out/_report.json``). ``spark=None``: the stage must not need one."""
    import json

    from curation.rundir import RunDir, StageDir
    from curation.storage import Storage
    from jobs.config import load_config
    from jobs.stages import metadata
    from jobs.stages.base import StageContext, execute

    values = {f"metadata.{k}": v for k, v in {"wordnet": wordnet, "wiki": wiki, "pageviews": pageviews,
                                              **settings}.items() if v is not None}
    cfg = load_config(None, values={"run_dir": out, **values})

    def no_spark():
        raise AssertionError("this build was expected to need no Spark session")

    run = RunDir(out, Storage())
    ctx = StageContext(cfg=cfg, run=run, spark_factory=(lambda: spark) if spark is not None else no_spark)
    metadata.STAGE.check(ctx)
    execute(metadata.STAGE, ctx, out=StageDir(run.url, run.storage), force=force)
    with open(os.path.join(out, "_report.json"), encoding="utf-8") as f:
        return json.load(f)
