"""TensorBoard event files written by hand: TFRecord framing with CRC-32C, the Event protobuf
subset, and what a training run writes (read back with our CRC-checking reader, and with
TensorBoard's own reader where one is installed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from training.configs import TrainConfig
from training.loop import train
from training.tensorboard import (
    EventWriter,
    crc32c,
    decode_event,
    encode_event,
    read_events,
    read_records,
    record,
)


def test_crc32c_and_record_framing():
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    assert crc32c(b"") == 0
    payload = encode_event(12.5, 7, {"train/loss": 1.25})
    assert read_records(record(payload) + record(b"x")) == [payload, b"x"]
    event = decode_event(payload)
    assert (event.wall_time, event.step, event.scalars) == (12.5, 7, {"train/loss": 1.25})
    damaged = bytearray(record(payload))
    damaged[20] ^= 0x01
    with pytest.raises(ValueError, match="payload CRC mismatch"):
        read_records(bytes(damaged))
    with pytest.raises(ValueError, match="truncated"):
        read_records(record(payload)[:-3])


def test_writer_round_trip(tmp_path):
    writer = EventWriter(str(tmp_path / "tb"))
    writer.scalars(1, {"a": 0.5, "b": 3})
    writer.scalars(2, {"a": 0.25})
    writer.close()
    (path,) = (tmp_path / "tb").iterdir()
    assert path.name.startswith("events.out.tfevents.")
    events = read_events(str(path))
    assert events[0].file_version == "brain.Event:2"
    assert [(e.step, e.scalars) for e in events[1:]] == [(1, {"a": 0.5, "b": 3.0}), (2, {"a": 0.25})]


def _tensorboard_reader() -> list[str] | None:
    """A command that runs TensorBoard's EventAccumulator: this interpreter if it has tensorboard,
    else the open_clip venv of tests/images if that one has it."""
    try:
        import tensorboard  # noqa: F401

        return [sys.executable]
    except ImportError:
        pass
    for cand in (os.environ.get("METACURATE_OPENCLIP_PYTHON"), "/tmp/openclip-venv/bin/python"):
        if cand and os.path.exists(cand):
            probe = subprocess.run([cand, "-c", "import tensorboard"], capture_output=True)
            if probe.returncode == 0:
                return [cand]
    return None


_TB_READ = r'''
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1])
acc.Reload()
print(json.dumps({tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}))
'''


def test_training_writes_scalars_tensorboard_reads(shard_dir, tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(shards=f"{shard_dir}/{{000000..000001}}.tar", out=str(out), model="micro", steps=4,
                      batch_size=8, workers=0, tokenizer="bytes", threads=1, progress=False, log_every=2))
    (path,) = (out / "tensorboard").iterdir()
    events = [e for e in read_events(str(path)) if e.scalars]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in events] == [m["step"] for m in metrics] == [2, 4]
    for event, row in zip(events, metrics):
        assert {"train/loss", "train/lr", "train/scale", "train/temperature", "train/samples_per_second"} \
            <= set(event.scalars)
        assert event.scalars["train/loss"] == pytest.approx(row["loss"], rel=1e-6)  # float32 in the file
        assert event.scalars["train/lr"] == pytest.approx(row["lr"], rel=1e-6)
        assert event.scalars["train/temperature"] == pytest.approx(1 / row["logit_scale"], rel=1e-6)
        assert event.scalars["train/samples_per_second"] > 0

    reader = _tensorboard_reader()
    if reader is None:
        pytest.skip("TensorBoard is not installed here (our own reader checked the file above)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([*reader, "-c", _TB_READ, str(out / "tensorboard")], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    scalars = json.loads(done.stdout.strip().splitlines()[-1])
    assert [step for step, _ in scalars["train/loss"]] == [2, 4]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([m["loss"] for m in metrics], rel=1e-6)
