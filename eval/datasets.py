"""Offline evaluation datasets: one small in-memory interface, several on-disk formats.

Nothing here downloads anything. Supported sources (see :func:`load_dataset`):

* ``digits`` — scikit-learn's real handwritten digits (1,797 8×8 greyscale scans shipped inside
  the scikit-learn package), upscaled to the model's image size. Class names are the English
  words ``"zero" .. "nine"`` by default, because a CLIP trained on web alt-text sees number *words*
  in captions far more often than a lone digit character; ``digits:numerals`` gives ``"0".."9"``.
  Sample key ``i`` (zero-padded to 4 digits) is the row index in ``sklearn.datasets.load_digits``.
* ``heldout:RUN`` — the held-out split of a curated run: the WebDataset shards in ``RUN/heldout/``.
  A path to any folder of ``*.tar`` shards works the same way (``--retrieval RUN/heldout``).
* WebDataset shards: a ``.tar`` path, a brace pattern ``dir/{000000..000009}.tar``, or a folder of
  tars. Per sample: an image (jpg/jpeg/png/webp/bmp), captions from ``json["captions"]`` when
  present else the ``.txt`` member (one caption), a label from ``.cls`` or ``json["label"]``.
* Image folders: ``root/<class name>/<image>`` (classification; ``_`` in folder names becomes a
  space) or flat ``root/<key>.jpg`` + ``root/<key>.txt`` with one caption per line (retrieval).
* clip_benchmark's WebDataset layout (what ``clip_benchmark_export_wds`` writes and its ``wds/``
  datasets read): a folder with ``classnames.txt`` (one class per line, line i = class i),
  ``zeroshot_classification_templates.txt`` (one template per line, ``{c}`` for the class),
  optionally ``dataset_type.txt`` (``retrieval``; absent means classification) and a split folder
  ``test/`` of ``0.tar .. N-1.tar`` (``test/nshards.txt`` holds N; without it every ``*.tar``).
  Each sample has an image (webp/png/jpg/jpeg) and ``cls`` (the class index) for classification or
  ``txt`` (the captions, one per line) for retrieval. Give the dataset folder (the ``test`` split)
  or a split folder inside it (``DIR/train``); the dataset's own templates are used unless
  ``--templates`` is given.
* Parquet (a file, a folder of part files, or a glob) with image bytes in a column ``image`` /
  ``jpg`` / ``img`` / ``image_bytes`` (binary, or a struct with a ``bytes`` field as Hugging Face
  datasets write it), optional ``captions`` (list) / ``caption`` / ``text``, ``label`` and ``key``.

Results are keyed by the dataset's name: the built-in name, ``heldout``, the basename of a path
(``RUN/heldout`` → ``heldout``), or an explicit ``NAME=SPEC``.

Every path may be local or an object-store URL: files are read through a
:class:`~curation.storage.Storage` (``storage=None`` means ``Storage.from_env()``).

Keys are what the overlap report joins on (``dedup/overlap.parquet`` column ``key``): folder
images use their path relative to the root without extension, shards the WebDataset ``__key__``,
parquet the ``key`` column (else the row index), digits the zero-padded row index.
"""
from __future__ import annotations

import io
import json
import logging
import posixpath
import re
import tarfile
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from curation.errors import InputError
from curation.storage import Storage, join

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_NUMERALS = [str(i) for i in range(10)]

ImageSource = bytes | Image.Image


