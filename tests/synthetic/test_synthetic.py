"""The miniature web: deterministic images, a served pool with the promised noise, wiki + pageviews."""
from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import os
import random
import re
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from jobs import synthetic as S


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


# ------------------------------------------------------------------------------------ images
@pytest.mark.parametrize("spec", [
    {"seed": 3, "digit": 7, "style": "hand", "colour": "red", "background": "white", "texture": "stripes"},
    {"seed": 4, "digit": 2, "style": "font", "colour": "white", "background": "black", "texture": "noise"},
    {"seed": 5, "digit": 0, "style": "scan", "colour": "black", "background": "white"},
    {"seed": 6, "digit": 5, "shape": "ring", "style": "hand", "colour": "blue", "background": "yellow",
     "texture": "dots"},
    {"seed": 7, "shape": "star", "colour": "purple", "background": "green", "texture": "gradient"},
])
def test_render_is_deterministic_and_seed_dependent(spec):
    a, b = S.render_image(spec, 64), S.render_image(dict(spec), 64)
    assert a.size == (64, 64) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()
    assert _png(a) == _png(b)
    c = S.render_image(dict(spec, seed=spec["seed"] + 1000), 64)
    assert c.tobytes() != a.tobytes()


def test_every_shape_texture_and_digit_renders_with_ink():
    for i, shape in enumerate(S.SHAPES):
        for texture in S.TEXTURES:
            img = S.render_image({"seed": i, "shape": shape, "colour": "red", "background": "blue",
                                  "texture": texture}, 48)
            red = sum(1 for r, g, b in img.getdata() if r > 150 and g < 90 and b < 90)
            assert red > 48 * 48 * 0.03, (shape, texture)  # the shape is visible
    for d in range(10):
        for style in S.DIGIT_STYLES:
            img = S.render_image({"seed": d, "digit": d, "style": style, "colour": "black",
                                  "background": "white"}, 48).convert("L")
            dark = sum(1 for v in img.getdata() if v < 100)
            assert 0.02 * 48 * 48 < dark < 0.6 * 48 * 48, (d, style)


def test_render_rejects_bad_specs():
    with pytest.raises(ValueError, match="colour"):
        S.render_image({"seed": 1, "shape": "star", "colour": "mauve"})
    with pytest.raises(ValueError, match="shape"):
        S.render_image({"seed": 1, "shape": "blob", "colour": "red"})
    with pytest.raises(ValueError, match="digit or a shape"):
        S.render_image({"seed": 1})


def test_fonts_found_render_distinct_digits():
    fonts = S.available_fonts()
    assert all(os.path.isfile(p) for p in fonts)
    # glyphs of the same digit differ across fonts: the "font" style really varies
    if len(fonts) >= 2:
        def glyph(i: int) -> bytes:
            img = Image.new("L", (64, 64), 0)
            ImageDraw.Draw(img).text((4, 0), "4", fill=255, font=S._font(i, 40))
            return img.tobytes()

        assert len({glyph(i) for i in range(len(fonts) + 1)}) >= 2


