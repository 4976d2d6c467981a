"""Offline tokenizers for the text tower.

Nothing is downloaded at run time. The default is a byte-level BPE trained with the HF
``tokenizers`` library on the curated captions themselves (seconds for tens of thousands of
captions) and saved as ``tokenizer.json`` next to the checkpoint (and embedded in it). A
byte-level fallback (256 byte ids + specials) needs no training at all.

Both produce padded ``[B, context_length]`` id tensors with ``<sot>`` first and ``<eot>`` last
(truncating the text in between), plus the position of ``<eot>`` that the text tower reads (the
first ``<eot>`` of the row, which is where open_clip's ``eos`` pooling reads too).

Text cleaning (``clean``): ``"whitespace"`` is open_clip's own default cleaning (ftfy's
``fix_text``, HTML unescaped twice, whitespace runs collapsed, ends stripped). open_clip applies it
to every text before its tokenizer runs and it cannot be switched off there, so a model exported
with ``metacurate export --open-clip`` tokenizes identically on both sides only when our side
cleans the same way. New tokenizers use it; a tokenizer stored without the key (written before it
existed) keeps ``"none"``, so old checkpoints see the very tokens they were trained on.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence

import torch

from curation.storage import Storage

log = logging.getLogger(__name__)

PAD, SOT, EOT = "<pad>", "<sot>", "<eot>"
CLEAN_MODES = ("none", "whitespace")
#: The cleaning of tokenizers made now (see the module docstring).
DEFAULT_CLEAN = "whitespace"


def _check_clean(clean: str) -> str:
    if clean not in CLEAN_MODES:
        raise ValueError(f"tokenizer clean must be one of {CLEAN_MODES}, got {clean!r}")
    return clean


def clean_whitespace(text: str) -> str:
    """open_clip's ``whitespace`` cleaning of one text: ftfy's fix_text, HTML entities unescaped
    twice, whitespace runs collapsed to one space, ends stripped."""
    import html

    try:
        import ftfy
    except ImportError:  # a declared dependency; this only happens in a broken install
        raise ImportError("tokenizers with clean='whitespace' need the ftfy package: pip install ftfy") from None
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split())


class _Base:
    """Shared padding/truncation logic; subclasses turn a text into a list of content ids."""

    pad_id: int
    sot_id: int
    eot_id: int
    vocab_size: int
    clean: str = "none"

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    def cleaned(self, texts: Sequence[str]) -> list[str]:
        """The texts as the tokenizer sees them (after its ``clean`` rule)."""
        if self.clean == "whitespace":
            return [clean_whitespace(t) for t in texts]
        return list(texts)

    def __call__(self, texts: Sequence[str], context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``[B, L]`` (padded) and the index of each row's first ``<eot>`` token ``[B]``."""
        out = torch.full((len(texts), context_length), self.pad_id, dtype=torch.long)
        eot_index = torch.empty(len(texts), dtype=torch.long)
        for row, ids in enumerate(self._ids(self.cleaned(texts))):
            ids = [self.sot_id] + ids[: context_length - 2] + [self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            # the first <eot>: a caption may hold the literal text "<eot>", which the BPE maps to the
            # special id; open_clip's eos pooling reads the first one, and so do we
            eot_index[row] = ids.index(self.eot_id)
        return out, eot_index

    def to_json(self) -> str:
        raise NotImplementedError


class ByteTokenizer(_Base):
    """UTF-8 bytes as ids 0..255, then ``<pad>``, ``<sot>``, ``<eot>``: no training needed."""

    kind = "bytes"

    def __init__(self, clean: str = "none") -> None:
        self.pad_id, self.sot_id, self.eot_id = 256, 257, 258
        self.vocab_size = 259
        self.clean = _check_clean(clean)

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def to_json(self) -> str:
        data = {"kind": self.kind}
        if self.clean != "none":  # keeps the JSON of older tokenizers byte-identical
            data["clean"] = self.clean
        return json.dumps(data)


class BPETokenizer(_Base):
    """A byte-level BPE (HF ``tokenizers``) with lowercasing + NFC normalisation."""

    kind = "bpe"

    def __init__(self, tokenizer, clean: str = "none") -> None:  # tokenizers.Tokenizer
        self._tok = tokenizer
        self.clean = _check_clean(clean)
        self.pad_id = tokenizer.token_to_id(PAD)
        self.sot_id = tokenizer.token_to_id(SOT)
        self.eot_id = tokenizer.token_to_id(EOT)
        if None in (self.pad_id, self.sot_id, self.eot_id):
            raise ValueError("tokenizer.json lacks the <pad>/<sot>/<eot> special tokens")
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096, clean: str = DEFAULT_CLEAN) -> BPETokenizer:
        """Learn merges from the captions (the only data we may assume offline), cleaned the way
        the tokenizer will clean them when it encodes."""
        _check_clean(clean)
        if clean == "whitespace":
            texts = (clean_whitespace(t) for t in texts)
        from tokenizers import (
            Tokenizer,
            decoders,
            models,
            normalizers,
            pre_tokenizers,
            trainers,
        )

        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, SOT, EOT],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(_bounded(texts), trainer=trainer)
        return cls(tok, clean)

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [enc.ids for enc in self._tok.encode_batch(texts, add_special_tokens=False)]

    def to_json(self) -> str:
        data = {"kind": self.kind, "tokenizer": json.loads(self._tok.to_str())}
        if self.clean != "none":
            data["clean"] = self.clean
        return json.dumps(data)

    def hf_json(self) -> str:
        """The HF ``tokenizers`` JSON of the BPE itself (no cleaning, no special-token template)."""
        return self._tok.to_str()

    def __getstate__(self) -> dict:  # picklable for DataLoader workers on any start method
        return {"json": self._tok.to_str(), "clean": self.clean}

    def __setstate__(self, state: dict) -> None:
        from tokenizers import Tokenizer

        self.__init__(Tokenizer.from_str(state["json"]), state.get("clean", "none"))


