"""TensorBoard event files written by hand: scalars only, no tensorboard or TensorFlow install.

An event file is a TFRecord stream: per record a little-endian uint64 length, the masked CRC-32C
of those 8 bytes, the payload, and the masked CRC-32C of the payload. Each payload is a serialised
``tensorflow.Event`` protobuf; the fields used here are ``wall_time`` (1, double), ``step`` (2,
int64), ``file_version`` (3, string; the first event says ``brain.Event:2``) and ``summary`` (5, a
``Summary`` whose repeated ``value`` (1) holds ``tag`` (1, string) and ``simple_value`` (2,
float)). TensorBoard reads ``simple_value`` scalars as its Scalars dashboard shows them.

The handful of protobuf fields are encoded directly (varints and fixed-width numbers), which keeps
the trainer free of a protobuf dependency. :func:`read_events` parses the same subset back and
checks both CRCs of every record, so tests can verify what was written without TensorBoard.

Files go through a :class:`~curation.storage.Storage`: on a local disk records are appended and
flushed as they come (what a crash leaves is readable); object stores cannot append, so there the
whole file is rewritten at every :meth:`EventWriter.flush` (the trainer calls it at checkpoints
and at the end).
"""
from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from curation.storage import Storage, join

FILE_VERSION = "brain.Event:2"


# --------------------------------------------------------------------------- CRC-32C (Castagnoli)
def _crc32c_table() -> list[int]:
    poly = 0x82F63B78  # reversed Castagnoli polynomial
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data`` (the checksum TFRecord uses; zlib's crc32 is a different polynomial)."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotated right by 15 bits plus a constant, so a CRC of data that
    itself holds CRCs does not degenerate."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(payload: bytes) -> bytes:
    """One TFRecord: length, its CRC, payload, payload CRC."""
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", masked_crc32c(length)) + payload + struct.pack("<I", masked_crc32c(payload))


# --------------------------------------------------------------------------- protobuf subset
def _varint(value: int) -> bytes:
    if value < 0:  # int64 negatives are ten-byte two's complement varints
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field_number: int, wire_type: int) -> bytes:
    return _varint(field_number << 3 | wire_type)


def _bytes_field(field_number: int, data: bytes) -> bytes:
    return _key(field_number, 2) + _varint(len(data)) + data


def encode_event(wall_time: float, step: int = 0, scalars: Mapping[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
    """A serialised ``Event`` with a scalar summary (or the file-version header)."""
    out = _key(1, 1) + struct.pack("<d", wall_time)
    if step:
        out += _key(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        summary = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode("utf-8")) + _key(2, 5) + struct.pack("<f", float(value)))
            for tag, value in scalars.items())
        out += _bytes_field(5, summary)
    return out


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int, object]]:
    """``(field number, wire type, value)`` of a message; length-delimited values as bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated protobuf field")
        yield number, wire, value


@dataclass
class Event:
    wall_time: float
    step: int = 0
    file_version: str | None = None
    scalars: dict[str, float] = field(default_factory=dict)


def decode_event(data: bytes) -> Event:
    """The subset of ``Event`` that :func:`encode_event` writes (other fields are skipped)."""
    event = Event(wall_time=0.0)
    for number, wire, value in _fields(data):
        if number == 1 and wire == 1:
            event.wall_time = struct.unpack("<d", value)[0]
        elif number == 2 and wire == 0:
            event.step = value - (1 << 64) if value >= 1 << 63 else value
        elif number == 3 and wire == 2:
            event.file_version = value.decode()
        elif number == 5 and wire == 2:
            for vnum, vwire, entry in _fields(value):
                if vnum != 1 or vwire != 2:
                    continue
                tag, scalar = None, None
                for fnum, fwire, item in _fields(entry):
                    if fnum == 1 and fwire == 2:
                        tag = item.decode("utf-8")
                    elif fnum == 2 and fwire == 5:
                        scalar = struct.unpack("<f", item)[0]
                if tag is not None and scalar is not None:
                    event.scalars[tag] = scalar
    return event


def read_records(data: bytes) -> list[bytes]:
    """The payloads of a TFRecord stream; a bad CRC or a truncated record is a ``ValueError``."""
    out, pos = [], 0
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError(f"truncated record header at byte {pos}")
        length_bytes = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        (length_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        if masked_crc32c(length_bytes) != length_crc:
            raise ValueError(f"length CRC mismatch at byte {pos}")
        start, end = pos + 12, pos + 12 + length
        if end + 4 > len(data):
            raise ValueError(f"truncated record at byte {pos}")
        payload = data[start:end]
        (payload_crc,) = struct.unpack("<I", data[end:end + 4])
        if masked_crc32c(payload) != payload_crc:
            raise ValueError(f"payload CRC mismatch in the record at byte {pos}")
        out.append(payload)
        pos = end + 4
    return out


def read_events(path: str | os.PathLike, storage: Storage | None = None) -> list[Event]:
    """Every event of one event file, CRCs checked."""
    data = (storage or Storage.from_env()).read_bytes(os.fspath(path))
    return [decode_event(payload) for payload in read_records(data)]


# --------------------------------------------------------------------------- the writer
_WRITERS = itertools.count()


class EventWriter:
    """Scalars into ``DIR/events.out.tfevents.<time>.<host>.<pid>.<n>`` (one new file per writer,
    so a resumed run adds a file and TensorBoard joins them by step)."""

    def __init__(self, directory: str, storage: Storage | None = None) -> None:
        self.storage = storage or Storage.from_env()
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
                f"{next(_WRITERS)}")
        self.url = join(directory, name)
        self.file = self.storage.appender(self.url, keep=False)
        self.file.write(record(encode_event(time.time(), file_version=FILE_VERSION)))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """One event holding every ``tag: value`` of this step."""
        clean = {tag: float(v) for tag, v in values.items() if v is not None}
        if clean:
            self.file.write(record(encode_event(time.time(), step, clean)))

    def flush(self) -> None:
        """Local files are always flushed; an object-store file is (re)written whole here."""
        self.file.flush()

    def close(self) -> None:
        self.file.close()