# ------------------------------------------------------------------------------------ server
def test_server_serves_files_404s_and_stops(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jpg").write_bytes(b"\xff\xd8hello")
    with S.serve_directory(str(tmp_path)) as (base, stop):
        assert base.startswith("http://127.0.0.1:")
        assert _get(f"{base}/sub/a.jpg") == (200, b"\xff\xd8hello")
        assert _get(f"{base}/sub/missing.jpg")[0] == 404
        assert _get(f"{base}/../../etc/passwd")[0] == 404
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{base}/sub/a.jpg", timeout=2)
    stop()  # idempotent


def test_server_refuses_non_loopback(tmp_path):
    with pytest.raises(ValueError, match="127.0.0.1"):
        S.serve_directory(str(tmp_path), host="0.0.0.0")
    with pytest.raises(FileNotFoundError):
        S.serve_directory(str(tmp_path / "nope"))


# ------------------------------------------------------------------------------------ pool
@pytest.fixture(scope="module")
def served_pool(tmp_path_factory):
    out = tmp_path_factory.mktemp("web")
    (out / "www").mkdir()
    with S.serve_directory(str(out / "www")) as (base, _stop):
        info = S.make_web_pool(str(out), n=700, seed=11, base_url=base, size=48)
        yield out, base, info


def test_pool_is_deterministic_whatever_the_worker_count(tmp_path):
    a = S.make_web_pool(str(tmp_path / "a"), n=220, seed=5, base_url="http://127.0.0.1:9", size=32, workers=1)
    b = S.make_web_pool(str(tmp_path / "b"), n=220, seed=5, base_url="http://127.0.0.1:9", size=32, workers=2)
    assert pq.read_table(a["pool"]).equals(pq.read_table(b["pool"]))
    assert pq.read_table(a["labels"]).equals(pq.read_table(b["labels"]))
    assert _tree_digest(Path(a["www"])) == _tree_digest(Path(b["www"]))
    c = S.make_web_pool(str(tmp_path / "c"), n=60, seed=6, base_url="http://127.0.0.1:9", size=32)
    assert len(list(Path(a["www"]).rglob("*.*"))) == a["image_files"] > 150
    assert not pq.read_table(a["pool"]).equals(pq.read_table(c["pool"]))


def test_pool_has_the_promised_noise(served_pool):
    out, base, info = served_pool
    pool = pq.read_table(info["pool"])
    assert pool.column_names == ["url", "text"]  # no uid: the pipeline derives it
    urls, texts = pool.column("url").to_pylist(), pool.column("text").to_pylist()
    n = len(urls)
    assert n == 700 == info["rows"]
    assert all(u.startswith(base + "/") for u in urls)

    frac = lambda k: k / n  # noqa: E731
    nulls = sum(t is None for t in texts)
    empties = sum(t is not None and not t.strip() for t in texts)
    generic_re = re.compile("^(?:" + "|".join(
        re.escape(t).replace(re.escape("{n}"), r"\d+") for t, _ in S.GENERIC_CAPTIONS) + ")$")
    generic = sum(1 for t in texts if t and generic_re.match(t))
    dup_urls = n - len(set(urls))
    by_text: dict[str, set] = {}
    for u, t in zip(urls, texts):
        if t and t.strip():
            by_text.setdefault(t, set()).add(u)
    shared_captions = sum(1 for us in by_text.values() if len(us) > 1)
    assert 0.01 <= frac(nulls) <= 0.06
    assert 0.005 <= frac(empties) <= 0.05
    assert 0.17 <= frac(generic) <= 0.35
    assert 0.025 <= frac(dup_urls) <= 0.09
    assert shared_captions >= 30
    counts = Counter(generic_re.match(t).group(0) for t in texts if t and generic_re.match(t))
    assert counts.most_common(1)[0][0] in ("image", "photo")  # a heavy head

    labels = pq.read_table(info["labels"]).to_pylist()
    assert {r["url"] for r in labels} == set(urls)
    status = Counter(r["status"] for r in labels)
    assert 0.02 <= status["missing"] / len(labels) <= 0.07
    assert 2 <= status["corrupt"] <= 0.03 * len(labels)
    for r in labels:
        path = out / "www" / r["path"]
        if r["status"] == "missing":
            assert not path.exists()
        elif r["status"] == "corrupt":
            with pytest.raises(OSError):
                Image.open(path).load()
    ok = [r for r in labels if r["status"] == "ok"]
    for r in ok[:40]:
        Image.open(out / "www" / r["path"]).load()

    # over HTTP: ok images come back as decodable images, broken links are 404s
    missing = [r for r in labels if r["status"] == "missing"][:5]
    assert missing and all(_get(r["url"])[0] == 404 for r in missing)
    for r in ok[:5]:
        code, body = _get(r["url"])
        assert code == 200
        Image.open(io.BytesIO(body)).load()


def test_concrete_captions_describe_their_images(served_pool):
    _, _, info = served_pool
    cats = pq.read_table(info["categories"]).to_pylist()
    texts = pq.read_table(info["pool"]).column("text").to_pylist()
    labels = {r["url"]: r for r in pq.read_table(info["labels"]).to_pylist()}
    checked = 0
    for row, text in zip(cats, texts):
        if row["category"] not in ("concrete", "dup_caption"):
            continue
        lab = labels[row["url"]]
        words = set(text.lower().split())
        if lab["digit"] is not None:
            assert {S.DIGIT_WORDS[lab["digit"]], str(lab["digit"])} & words, (text, lab)
        else:
            assert lab["shape"] in words, (text, lab)
        assert all(w in set(S.wiki_vocabulary()) or w.isdigit() for w in words), text
        checked += 1
    assert checked > 300


def test_concept_distribution_is_skewed_but_complete(served_pool):
    _, _, info = served_pool
    digits = Counter(r["digit"] for r in pq.read_table(info["labels"]).to_pylist() if r["digit"] is not None)
    assert set(digits) == set(range(10))
    top, bottom = digits.most_common()[0][1], digits.most_common()[-1][1]
    assert top >= 3 * bottom  # a Zipf head for balancing to flatten


def test_placeholder_port_is_fixed_later(tmp_path):
    info = S.make_web_pool(str(tmp_path), n=30, seed=1, size=32)
    assert info["needs_port"]
    assert all("{port}" in u for u in pq.read_table(info["pool"]).column("url").to_pylist())
    changed = S.set_base_url(str(tmp_path), "http://127.0.0.1:4321")
    assert changed == 30
    urls = pq.read_table(info["pool"]).column("url").to_pylist()
    assert all(u.startswith("http://127.0.0.1:4321/") for u in urls)
    assert set(pq.read_table(info["labels"]).column("url").to_pylist()) == set(urls)
    assert json.loads((tmp_path / "web.json").read_text())["needs_port"] is False


# ------------------------------------------------------------------------------------ wiki + pageviews
def test_wiki_dump_is_bz2_xml_covering_the_pool_vocabulary(tmp_path):
    from metadata import wiki

    path = str(tmp_path / "enwiki-pages-articles.xml.bz2")
    info = S.make_wiki_dump(path, n_pages=len(S._topics()), seed=2)
    with bz2.open(path, "rb") as f:
        titles = [el.text for ev, el in ET.iterparse(f) if el.tag.endswith("}title")]
    assert len(titles) == info["pages"] and "Red star" in titles and "Seven" in titles
    with bz2.open(path, "rb") as f:
        root_ns = next(ET.iterparse(f, events=("start",)))[1].tag
    assert root_ns == "{http://www.mediawiki.org/xml/export-0.11/}mediawiki"
    raw = bz2.open(path, "rt", encoding="utf-8").read()
    for construct in ("{{", "[[", "{|", "&lt;ref&gt;", "== History =="):
        assert construct in raw

    counts = wiki.NgramCounts.empty()
    for text in wiki.article_texts(wiki.iter_pages(path)):
        counts.add_page(text)
    rng = random.Random(0)
    sampler = S._Sampler(rng, 0.0)
    caption_words = set()
    for _ in range(3000):
        caption_words.update(w.lower() for w in S.describe(sampler.spec(), rng).split() if not w.isdigit())
    thin = {w: counts.unigrams[w] for w in caption_words if counts.unigrams[w] < 10}
    assert not thin, f"caption words rare in the dump: {thin}"
    assert counts.bigrams[("red", "star")] >= 5 and counts.bigrams[("polka", "dots")] >= 5
    assert "zzcell" not in counts.unigrams  # tables are stripped by the reader: markup is real


def test_wiki_dump_is_deterministic(tmp_path):
    a, b = str(tmp_path / "a.xml.bz2"), str(tmp_path / "b.xml.bz2")
    S.make_wiki_dump(a, 20, seed=4)
    S.make_wiki_dump(b, 20, seed=4)
    assert Path(a).read_bytes() == Path(b).read_bytes()


def test_pageviews_parse_and_filter(tmp_path):
    from metadata import pageviews as pv

    paths = S.make_pageviews(str(tmp_path), n_files=3, seed=0)
    assert [os.path.basename(p) for p in paths] == [f"pageviews-20240101-{h:02d}0000.gz" for h in range(3)]
    projects, colon = Counter(), 0
    for p in paths:
        with gzip.open(p, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                parts = line.rstrip("\n").split(" ")
                assert len(parts) == 4 and int(parts[2]) >= 1 and parts[3].isdigit()
                assert pv.parse_line(line, p, i) is not None
                projects[parts[0]] += 1
                colon += ":" in parts[1]
    assert set(projects) == {"en", "en.m", "de"} and colon > 0
    totals = pv.title_totals(paths)
    assert "Red star" in totals and "Number seven" in totals
    assert not any(":" in t for t in totals)
    assert "Roter Stern" not in totals  # de lines are not en


# ------------------------------------------------------------------------------------ held-out
def test_heldout_shards(tmp_path):
    from curation.shards import read_tar_samples

    info = S.heldout_split(str(tmp_path / "heldout"), n=25, seed=9, size=48, samples_per_shard=10)
    assert info["samples"] == 25 and len(info["shards"]) == 3
    sizes = json.loads((tmp_path / "heldout" / "sizes.json").read_text())
    assert sizes == {"000000.tar": 10, "000001.tar": 10, "000002.tar": 5}
    samples = [s for name in info["shards"] for s in read_tar_samples(str(tmp_path / "heldout" / name))]
    assert len(samples) == 25
    for s in samples:
        meta = json.loads(s["json"])
        assert {"uid", "url", "entry_ids", "entries", "phash", "p_keep", "captions"} <= set(meta)
        assert re.fullmatch(r"[0-9a-f]{16}", meta["phash"])
        assert s["txt"].decode() == meta["captions"][0]
        assert Image.open(io.BytesIO(s["jpg"])).size == (48, 48)
        if meta["digit"] is not None:
            assert meta["label"] == meta["digit"]
    again = S.heldout_split(str(tmp_path / "again"), n=25, seed=9, size=48, samples_per_shard=10)
    assert again["samples"] == 25
    assert (tmp_path / "again" / "000001.tar").read_bytes() == (tmp_path / "heldout" / "000001.tar").read_bytes()


# ---------------------------------------------------------------------------------- languages
def test_captions_in_other_languages_use_their_vocabulary():
    rng = random.Random(4)
    sampler = S._Sampler(rng, 1.0)
    for lang in ("de", "zh"):
        words = set(S.lang_words(lang))
        for _ in range(200):
            spec = sampler.spec()
            text = S.describe_lang(spec, rng, lang)
            v = S.LANG_VOCAB[lang]
            named = v["digits"][spec["digit"]] if spec.get("digit") is not None else v["shapes"][spec["shape"]]
            # the caption names its concept, or (short phrasings) at least one word of the language
            assert named in text or any(w in text for w in words), text
            assert not re.search(r"[a-z]{3,}", text) if lang == "zh" else True
        specific = S.describe_lang(spec, rng, lang, specific=True)
        assert v["colours"][spec["colour"]] in specific  # held-out captions name every attribute


def test_pool_languages_and_their_share(tmp_path):
    info = S.make_web_pool(str(tmp_path / "web"), n=600, seed=2, base_url="http://127.0.0.1:9", workers=1,
                           languages={"en": 0.5, "de": 0.25, "zh": 0.25})
    cats = pq.read_table(info["categories"]).to_pylist()
    texts = pq.read_table(info["pool"]).column("text").to_pylist()  # the rows in the categories' order
    langs = Counter(r["lang"] for r in cats if r["category"] == "concrete")
    total = sum(langs.values())
    assert set(langs) == {"en", "de", "zh"} and abs(langs["de"] / total - 0.25) < 0.08
    zh = [t for t, r in zip(texts, cats) if r["lang"] == "zh"]
    assert zh and all(re.search(r"[\u4e00-\u9fff]", t) and " " not in t for t in zh)
    de = [t for t, r in zip(texts, cats) if r["lang"] == "de"]
    assert de and all(any(w in t for w in S.lang_words("de")) for t in de)
    with pytest.raises(ValueError, match="no caption vocabulary"):
        S.make_web_pool(str(tmp_path / "bad"), n=10, languages={"xx": 1.0})


def test_english_only_pool_is_unchanged_by_the_languages_option(tmp_path):
    a = S.make_web_pool(str(tmp_path / "a"), n=120, seed=5, base_url="http://127.0.0.1:9", workers=1)
    b = S.make_web_pool(str(tmp_path / "b"), n=120, seed=5, base_url="http://127.0.0.1:9", workers=1,
                        languages={"en": 1.0})
    ta, tb = (pq.read_table(x["pool"]).column("text").to_pylist() for x in (a, b))
    assert ta == tb


def test_heldout_in_several_languages_is_parallel(tmp_path):
    from curation.shards import read_tar_samples

    sets = {lang: S.heldout_split(str(tmp_path / lang), n=12, seed=3, size=32, lang=lang) for lang in ("en", "zh")}
    en, zh = ([s for name in sets[lang]["shards"] for s in read_tar_samples(str(tmp_path / lang / name))]
              for lang in ("en", "zh"))
    assert [s["jpg"] for s in en] == [s["jpg"] for s in zh]  # the same images ...
    assert all(re.search(r"[\u4e00-\u9fff]", s["txt"].decode()) for s in zh)  # ... captioned in Chinese
    assert json.loads(zh[0]["json"])["lang"] == "zh"
