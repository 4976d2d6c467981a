"""Perceptual hash (pHash) bit-exact with ``imagehash.phash``, plus a batched and a fast path.

Why bit-exact: eval-set hashes may be computed by other tools (imagehash is the de-facto
reference), and an audit that says "distance d" must mean the same thing everywhere.

imagehash's algorithm (4.3.x), reproduced step by step:
``image.convert("L").resize((32, 32), LANCZOS)`` -> float64 -> ``scipy.fftpack.dct`` along
axis 0, then along axis 1 (DCT-II, no normalisation) -> top-left 8x8 -> ``> median``.
The hash's hex string (``str(imagehash.phash(img))``) reads the 8x8 boolean array row-major with
the first element as the most significant bit; our ``int`` is that hex string read base 16,
i.e. ``int(str(imagehash.phash(img)), 16)``.

Facts (checked by the tests): imagehash does **not** apply the EXIF orientation, so neither do
we; the colour conversion to ``L`` is PIL's own for every mode (RGBA ignores alpha, P goes
through its palette, CMYK and I;16 use PIL's converters), so we call exactly the same method.

The batch path stacks the 32x32 grey images and runs the same scipy DCT over the stack; pocketfft
applies identical arithmetic per line, so bits agree (asserted on >=500 varied images in tests).
The ``fast`` path decodes JPEGs in libjpeg's draft mode (1/2..1/8 scale, grey) and resizes
bilinearly from there: not bit-exact (typically within 0-4 bits) but ~5x cheaper, because the
full-size decode and the full-size LANCZOS resize are skipped (entropy decoding remains).
"""
from __future__ import annotations

import io
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Sequence

import numpy as np
import scipy.fftpack
from PIL import Image

log = logging.getLogger(__name__)

HASH_SIZE = 8
IMG_SIZE = 32  # hash_size * highfreq_factor (4), imagehash's defaults
#: Largest image (width * height) we decode; PIL's own default bomb limit.
DEFAULT_MAX_PIXELS = 89_478_485
PHASH_MODES = ("exact", "fast")
# Bit weights: element 0 of the row-major 8x8 array is the most significant bit.
_WEIGHTS = (np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64)).astype(np.uint64)


class ImageDecodeError(ValueError):
    """An image that cannot be hashed; ``reason`` is the reject reason callers record.

    ``reason`` is ``"corrupt_image"`` (unreadable, truncated, empty) or ``"image_too_large"``
    (decompression-bomb limit exceeded).
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _grey32(image: Image.Image) -> np.ndarray:
    """The 32x32 uint8 grey thumbnail exactly as imagehash makes it."""
    return np.asarray(image.convert("L").resize((IMG_SIZE, IMG_SIZE), Image.Resampling.LANCZOS))


def hash_pixels(pixels: np.ndarray) -> np.ndarray:
    """pHash of a stack of 32x32 grey thumbnails ``(N, 32, 32)`` -> ``uint64[N]``."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[1:] != (IMG_SIZE, IMG_SIZE):
        raise ValueError(f"expected (N, {IMG_SIZE}, {IMG_SIZE}) thumbnails, got {pixels.shape}")
    if len(pixels) == 0:
        return np.zeros(0, dtype=np.uint64)
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=1), axis=2)
    low = dct[:, :HASH_SIZE, :HASH_SIZE].reshape(len(pixels), HASH_SIZE * HASH_SIZE)
    med = np.median(low, axis=1, keepdims=True)
    bits = low > med
    return (bits.astype(np.uint64) * _WEIGHTS).sum(axis=1, dtype=np.uint64)


def phash(image: Image.Image) -> int:
    """pHash of one PIL image as an unsigned 64-bit int, equal to ``int(str(imagehash.phash(image)), 16)``."""
    return int(hash_pixels(_grey32(image)[None])[0])


