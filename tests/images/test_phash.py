"""pHash parity with imagehash, batch parity, fast-path closeness, and failure handling."""
from __future__ import annotations

import io

import imagehash
import numpy as np
import pytest
from PIL import Image

from curation.phash import (
    ImageDecodeError,
    hamming,
    hash_to_hex,
    phash,
    phash_batch,
    phash_bytes,
    phash_bytes_batch,
)


def _ref(img: Image.Image) -> int:
    return int(str(imagehash.phash(img)), 16)


def _varied_images(natural, n: int = 540) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        w, h = int(rng.integers(8, 200)), int(rng.integers(8, 200))
        base = natural(rng, w, h) if i % 3 else Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        kind = i % 9
        if kind == 0:
            img = base
        elif kind == 1:
            img = base.convert("RGBA")
            img.putalpha(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)))
        elif kind == 2:
            img = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=int(rng.integers(2, 256)))
        elif kind == 3:
            img = base.convert("L")
        elif kind == 4:
            img = base.convert("CMYK")
        elif kind == 5:
            arr = np.asarray(base.convert("L")).astype("<u2") * 257
            img = Image.frombytes("I;16", (w, h), arr.tobytes())
        elif kind == 6:
            img = base.convert("LA")
        elif kind == 7:
            img = base.convert("1")
        else:  # JPEG with an EXIF orientation tag (rotate 90): imagehash ignores it, so must we
            exif = Image.Exif()
            exif[0x0112] = int(rng.choice([3, 6, 8]))
            b = io.BytesIO()
            base.save(b, "JPEG", exif=exif.tobytes(), quality=85)
            img = Image.open(io.BytesIO(b.getvalue()))
        out.append(img)
    return out


def test_phash_bit_exact_with_imagehash(natural):
    images = _varied_images(natural)
    modes = {im.mode for im in images}
    assert {"RGB", "RGBA", "P", "L", "CMYK", "I;16", "LA", "1"} <= modes
    ref = [_ref(im) for im in images]
    assert [phash(im) for im in images] == ref
    batch = phash_batch(images)
    assert batch.dtype == np.uint64
    assert [int(h) for h in batch] == ref
    assert hash_to_hex(ref[0]) == str(imagehash.phash(images[0]))