Tokenizer = _Base


#: What BPE training sees of a caption. The merges are learnt within words, and the trainer's work
#: grows much faster than linearly with a word's length: one 1 MiB "word" kept it busy for minutes
#: (in native code, deaf to Ctrl-C). Captions are cut to the first MAX_TRAIN_CHARS characters and
#: longer runs without a space into MAX_TRAIN_WORD-character pieces; the model only ever sees the
#: first few dozen tokens of a caption anyway.
MAX_TRAIN_CHARS = 1000
MAX_TRAIN_WORD = 64


def _bounded(texts: Iterable[str]) -> Iterable[str]:
    for text in texts:
        text = text[:MAX_TRAIN_CHARS]
        if any(len(w) > MAX_TRAIN_WORD for w in text.split()):
            text = " ".join(w[i:i + MAX_TRAIN_WORD] for w in text.split() for i in range(0, len(w), MAX_TRAIN_WORD))
        yield text


def tokenizer_from_json(text: str) -> _Base:
    """Rebuild a tokenizer from ``to_json()`` output (stored in checkpoints and tokenizer.json)."""
    data = json.loads(text)
    clean = data.get("clean", "none")  # stored before cleaning existed: none
    if data.get("kind") == "bytes":
        return ByteTokenizer(clean)
    if data.get("kind") == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        return BPETokenizer(HFTokenizer.from_str(json.dumps(data["tokenizer"])), clean)
    raise ValueError(f"unknown tokenizer kind {data.get('kind')!r}")


def save_tokenizer(tokenizer: _Base, path: str | os.PathLike, storage: Storage | None = None) -> None:
    """Write ``tokenizer.json`` (atomically, local or on an object store)."""
    (storage or Storage.from_env()).write_bytes(os.fspath(path), tokenizer.to_json().encode("utf-8"))


def load_tokenizer(path: str | os.PathLike, storage: Storage | None = None) -> _Base:
    return tokenizer_from_json((storage or Storage.from_env()).read_bytes(os.fspath(path)).decode("utf-8"))