def phash_batch(images: Iterable[Image.Image]) -> np.ndarray:
    """pHashes of many PIL images as ``uint64`` array; bit-identical to :func:`phash`, faster DCT."""
    thumbs = [_grey32(im) for im in images]
    if not thumbs:
        return np.zeros(0, dtype=np.uint64)
    return hash_pixels(np.stack(thumbs))


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open encoded bytes lazily, refusing decompression bombs before any pixel is decoded."""
    if not data:
        raise ImageDecodeError("corrupt_image", "empty (0-byte) image data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("image_too_large", str(exc)) from exc
    except Exception as exc:  # PIL raises many types for garbage input
        raise ImageDecodeError("corrupt_image", f"{type(exc).__name__}: {exc}") from exc
    w, h = img.size
    if w * h > max_pixels:
        raise ImageDecodeError(
            "image_too_large", f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
    return img


def _thumb_from_bytes(data: bytes, mode: str, max_pixels: int) -> np.ndarray:
    """Decode + grey 32x32 thumbnail; every decoding failure becomes an ImageDecodeError."""
    if mode not in PHASH_MODES:
        raise ValueError(f"phash mode must be one of {PHASH_MODES}, got {mode!r}")
    img = open_image(data, max_pixels)
    try:
        if mode == "exact":
            img.load()
            return _grey32(img)
        if img.format == "JPEG":
            # libjpeg scales by 1/2..1/8 while decoding (grey only) and keeps >= 64 px.
            img.draft("L", (2 * IMG_SIZE, 2 * IMG_SIZE))
        img = img.convert("L")
        factor = min(img.size) // (2 * IMG_SIZE)
        if factor >= 2:
            img = img.reduce(factor)
        return np.asarray(img.resize((IMG_SIZE, IMG_SIZE), Image.Resampling.BILINEAR))
    except Exception as exc:  # truncated data, bad codec state, ...
        raise ImageDecodeError("corrupt_image", f"{type(exc).__name__}: {exc}") from exc


def phash_bytes(data: bytes, mode: str = "exact", max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """pHash of encoded image bytes; ``exact`` = imagehash's bits, ``fast`` = draft-mode decode.

    Raises :class:`ImageDecodeError` for corrupt, empty or oversized images.
    """
    return int(hash_pixels(_thumb_from_bytes(data, mode, max_pixels)[None])[0])


def phash_bytes_batch(datas: Sequence[bytes], mode: str = "exact", max_pixels: int = DEFAULT_MAX_PIXELS,
                      workers: int = 1) -> tuple[np.ndarray, list[ImageDecodeError | None]]:
    """Hash many encoded images; failures do not raise.

    Returns ``(hashes: uint64[N], errors)`` where ``errors[i]`` is ``None`` for a hashed image
    or the :class:`ImageDecodeError` (its hash slot is 0 and must be ignored). ``workers > 1``
    decodes in threads (PIL releases the GIL while decoding and resizing).
    """
    if mode not in PHASH_MODES:
        raise ValueError(f"phash mode must be one of {PHASH_MODES}, got {mode!r}")
    thumbs = np.zeros((len(datas), IMG_SIZE, IMG_SIZE), dtype=np.uint8)
    errors: list[ImageDecodeError | None] = [None] * len(datas)

    def one(i: int) -> None:
        try:
            thumbs[i] = _thumb_from_bytes(datas[i], mode, max_pixels)
        except ImageDecodeError as exc:
            errors[i] = exc

    if workers > 1 and len(datas) > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(len(datas))))
    else:
        for i in range(len(datas)):
            one(i)
    hashes = hash_pixels(thumbs)
    for i, err in enumerate(errors):
        if err is not None:
            hashes[i] = 0
    return hashes, errors


def hash_to_hex(h: int) -> str:
    """The 16-hex-digit form used in shard JSON (same as ``str(imagehash.phash(...))``)."""
    return f"{int(h):016x}"


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Bitwise Hamming distance between uint64 hashes (broadcasting)."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    return np.bitwise_count(x).astype(np.int64)