def test_exif_orientation_not_applied(natural):
    """A rotated-by-EXIF JPEG hashes like its stored pixels (imagehash's behaviour), not rotated."""
    rng = np.random.default_rng(3)
    base = natural(rng, 200, 120)
    exif = Image.Exif()
    exif[0x0112] = 6
    b = io.BytesIO()
    base.save(b, "JPEG", exif=exif.tobytes(), quality=90)
    data = b.getvalue()
    from PIL import ImageOps
    stored = _ref(Image.open(io.BytesIO(data)))
    rotated = _ref(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    assert stored != rotated
    assert phash_bytes(data) == stored


def test_bytes_paths(natural):
    rng = np.random.default_rng(11)
    datas = []
    for _ in range(40):
        b = io.BytesIO()
        natural(rng, int(rng.integers(256, 700)), int(rng.integers(256, 700))).save(b, "JPEG", quality=85)
        datas.append(b.getvalue())
    ref = np.array([_ref(Image.open(io.BytesIO(d))) for d in datas], dtype=np.uint64)
    exact = np.array([phash_bytes(d) for d in datas], dtype=np.uint64)
    assert np.array_equal(exact, ref)
    batch, errs = phash_bytes_batch(datas, workers=2)
    assert errs == [None] * len(datas) and np.array_equal(batch, ref)
    fast, _ = phash_bytes_batch(datas, mode="fast")
    d = hamming(fast, ref)
    assert np.median(d) <= 2 and d.max() <= 10, d


def test_corrupt_and_bomb_images(natural, huge_png_header):
    good = io.BytesIO()
    natural(np.random.default_rng(0), 64, 64).save(good, "JPEG")
    truncated = good.getvalue()[: len(good.getvalue()) // 2]
    cases = {b"": "corrupt_image", b"not an image at all": "corrupt_image", truncated: "corrupt_image"}
    cases[huge_png_header()] = "image_too_large"
    for data, reason in cases.items():
        for mode in ("exact", "fast"):
            with pytest.raises(ImageDecodeError) as info:
                phash_bytes(data, mode=mode)
            assert info.value.reason == reason
    hashes, errs = phash_bytes_batch(list(cases) + [good.getvalue()])
    assert [e.reason if e else None for e in errs] == list(cases.values()) + [None]
    assert hashes[-1] == phash_bytes(good.getvalue())
    with pytest.raises(ValueError):
        phash_bytes(good.getvalue(), mode="nope")


def test_blas_resize_is_pillows_lanczos_bit_for_bit():
    """Our matrix-product LANCZOS reproduces Pillow's pixels on noise (the worst case for rounding),
    over shapes that take each pass order, upscaling, one side already 32, and tall/wide extremes."""
    import curation.phash as ph
    if not ph.blas_resize_available():
        pytest.skip(f"Pillow {Image.__version__} resamples differently; pHash uses Pillow's resize")
    rng = np.random.default_rng(11)
    shapes = [(1000, 200), (200, 1000), (480, 640), (640, 480), (65, 33), (32, 700), (700, 32), (7, 5),
              (31, 64), (1, 300), (300, 1), (97, 45), (45, 97)] + \
             [tuple(int(v) for v in rng.integers(1, 900, 2)) for _ in range(40)]
    for h, w in shapes:
        grey = rng.integers(0, 256, (h, w), dtype=np.uint8)
        want = np.asarray(Image.fromarray(grey).resize((32, 32), Image.Resampling.LANCZOS))
        got = ph._resize_lanczos(grey, ph._resize_order)
        assert got.dtype == np.uint8 and got.shape == (32, 32)
        assert np.array_equal(got, want), (h, w)


def test_exact_path_through_blas_resize_matches_imagehash(natural, monkeypatch):
    """Every image of the varied set (all modes, tiny sizes too) through the BLAS resize."""
    import curation.phash as ph
    if not ph.blas_resize_available():
        pytest.skip("BLAS resize disabled by its self-check")
    monkeypatch.setattr(ph, "BLAS_RESIZE_MIN_PIXELS", 0)
    images = _varied_images(natural, n=180)
    assert [int(h) for h in phash_batch(images)] == [_ref(im) for im in images]
    datas = [_jpeg(im) for im in images[:40]]
    hashes, errors = phash_bytes_batch(datas, "exact", workers=2)
    assert all(e is None for e in errors)
    assert [int(h) for h in hashes] == [_ref(Image.open(io.BytesIO(d))) for d in datas]


def _jpeg(img: Image.Image) -> bytes:
    b = io.BytesIO()
    img.convert("RGB").save(b, "JPEG", quality=85)
    return b.getvalue()


def _jpeg_variants(natural) -> dict[str, bytes]:
    """JPEG flavours the web serves: baseline 4:2:0, progressive, optimised tables, 4:4:4, grey,
    RGB colour space (Adobe, no YCbCr), CMYK, EXIF-rotated; every libjpeg scale (1, 1/2, 1/8)."""
    rng = np.random.default_rng(23)
    out: dict[str, bytes] = {}

    def save(name: str, img: Image.Image, **kw) -> None:
        b = io.BytesIO()
        img.save(b, "JPEG", **kw)
        out[name] = b.getvalue()

    for w, h in ((40, 30), (200, 130), (700, 520), (1100, 1300)):
        img = natural(rng, w, h)
        save(f"baseline{w}", img, quality=85)
        save(f"progressive{w}", img, quality=80, progressive=True)
    img = natural(rng, 530, 610)
    save("optimized", img, quality=90, optimize=True)
    save("444", img, quality=90, subsampling=0)
    save("grey", img.convert("L"), quality=85)
    save("rgb_colourspace", img, quality=85, keep_rgb=True)
    save("cmyk", img.convert("CMYK"), quality=85)
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif_rotated", img, quality=85, exif=exif.tobytes())
    return out


def test_fast_jpeg_decoder_gives_the_draft_path_pixels(natural, monkeypatch):
    """The direct JPEG decode (no Image.open / load) yields exactly the thumbnails of
    ``draft("L", (64, 64))`` + ``load()``, so fast hashes do not depend on which route ran."""
    import curation.phash as ph

    variants = _jpeg_variants(natural)
    direct = {name: ph._fast_jpeg_thumb(d, ph.DEFAULT_MAX_PIXELS) for name, d in variants.items()}
    assert direct.pop("cmyk") is None  # libjpeg has no CMYK -> grey: the generic path handles it
    monkeypatch.setattr(ph, "_fast_jpeg_thumb", lambda data, max_pixels: None)
    for name, thumb in direct.items():
        assert thumb is not None and thumb.shape == (32, 32), name
        assert np.array_equal(thumb, ph._thumb_from_bytes(variants[name], "fast", ph.DEFAULT_MAX_PIXELS)), name
    generic_cmyk = ph._thumb_from_bytes(variants["cmyk"], "fast", ph.DEFAULT_MAX_PIXELS)
    monkeypatch.undo()
    assert np.array_equal(ph._thumb_from_bytes(variants["cmyk"], "fast", ph.DEFAULT_MAX_PIXELS), generic_cmyk)


def test_jpeg_frame_header_and_fast_bomb_check(natural):
    import curation.phash as ph

    for name, data in _jpeg_variants(natural).items():
        with Image.open(io.BytesIO(data)) as im:
            assert ph.jpeg_frame_header(data) == (*im.size, len(im.getbands())), name
    b = io.BytesIO()
    Image.new("RGB", (8, 8)).save(b, "PNG")
    for not_jpeg in (b"", b"\xff\xd8", b"\xff\xd8\xff\xda\x00\x02", b.getvalue(), b"\xff\xd8garbage" * 3):
        assert ph.jpeg_frame_header(not_jpeg) is None
    # a small JPEG whose frame header claims 60000 x 60000 px: refused before any decoding
    data = bytearray(_jpeg(natural(np.random.default_rng(1), 64, 64)))
    i = next(i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xC0)
    data[i + 5:i + 9] = (60000).to_bytes(2, "big") * 2
    assert ph.jpeg_frame_header(bytes(data))[:2] == (60000, 60000)
    with pytest.raises(ImageDecodeError) as info:
        phash_bytes(bytes(data), mode="fast")
    assert info.value.reason == "image_too_large"