@dataclass
class EvalDataset:
    """Images (kept encoded until needed) with keys and, optionally, labels and/or captions."""

    name: str
    keys: list[str]
    images: list[ImageSource]
    labels: np.ndarray | None = None
    classnames: list[str] | None = None
    captions: list[list[str]] | None = None
    meta: dict = field(default_factory=dict)
    #: prompt templates that come with the dataset (clip_benchmark's layout); None: the built-in set
    templates: list[str] | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if len(self.keys) != n:
            raise ValueError(f"{self.name}: {len(self.keys)} keys for {n} images")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            if len(self.labels) != n:
                raise ValueError(f"{self.name}: {len(self.labels)} labels for {n} images")
        if self.captions is not None and len(self.captions) != n:
            raise ValueError(f"{self.name}: {len(self.captions)} caption lists for {n} images")

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> Image.Image:
        """Decoded RGB image ``i``."""
        src = self.images[i]
        img = src if isinstance(src, Image.Image) else Image.open(io.BytesIO(src))
        return img.convert("RGB")

    def iter_images(self) -> Iterator[Image.Image]:
        for i in range(len(self)):
            yield self.image(i)

    @property
    def is_classification(self) -> bool:
        return self.labels is not None and self.classnames is not None

    @property
    def has_captions(self) -> bool:
        return self.captions is not None and any(self.captions)

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> "EvalDataset":
        idx = [int(i) for i in indices]
        return EvalDataset(
            name=name or self.name,
            keys=[self.keys[i] for i in idx],
            images=[self.images[i] for i in idx],
            labels=None if self.labels is None else self.labels[idx],
            classnames=self.classnames,
            captions=None if self.captions is None else [self.captions[i] for i in idx],
            meta=dict(self.meta),
            templates=self.templates,
        )

    def require_classification(self, task: str) -> None:
        if not self.is_classification:
            raise InputError(f"{task} needs a labelled dataset with class names; {self.name!r} "
                             "has none (use digits, an image folder root/<class>/<image>, or "
                             "shards/parquet with labels and classnames)")

    def require_captions(self, task: str) -> None:
        if not self.has_captions:
            raise InputError(f"{task} needs captions; {self.name!r} has none (shards need a .txt "
                             "per sample, folders a <key>.txt next to each image)")


