"""WebDataset loader for our shards, with exact resume and optional online balancing.

Shards are read with the ``webdataset`` library's tar iterators (local paths, ``http(s)://`` and
``pipe:`` via its ``gopen``; ``s3://`` and other object stores through a
:class:`~curation.storage.Storage`, which travels to the DataLoader workers so they need no
``AWS_*`` variables), given as brace patterns, folders or globs, several sources joined with ``::``
(open_clip's convention) or a list. The stream of each *consumer* (one DataLoader worker of one
rank) is a pure function of ``(seed, epoch, consumer)``:

  shards shuffled by ``seed + epoch`` -> this consumer's shards (or every n-th sample when there
  are fewer shards than consumers) -> online balancing (keep iff ``u(seed, epoch, uid) < p_keep``)
  -> a seeded shuffle buffer -> decode (bad samples skipped and counted) -> batches.

Online balancing draws each epoch's subset of the whole matched pool: a sample whose json holds
``p_keep`` is kept in epoch ``e`` iff ``u < p_keep`` with ``u`` the balance stage's uniform draw
(ARCHITECTURE.md, "Balancing") under a seed derived from ``(seed, epoch)`` by :func:`epoch_draw_seed`.
The draw depends on nothing else (not on the worker, rank or shard order), every epoch's draw is
independent of the others and of the offline balance draw, and no two ``(seed, epoch)`` pairs
share one (``seed + epoch`` would make seed 0's epoch 1 seed 1's epoch 0).

A consumer's position is ``(epoch, pos)`` with ``pos`` = samples taken from its shuffle buffer,
counted *before* decoding; resuming replays the cheap part of the stream (tar reading) and skips
``pos`` samples without decoding them, so the next batch is exactly the one an uninterrupted run
would have produced. Each consumer runs through epochs on its own (dropping its last partial
batch), so no rank ever runs dry under DDP.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from curation.errors import InputError
from curation.storage import Storage, is_remote

log = logging.getLogger(__name__)

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
COUNTER_NAMES = ("samples", "bad_shards", "missing_fields", "bad_images", "bad_text", "bad_json",
                 "balanced_out")
_WARN_LIMIT = 20


# --------------------------------------------------------------------------- shard lists
def _passthrough(source: str) -> bool:
    """Sources webdataset opens itself (and that have no cheap existence check)."""
    return source.startswith(("pipe:", "http://", "https://"))


def expand_shards(spec: str | Sequence[str], storage: Storage | None = None) -> list[str]:
    """Shard URLs of brace patterns, folders or globs (``a/{000..009}.tar::b/{0..3}.tar`` or a list).

    Shards that do not exist are skipped with a warning (a run whose last shards failed to
    download still trains on the rest); nothing found at all is an ``InputError``."""
    from braceexpand import braceexpand

    storage = storage or Storage.from_env()
    sources = spec.split("::") if isinstance(spec, str) else [str(s) for s in spec]
    urls: list[str] = []
    missing: list[str] = []
    for source in (s.strip() for s in sources):
        if not source:
            continue
        if _passthrough(source):
            urls.extend(braceexpand(source))
            continue
        try:
            urls.extend(storage.expand(source))
        except InputError:  # some are missing: find which, one pattern at a time
            for pattern in braceexpand(source):
                try:
                    urls.extend(storage.expand(pattern))
                except InputError:
                    missing.append(pattern)
    if missing:
        log.warning("%d of %d shards do not exist and are skipped (first: %s)", len(missing),
                    len(missing) + len(urls), missing[0])
    if not urls:
        raise InputError(f"no shards found for {spec!r}; give a path or brace pattern such as "
                         "'RUN/shards/{000000..000009}.tar'")
    return urls


def dataset_size(urls: Sequence[str], storage: Storage | None = None) -> int | None:
    """Total samples from each source's ``sizes.json`` (open_clip's format), or None if unknown."""
    storage = storage or Storage.from_env()
    by_dir: dict[str, list[str]] = {}
    for url in urls:
        head, _, base = url.rpartition("/")
        by_dir.setdefault(head or ".", []).append(base)
    total = 0
    for directory, bases in by_dir.items():
        try:
            sizes = storage.read_json(f"{directory}/sizes.json")
            total += sum(int(sizes[b]) for b in bases)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            log.info("no usable sizes.json in %s (%s): dataset size unknown", directory, exc)
            return None
    return total


def open_shards(urls: Sequence[str], handler, storage: Storage | None = None) -> Iterator[dict]:
    """``{"url", "stream"}`` per shard: object stores (``s3://``, ``gs://``, ...) through ``storage``,
    local paths, ``http(s)://`` and ``pipe:`` through webdataset's own opener. A stream is closed
    once the consumer moves on to the next shard."""
    from webdataset.tariterators import url_opener

    storage = storage or Storage.from_env()
    for url in urls:
        if not is_remote(url) or _passthrough(url):
            yield from url_opener([{"url": url}], handler=handler)
            continue
        try:
            fs, path = storage.fs(url)
            stream = fs.open(path, "rb")
        except Exception as exc:  # missing credentials, missing object, unknown protocol
            if not handler(exc):
                return
            continue
        try:
            yield {"url": url, "stream": stream}
        finally:
            stream.close()


# --------------------------------------------------------------------------- image transforms
def _square_crop(image: Image.Image, size: int, box_side: float, left: float, top: float) -> Image.Image:
    width, height = image.size
    side = box_side * min(width, height)
    x0 = left * (width - side)
    y0 = top * (height - side)
    return image.resize((size, size), Image.BICUBIC, box=(x0, y0, x0 + side, y0 + side))


def decode_image(data: bytes, size: int) -> Image.Image:
    """Open as RGB, letting the JPEG decoder downscale first when the image is much larger."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (size, size))
    return image.convert("RGB")


def eval_crop(image: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` (bicubic), then take the centre square (uint8 HWC).

    The same arithmetic as open_clip's eval transform (torchvision ``Resize(size)`` on a PIL image,
    then ``CenterCrop(size)``): the longer side becomes ``int(size * long / short)``, the crop
    offset ``round((side - size) / 2)``, so an exported model sees the very same pixels in open_clip.
    """
    image = image.convert("RGB")
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)))


def train_crop(image: Image.Image, size: int, rng: random.Random) -> np.ndarray:
    """A random square crop covering 90-100 % of the shorter side's square (open_clip's scale)."""
    return np.asarray(_square_crop(image, size, math.sqrt(rng.uniform(0.9, 1.0)), rng.random(), rng.random()))


def normalize_batch(pixels: np.ndarray) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> normalised float ``[B, 3, H, W]`` (CLIP mean/std)."""
    if not pixels.flags.writeable:  # arrays viewing PIL memory are read-only
        pixels = pixels.copy()
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.from_numpy(MEAN).view(1, 3, 1, 1)
    std = torch.from_numpy(STD).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def eval_transform(image: Image.Image, size: int) -> torch.Tensor:
    """The eval preprocessing of one PIL image -> ``[3, size, size]``."""
    return normalize_batch(eval_crop(image, size)[None])[0]


# --------------------------------------------------------------------------- the stream
def epoch_draw_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s online-balance draw: a 63-bit number hashed from both, so
    every ``(seed, epoch)`` pair draws independently (and differently from the offline draw)."""
    digest = hashlib.blake2b(f"online-balance\x1f{int(seed)}\x1f{int(epoch)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def keep_in_epoch(seed: int, epoch: int, uids: Sequence[str], p_keep: Sequence[float]) -> np.ndarray:
    """Which samples epoch ``epoch`` keeps under online balancing (what the loader applies)."""
    from curation.balancing import uniform_from_uids

    return uniform_from_uids(epoch_draw_seed(seed, epoch), list(uids)) < np.asarray(p_keep, dtype=np.float64)


@dataclass
class LoaderConfig:
    shards: str | Sequence[str]
    batch_size: int
    image_size: int
    context_length: int
    seed: int = 0
    workers: int = 2
    shuffle_buffer: int = 1000
    online_balance: bool = False
    rank: int = 0
    world_size: int = 1
    urls: list[str] = field(default_factory=list)
    # picklable: DataLoader workers open object-store shards with the same settings
    storage: Storage = field(default_factory=Storage.from_env)

    def __post_init__(self) -> None:
        if not self.urls:
            self.urls = expand_shards(self.shards, self.storage)


def _new_counters() -> dict[str, int]:
    return {name: 0 for name in COUNTER_NAMES}


class _Consumer:
    """One consumer's deterministic stream; see the module docstring."""

    def __init__(self, cfg: LoaderConfig, tokenizer, consumer: int, n_consumers: int, state: dict | None) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.consumer = consumer
        self.n_consumers = n_consumers
        state = state or {}
        self.epoch = int(state.get("epoch", 0))
        self.start_pos = int(state.get("pos", 0))
        self.counters = {**_new_counters(), **state.get("counters", {})}
        self.warnings = 0

    def _warn(self, msg: str, *args: Any) -> None:
        self.warnings += 1
        if self.warnings <= _WARN_LIMIT:
            log.warning(msg + (" (further warnings of this worker are silenced)" if self.warnings == _WARN_LIMIT else ""), *args)

    def _handler(self, exc: Exception) -> bool:
        self.counters["bad_shards"] += 1
        self._warn("skipping the rest of a bad shard: %s", repr(exc)[:300])
        return True

    def _raw_samples(self, urls: Sequence[str]) -> Iterator[dict]:
        from webdataset.tariterators import group_by_keys, tar_file_expander

        for url in urls:  # one pipeline per shard: an error never leaks into the next shard
            opened = open_shards([url], handler=self._handler, storage=self.cfg.storage)
            yield from group_by_keys(tar_file_expander(opened, handler=self._handler), handler=self._handler)

    def _balanced(self, samples: Iterator[dict]) -> Iterator[dict]:
        """Keep a sample iff its draw for ``(seed, epoch)`` is below its ``p_keep`` (chunked, vectorised)."""
        from curation.balancing import uniform_from_uids

        draw_seed = epoch_draw_seed(self.cfg.seed, self.epoch)

        def flush(chunk: list[tuple[dict, str, float]]) -> Iterator[dict]:
            if chunk:
                draws = uniform_from_uids(draw_seed, [uid for _, uid, _ in chunk])
                for (sample, _, p), u in zip(chunk, draws):
                    if u < p:
                        yield sample
                    else:
                        self.counters["balanced_out"] += 1

        chunk: list[tuple[dict, str, float]] = []
        for sample in samples:
            try:
                meta = json.loads(sample["json"])
                chunk.append((sample, str(meta["uid"]), float(meta["p_keep"])))
            except (KeyError, ValueError, TypeError) as exc:
                self.counters["bad_json"] += 1
                self._warn("sample %s has no usable uid/p_keep for online balancing: %r", sample.get("__key__"), exc)
                continue
            if len(chunk) == 256:
                yield from flush(chunk)
                chunk = []
        yield from flush(chunk)

    def _shuffled(self, samples: Iterator[dict]) -> Iterator[dict]:
        size = self.cfg.shuffle_buffer
        if size <= 1:
            yield from samples
            return
        rng = random.Random(f"shuffle/{self.cfg.seed}/{self.epoch}/{self.consumer}")
        buffer: list[dict] = []
        for sample in samples:
            if len(buffer) < size:
                buffer.append(sample)
                continue
            i = rng.randrange(size)
            buffer[i], sample = sample, buffer[i]
            yield sample
        rng.shuffle(buffer)
        yield from buffer

    def epoch_stream(self) -> Iterator[dict]:
        """This consumer's raw samples for the current epoch, in their final order."""
        urls = list(self.cfg.urls)
        random.Random(f"shards/{self.cfg.seed + self.epoch}").shuffle(urls)
        if len(urls) >= self.n_consumers:
            samples = self._raw_samples(urls[self.consumer::self.n_consumers])
        else:  # fewer shards than consumers: everyone reads all shards, keeps every n-th sample
            samples = (s for i, s in enumerate(self._raw_samples(urls)) if i % self.n_consumers == self.consumer)
        if self.cfg.online_balance:
            samples = self._balanced(samples)
        return self._shuffled(samples)

    def _decode(self, sample: dict, pos: int) -> tuple[np.ndarray, str] | None:
        image_key = next((k for k in ("jpg", "jpeg", "png", "webp") if k in sample), None)
        if image_key is None or "txt" not in sample:
            self.counters["missing_fields"] += 1
            self._warn("sample %s of %s lacks an image or .txt; skipped", sample.get("__key__"), sample.get("__url__"))
            return None
        try:
            text = sample["txt"].decode("utf-8").strip()
        except UnicodeDecodeError:
            text = ""
        if not text:
            self.counters["bad_text"] += 1
            self._warn("sample %s has an empty or undecodable caption; skipped", sample.get("__key__"))
            return None
        try:
            image = decode_image(sample[image_key], self.cfg.image_size)
            rng = random.Random(f"crop/{self.cfg.seed}/{self.epoch}/{self.consumer}/{pos}")
            pixels = train_crop(image, self.cfg.image_size, rng)
        except Exception as exc:  # PIL raises many types for corrupt data
            self.counters["bad_images"] += 1
            self._warn("sample %s has an undecodable image (%r); skipped", sample.get("__key__"), exc)
            return None
        return pixels, text

    def batches(self) -> Iterator[dict]:
        batch_size = self.cfg.batch_size
        while True:
            pixels: list[np.ndarray] = []
            texts: list[str] = []
            produced = 0
            for pos, sample in enumerate(self.epoch_stream()):
                if pos < self.start_pos:
                    continue  # resume: skip without decoding
                decoded = self._decode(sample, pos)
                if decoded is None:
                    continue
                produced += 1
                self.counters["samples"] += 1
                pixels.append(decoded[0])
                texts.append(decoded[1])
                if len(pixels) == batch_size:
                    tokens, eot = self.tokenizer(texts, self.cfg.context_length)
                    yield {"images": normalize_batch(np.stack(pixels)), "tokens": tokens, "eot": eot,
                           "texts": texts,
                           "state": {"epoch": self.epoch, "pos": pos + 1, "counters": dict(self.counters)}}
                    pixels, texts = [], []
            if produced == 0 and self.start_pos == 0:
                raise RuntimeError(f"consumer {self.consumer}: a whole epoch produced no readable samples "
                                   f"from {len(self.cfg.urls)} shards; check the shards (counters: {self.counters})")
            self.epoch += 1
            self.start_pos = 0


class _WorkerDataset(torch.utils.data.IterableDataset):
    def __init__(self, cfg: LoaderConfig, tokenizer, states: dict[int, dict], rotation: int) -> None:
        self.cfg, self.tokenizer, self.states, self.rotation = cfg, tokenizer, states, rotation

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        n_workers = max(1, self.cfg.workers)
        physical = info.id if info is not None else 0
        logical = (physical + self.rotation) % n_workers
        consumer = self.cfg.rank * n_workers + logical
        stream = _Consumer(self.cfg, self.tokenizer, consumer, self.cfg.world_size * n_workers,
                           self.states.get(logical))
        for batch in stream.batches():
            batch["worker"] = logical
            yield batch


class TrainLoader:
    """Infinite iterator of training batches whose position can be saved and restored exactly.

    DataLoader workers hand out batches round-robin, so batch ``b`` comes from logical worker
    ``b % workers``; on resume the workers are rotated so the round-robin continues where it was.
    """

    def __init__(self, cfg: LoaderConfig, tokenizer) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.batches_seen = 0
        self.worker_states: dict[int, dict] = {}

    def state_dict(self) -> dict:
        return {"batches_seen": self.batches_seen, "worker_states": {str(k): v for k, v in self.worker_states.items()},
                "workers": self.cfg.workers, "world_size": self.cfg.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("workers") != self.cfg.workers or state.get("world_size") != self.cfg.world_size:
            raise InputError(f"the checkpoint's data position was saved with workers={state.get('workers')}, "
                             f"world_size={state.get('world_size')}; resume with the same values "
                             f"(now workers={self.cfg.workers}, world_size={self.cfg.world_size})")
        self.batches_seen = int(state["batches_seen"])
        self.worker_states = {int(k): v for k, v in state["worker_states"].items()}

    def counters(self) -> dict[str, int]:
        """Totals over this rank's workers (samples decoded, bad shards/samples skipped, ...)."""
        total = _new_counters()
        for state in self.worker_states.values():
            for key, value in state["counters"].items():
                total[key] = total.get(key, 0) + value
        return total

    def __iter__(self) -> Iterator[dict]:
        workers = max(1, self.cfg.workers)
        dataset = _WorkerDataset(self.cfg, self.tokenizer, dict(self.worker_states), self.batches_seen % workers)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=self.cfg.workers,
                                             pin_memory=torch.cuda.is_available(),
                                             persistent_workers=False,
                                             # its own generator: creating the iterator must not
                                             # draw from the global RNG (masks must resume exactly)
                                             generator=torch.Generator().manual_seed(self.cfg.seed))
        for batch in loader:
            self.worker_states[int(batch["worker"])] = batch.pop("state")
            self.batches_seen += 1
            yield batch


def read_captions(spec: str | Sequence[str], limit: int = 200_000, storage: Storage | None = None) -> list[str]:
    """Up to ``limit`` captions of the shards of ``spec``, to train the tokenizer."""
    storage = storage or Storage.from_env()
    return captions_of(expand_shards(spec, storage), limit, storage)


def captions_of(urls: Sequence[str], limit: int = 200_000, storage: Storage | None = None) -> list[str]:
    """Up to ``limit`` captions of these shard URLs (only the .txt members are read)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    storage = storage or Storage.from_env()

    def handler(exc: Exception) -> bool:
        log.warning("tokenizer corpus: skipping a bad shard: %r", exc)
        return True

    captions: list[str] = []
    for url in urls:
        opened = open_shards([url], handler=handler, storage=storage)
        files = tar_file_expander(opened, handler=handler, select_files=lambda name: name.endswith(".txt"))
        for sample in group_by_keys(files, handler=handler):
            try:
                captions.append(sample["txt"].decode("utf-8"))
            except (KeyError, UnicodeDecodeError):
                continue
            if len(captions) >= limit:
                return captions
    return captions