# --------------------------------------------------------------------------- digits
def load_digits_dataset(image_size: int = 64, classnames: str = "words") -> EvalDataset:
    """scikit-learn's handwritten digits, upscaled (bilinear) to ``image_size``, as RGB images.

    Ink is dark on white like a scanned page; values 0..16 map linearly to grey levels.
    """
    from sklearn.datasets import load_digits

    if classnames not in ("words", "numerals"):
        raise InputError(f"digits class names must be 'words' or 'numerals', not {classnames!r}")
    data = load_digits()
    pixels = (255 - np.asarray(data.images) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = [Image.fromarray(p, mode="L").resize((image_size, image_size), Image.BILINEAR)
              .convert("RGB") for p in pixels]
    return EvalDataset(
        name="digits" if classnames == "words" else "digits:numerals",
        keys=[f"{i:04d}" for i in range(len(images))],
        images=images,
        labels=np.asarray(data.target),
        classnames=list(DIGIT_WORDS if classnames == "words" else DIGIT_NUMERALS),
        meta={"source": "sklearn.datasets.load_digits", "image_size": image_size,
              "classnames": classnames},
    )


# --------------------------------------------------------------------------- shards
def expand_shards(pattern: str, storage: Storage | None = None) -> list[str]:
    """Shard URLs of a brace pattern (several joined by ``::``), a glob, a single tar, or a
    folder of tars (sorted); a missing shard is an ``InputError`` naming it."""
    storage = storage or Storage.from_env()
    if "{" not in pattern and "::" not in pattern and storage.isdir(pattern) \
            and not storage.glob(pattern, "*.tar"):
        raise InputError(f"no .tar shards in folder {pattern}")
    return storage.expand(pattern)


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is everything before the first dot of the basename."""
    dirname, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(dirname, stem) if dirname else stem, ext.lower()


def iter_tar_samples(url: str, storage: Storage | None = None) -> Iterator[dict[str, bytes]]:
    """Samples of one tar as {"__key__": key, ext: bytes}, consecutive members grouped by key."""
    storage = storage or Storage.from_env()
    with storage.open(url, "rb") as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
        current: dict | None = None
        for member in tar:
            if not member.isfile():
                continue
            key, ext = _split_key(member.name)
            if not ext:
                continue
            f = tar.extractfile(member)
            data = f.read() if f is not None else b""
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key}
            current[ext] = data
        if current is not None:
            yield current


def _captions_from(sample: dict, meta: dict | None) -> list[str]:
    if meta and isinstance(meta.get("captions"), list):
        return [str(c).strip() for c in meta["captions"] if str(c).strip()]
    txt = sample.get("txt")
    if txt is None:
        return []
    caption = txt.decode("utf-8", errors="replace").strip()
    return [caption] if caption else []


def load_webdataset(pattern: str, name: str | None = None, classnames: Sequence[str] | None = None,
                    storage: Storage | None = None) -> EvalDataset:
    """Read WebDataset shards into memory (images stay encoded). Meant for eval-sized sets."""
    storage = storage or Storage.from_env()
    urls = expand_shards(pattern, storage)
    keys: list[str] = []
    images: list[ImageSource] = []
    captions: list[list[str]] = []
    labels: list[int] = []
    skipped = 0
    for url in urls:
        try:
            for sample in iter_tar_samples(url, storage):
                img_ext = next((e for e in IMAGE_EXTS if e in sample), None)
                if img_ext is None:
                    skipped += 1
                    continue
                meta = None
                if "json" in sample:
                    try:
                        meta = json.loads(sample["json"])
                    except ValueError:
                        meta = None
                label = None
                if "cls" in sample:
                    label = int(sample["cls"].decode().strip())
                elif meta and "label" in meta:
                    label = int(meta["label"])
                keys.append(sample["__key__"])
                images.append(sample[img_ext])
                captions.append(_captions_from(sample, meta))
                labels.append(-1 if label is None else label)
        except FileNotFoundError as exc:
            raise InputError(f"shard not found: {url} ({exc})") from exc
        except tarfile.TarError as exc:
            log.warning("unreadable shard %s skipped: %s", url, exc)
    if skipped:
        log.warning("%d samples without an image skipped in %s", skipped, pattern)
    if not images:
        raise InputError(f"no image samples found in {pattern}")
    lab = np.asarray(labels) if all(x >= 0 for x in labels) else None
    return EvalDataset(name=name or pattern, keys=keys, images=images, labels=lab,
                       classnames=list(classnames) if classnames and lab is not None else None,
                       captions=captions if any(captions) else None,
                       meta={"source": "webdataset", "shards": len(urls)})


# --------------------------------------------------------------------------- clip_benchmark
CB_CLASSNAMES = "classnames.txt"
CB_TEMPLATES = "zeroshot_classification_templates.txt"
CB_TYPE = "dataset_type.txt"
CB_IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")  # clip_benchmark's order of preference


def is_clip_benchmark_root(path: str, storage: Storage, split: str = "test") -> bool:
    """A folder in clip_benchmark's WebDataset layout with the given split."""
    return (storage.isdir(join(path, split))
            and any(storage.isfile(join(path, f)) for f in (CB_CLASSNAMES, CB_TYPE, join(split, "nshards.txt"))))


def _read_lines(url: str, storage: Storage) -> list[str]:
    """clip_benchmark's reading of its text files: every line, stripped."""
    return [line.strip() for line in storage.read_bytes(url).decode("utf-8").splitlines()]


def _natural(url: str) -> list:
    """Sort key putting 2.tar before 10.tar (clip_benchmark numbers its shards without padding)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", url.rsplit("/", 1)[-1])]


def load_clip_benchmark(root: str, split: str = "test", name: str | None = None,
                        storage: Storage | None = None) -> EvalDataset:
    """A dataset in clip_benchmark's WebDataset layout (see the module docstring)."""
    storage = storage or Storage.from_env()
    root = root.rstrip("/")
    kind = "classification"
    if storage.isfile(join(root, CB_TYPE)):
        kind = (_read_lines(join(root, CB_TYPE), storage) or ["classification"])[0].lower() or "classification"
    if kind not in ("classification", "retrieval"):
        raise InputError(f"{root}: dataset_type {kind!r} is not supported (classification and retrieval are)")
    split_dir = join(root, split)
    nshards_url = join(split_dir, "nshards.txt")
    if storage.isfile(nshards_url):
        try:
            n = int(storage.read_bytes(nshards_url).decode().strip())
        except ValueError:
            raise InputError(f"{nshards_url} must hold the number of shards") from None
        urls = [join(split_dir, f"{i}.tar") for i in range(n)]
        absent = [u for u in urls if not storage.isfile(u)]
        if absent:
            raise InputError(f"{nshards_url} says {n} shards but {len(absent)} are missing (first: {absent[0]})")
    else:
        urls = sorted(storage.glob(split_dir, "*.tar"), key=_natural)
    if not urls:
        raise InputError(f"no .tar shards in {split_dir}")
    classnames = _read_lines(join(root, CB_CLASSNAMES), storage) \
        if storage.isfile(join(root, CB_CLASSNAMES)) else None
    templates = None
    if storage.isfile(join(root, CB_TEMPLATES)):
        templates = [t for t in _read_lines(join(root, CB_TEMPLATES), storage) if t] or None
    keys: list[str] = []
    images: list[ImageSource] = []
    labels: list[int] = []
    captions: list[list[str]] = []
    want = "txt" if kind == "retrieval" else "cls"
    for url in urls:
        try:
            for sample in iter_tar_samples(url, storage):
                ext = next((e for e in CB_IMAGE_EXTS if e in sample), None)
                if ext is None or want not in sample:
                    raise InputError(f"{url}: sample {sample['__key__']!r} lacks an image "
                                     f"({'/'.join(CB_IMAGE_EXTS)}) or its .{want} (a {kind} dataset)")
                keys.append(sample["__key__"])
                images.append(sample[ext])
                if kind == "retrieval":
                    text = sample["txt"].decode("utf-8", errors="replace")
                    captions.append([line for line in text.splitlines() if line.strip()])
                else:
                    try:
                        labels.append(int(sample["cls"].decode().strip()))
                    except ValueError:
                        raise InputError(f"{url}: sample {sample['__key__']!r} has a .cls that is not a class "
                                         "index") from None
        except FileNotFoundError as exc:
            raise InputError(f"shard not found: {url} ({exc})") from exc
        except tarfile.TarError as exc:
            raise InputError(f"unreadable shard {url}: {exc}") from exc
    if not images:
        raise InputError(f"no samples in {split_dir}")
    lab = None
    if kind == "classification":
        lab = np.asarray(labels)
        if classnames is None:
            raise InputError(f"{root} has no {CB_CLASSNAMES}: zero-shot classification needs the class names")
        if lab.min() < 0 or lab.max() >= len(classnames):
            raise InputError(f"{root}: class indices run from {lab.min()} to {lab.max()} but {CB_CLASSNAMES} "
                             f"names {len(classnames)} classes")
    return EvalDataset(name=name or default_name(root), keys=keys, images=images, labels=lab,
                       classnames=classnames if kind == "classification" else None,
                       captions=captions if kind == "retrieval" else None,
                       meta={"source": "clip_benchmark", "task": kind, "split": split, "shards": len(urls)},
                       templates=templates if kind == "classification" else None)


# --------------------------------------------------------------------------- folders
def load_image_folder(root: str, name: str | None = None, storage: Storage | None = None) -> EvalDataset:
    """``root/<class>/<img>`` (classification) or flat ``root/<key>.jpg`` + ``<key>.txt``."""
    fs, base = (storage or Storage.from_env()).fs(root)
    base = base.rstrip("/")
    files = sorted(fs.find(base))
    rel = [posixpath.relpath(p, base) for p in files]
    img_rel = [r for r in rel if r.rsplit(".", 1)[-1].lower() in IMAGE_EXTS]
    if not img_rel:
        raise InputError(f"no images ({', '.join(IMAGE_EXTS)}) under {root}")
    nested = all("/" in r for r in img_rel)
    keys = [r.rsplit(".", 1)[0] for r in img_rel]
    images: list[ImageSource] = [fs.cat_file(posixpath.join(base, r)) for r in img_rel]
    labels = classnames = None
    if nested:
        folders = sorted({r.split("/", 1)[0] for r in img_rel})
        index = {f: i for i, f in enumerate(folders)}
        labels = np.asarray([index[r.split("/", 1)[0]] for r in img_rel])
        classnames = [f.replace("_", " ") for f in folders]
    relset = set(rel)
    captions: list[list[str]] = []
    for k in keys:
        txt = f"{k}.txt"
        if txt in relset:
            lines = fs.cat_file(posixpath.join(base, txt)).decode("utf-8", errors="replace")
            captions.append([ln.strip() for ln in lines.splitlines() if ln.strip()])
        else:
            captions.append([])
    return EvalDataset(name=name or root, keys=keys, images=images, labels=labels,
                       classnames=classnames, captions=captions if any(captions) else None,
                       meta={"source": "folder"})


def write_image_folder(dataset: EvalDataset, root: str, fmt: str = "png",
                       flat: bool = False, storage: Storage | None = None) -> list[str]:
    """Write a dataset as images on disk, e.g. so ``metacurate evalsets hash`` can hash digits.

    ``flat=True`` writes ``root/<key>.<fmt>``, so hashed keys equal the dataset's own keys (what
    the overlap report needs). Otherwise classification sets go to ``root/<class>/<key>.<fmt>``
    (the folder loader then reports keys ``<class>/<key>``). Captions go to ``<key>.txt``.
    Files are written plainly, not one by one atomically: the folder is a scratch copy.
    """
    fs, base = (storage or Storage.from_env()).fs(root)
    written = []
    for i, key in enumerate(dataset.keys):
        sub = (dataset.classnames[dataset.labels[i]].replace(" ", "_") + "/"
               if dataset.is_classification and not flat else "")
        path = posixpath.join(base, f"{sub}{key}.{fmt}")
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        buf = io.BytesIO()
        dataset.image(i).save(buf, format="PNG" if fmt == "png" else "JPEG")
        fs.pipe_file(path, buf.getvalue())
        if dataset.captions is not None and dataset.captions[i]:
            fs.pipe_file(posixpath.join(base, f"{sub}{key}.txt"),
                         "\n".join(dataset.captions[i]).encode())
        written.append(path)
    return written


# --------------------------------------------------------------------------- parquet
_IMAGE_COLS = ("image", "jpg", "img", "image_bytes")
_CAPTION_COLS = ("captions", "caption", "text", "txt")


def load_parquet(path: str, name: str | None = None, classnames: Sequence[str] | None = None,
                 storage: Storage | None = None) -> EvalDataset:
    """Parquet with image bytes; class names from the argument or schema metadata ``classnames``."""
    import pyarrow.dataset as ds

    fs, p = (storage or Storage.from_env()).fs(path)
    source: str | list[str] = sorted(fs.glob(p)) if "*" in p else p
    if not source:
        raise InputError(f"no parquet files match {path}")
    try:
        table = ds.dataset(source, filesystem=fs, format="parquet").to_table()
    except (FileNotFoundError, OSError) as exc:
        raise InputError(f"cannot read parquet {path}: {exc}") from exc
    cols = set(table.column_names)
    img_col = next((c for c in _IMAGE_COLS if c in cols), None)
    if img_col is None:
        raise InputError(f"{path}: no image column; expected one of {_IMAGE_COLS}, found "
                         f"{sorted(cols)}")
    raw = table.column(img_col).to_pylist()
    images: list[ImageSource] = [r["bytes"] if isinstance(r, dict) else r for r in raw]
    if any(b is None for b in images):
        raise InputError(f"{path}: null image bytes in column {img_col!r}")
    keys = ([str(k) for k in table.column("key").to_pylist()] if "key" in cols
            else [str(i) for i in range(len(images))])
    captions = None
    cap_col = next((c for c in _CAPTION_COLS if c in cols), None)
    if cap_col is not None:
        vals = table.column(cap_col).to_pylist()
        captions = [[str(c) for c in v if c] if isinstance(v, list) else ([str(v)] if v else [])
                    for v in vals]
    labels = np.asarray(table.column("label").to_pylist()) if "label" in cols else None
    if classnames is None and table.schema.metadata and b"classnames" in table.schema.metadata:
        classnames = json.loads(table.schema.metadata[b"classnames"])
    return EvalDataset(name=name or path, keys=keys, images=images, labels=labels,
                       classnames=list(classnames) if classnames and labels is not None else None,
                       captions=captions, meta={"source": "parquet"})


# --------------------------------------------------------------------------- resolver
def _heldout(run: str, storage: Storage) -> EvalDataset:
    folder = join(run.rstrip("/"), "heldout")
    if not storage.isdir(folder):
        raise InputError(f"no held-out split at {folder}: it must be a folder of WebDataset "
                         "shards (*.tar) set aside from training")
    return load_webdataset(folder, name="heldout", storage=storage)


BUILTINS: dict[str, Callable[..., EvalDataset]] = {
    "digits": lambda image_size: load_digits_dataset(image_size, "words"),
    "digits:numerals": lambda image_size: load_digits_dataset(image_size, "numerals"),
}


def default_name(spec: str) -> str:
    """A short, run-independent name for a path spec (results stay comparable across runs):
    a folder's basename, a file's stem, a brace pattern's folder."""
    path = spec.rstrip("/")
    if "{" in path or "*" in path:
        path = posixpath.dirname(path.split("{")[0].split("*")[0].rstrip("/") + "/x")
    base = posixpath.basename(path.rstrip("/")) or path
    return base.rsplit(".", 1)[0] if base.endswith((".tar", ".parquet")) else base


def load_dataset(spec: str, image_size: int = 64, classnames: Sequence[str] | None = None,
                 storage: Storage | None = None) -> EvalDataset:
    """Resolve a dataset spec: a built-in name, ``heldout:RUN``, shards, a folder or parquet.

    ``NAME=SPEC`` names the dataset explicitly (the name keys the results and must equal the
    name its images were hashed under for the overlap report); otherwise paths are named by
    :func:`default_name`.
    """
    storage = storage or Storage.from_env()
    name, sep, rest = spec.partition("=")
    if sep and name and "/" not in name and ":" not in name:
        ds = load_dataset(rest, image_size, classnames, storage)
        ds.name = name
        return ds
    if spec in BUILTINS:
        return BUILTINS[spec](image_size)
    if spec.startswith("heldout:"):
        return _heldout(spec[len("heldout:"):], storage)
    name = default_name(spec)
    if "{" in spec or spec.endswith(".tar"):
        return load_webdataset(spec, name=name, classnames=classnames, storage=storage)
    if spec.endswith(".parquet") or "*" in spec:
        return load_parquet(spec, name=name, classnames=classnames, storage=storage)
    if not storage.exists(spec):
        raise InputError(f"dataset {spec!r} not found: use a built-in ({', '.join(BUILTINS)}), "
                         "heldout:RUN, a shard pattern, a folder, or a parquet path")
    if storage.isdir(spec):
        if is_clip_benchmark_root(spec, storage):
            return load_clip_benchmark(spec, name=name, storage=storage)
        parent, _, split = spec.rstrip("/").rpartition("/")
        if parent and split and is_clip_benchmark_root(parent, storage, split):
            return load_clip_benchmark(parent, split, name=default_name(parent), storage=storage)
        names = storage.ls(spec)
        if any(n.endswith(".tar") for n in names):
            return load_webdataset(spec, name=name, classnames=classnames, storage=storage)
        if any(n.endswith(".parquet") for n in names):
            return load_parquet(spec, name=name, classnames=classnames, storage=storage)
        return load_image_folder(spec, name=name, storage=storage)
    raise InputError(f"cannot tell the format of {spec!r} (expected .tar, .parquet or a folder)")
