"""Faults tried, survived, samples kept vs lost: one table for the faults a cluster run meets.

Each row runs a fault in this process, at small size, through the code training uses (the
shard reader, the training stream, the checkpoint writer, the checkpoint loader, the
converters) and counts what came through. The faults that need whole ``minigpt5 fit`` runs
(a kill during a save, a NaN on one of two DDP ranks, a kill then resume, a vanished shard
under DataLoader workers) are tests; their rows name the test instead of a count.

    .venv/bin/python benchmarks/reliability.py
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from PIL import Image

from data_modules.errors import BadSample
from data_modules.shard_reader import ShardError, read_shard
from data_modules.shards import SampleCounter
from data_modules.stream import POSITION_KEY, DataFaultError, DataFaults, EpochLoader, FAULTS_KEY, ResumableStream
from data_modules.writer import write_shards
from lit_models.checkpoint_files import UnsafeCheckpointError, load_checkpoint_file
from lit_models.checkpoint_io import CheckpointWriteError, atomic_torch_save


@dataclass
class Row:
    fault: str
    survived: Optional[bool]  # went on, or stopped with a clear error where it should; None: a test asserts it
    kept: str  # samples (or files) that came through
    lost: str  # and those that did not
    how: str


def _jpeg(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def _shards(root: Path, count: int, per_shard: int, broken_every: int = 0) -> list[str]:
    good, bad = _jpeg("red"), b"not a jpeg"
    samples = ({"__key__": f"{i:05d}", "jpg": bad if broken_every and i % broken_every == 0 else good, "txt": "x"}
               for i in range(count * per_shard))
    root.mkdir(parents=True, exist_ok=True)
    return write_shards(str(root / "%06d.tar"), samples, per_shard)


def _encode(sample: dict) -> list[str]:
    if sample.get("jpg") == b"not a jpeg":
        raise BadSample(sample, "unreadable image")
    return [sample["__key__"]]


def _stream(urls: list[str], batches: int) -> tuple[ResumableStream, SampleCounter]:
    counter = SampleCounter()
    return ResumableStream(urls, encode=_encode, collate=lambda keys: {"keys": keys}, on_error=counter,
                           batch_size=4, num_batches=batches, num_streams=1, shuffle_buffer=4, seed=0,
                           groups=[0]), counter


def _faults(batches: list[dict]) -> DataFaults:
    total = DataFaults()
    for batch in batches:
        total = total.add(DataFaults(*batch[FAULTS_KEY].tolist()))
    return total


def truncated_shard(root: Path) -> Row:
    (path,) = _shards(root, 1, 20)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    kept = 0
    try:
        for _ in read_shard(path):
            kept += 1
    except ShardError:
        pass
    return Row("shard truncated mid-sample", True, f"{kept} of 20", f"{20 - kept} (after the cut)",
               "whole samples before the cut read; the shard logged and counted")


def vanished_shards(root: Path) -> Row:
    urls = _shards(root, 4, 8)
    stream, _ = _stream(urls, 12)
    batches = []
    for i, batch in enumerate(EpochLoader(stream, 0, lambda s: None)):
        batches.append(batch)
        if i == 1:
            for url in urls[2:]:
                os.remove(url)  # network storage loses half the shards mid-epoch
    faults = _faults(batches)
    return Row("half the shards vanish mid-epoch", len(batches) == 12, f"{len(batches)} of 12 batches",
               f"{faults.bad_shards} shard reads", "gone shards logged and counted; the stream draws others")


def corrupt_samples(root: Path) -> Row:
    stream, counter = _stream(_shards(root, 2, 15, broken_every=3), 6)
    batches = list(EpochLoader(stream, 0, lambda s: None))
    faults = _faults(batches)
    kept = faults.read - faults.bad_samples
    return Row("every 3rd image corrupt", len(batches) == 6 and counter.bad == faults.bad_samples,
               f"{kept} of {faults.read}", f"{faults.bad_samples} (each logged)", "skipped and counted")


def mostly_bad(root: Path) -> Row:
    stream, _ = _stream(_shards(root, 2, 40, broken_every=2), 40)
    faults, stopped = DataFaults(), ""
    try:
        for batch in EpochLoader(stream, 0, lambda s: None):
            faults = faults.add(DataFaults(*batch[FAULTS_KEY].tolist()))
            batch.pop(POSITION_KEY)
            faults.check(0.1)
    except DataFaultError as err:
        stopped = str(err).split(";")[0]
    return Row("half the samples corrupt (max_bad_share 0.1)", bool(stopped), "-", stopped or "did not stop",
               "stops with one line instead of training on nothing")


def disk_full(root: Path) -> Row:
    path = root / "last.ckpt"
    root.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"step": 1}, path)
    real = torch.save

    def fill(obj, f, *args, **kwargs):
        f.write(b"\0" * 1024)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    torch.save = fill
    try:
        atomic_torch_save({"step": 2}, path)
        named = False
    except CheckpointWriteError as err:
        named = str(path) in str(err) and "No space left" in str(err)
    finally:
        torch.save = real
    intact = torch.load(path) == {"step": 1} and [p.name for p in root.iterdir()] == ["last.ckpt"]
    return Row("disk full during a checkpoint save", named and intact, "previous last.ckpt", "the new save",
               "error names the file and cause; no partial file left")


class _Payload:
    def __reduce__(self):
        return os.system, ("echo pwned",)


def crafted_pickle(root: Path) -> Row:
    path = root / "evil.ckpt"
    root.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "x": _Payload()}, path)
    try:
        load_checkpoint_file(path)
        refused = False
    except UnsafeCheckpointError:
        refused = True
    return Row("checkpoint crafted to run a command", refused, "-", "-", "refused unless --allow-pickle")


def not_a_checkpoint(root: Path) -> Row:
    path = root / "notes.ckpt"
    root.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps("hello")[:3] + b"garbage")
    try:
        load_checkpoint_file(path)
        ok = False
    except Exception as err:  # noqa: BLE001 - the row records which
        ok = type(err).__name__ == "NotACheckpointError" and str(path) in str(err)
    return Row("a file that is not a checkpoint", ok, "-", "-", "one line naming the file")


IN_TESTS = [  # (fault, what the test asserts came through, what was lost, the test)
    Row("kill during a Lightning save", None, "previous last.ckpt", "the new save",
        "tests/lit_models/test_checkpoint_io.py"),
    Row("kill mid-epoch, then resume (1 process; 2 DDP ranks)", None, "bit-identical weights", "-",
        "tests/e2e/test_train.py, tests/e2e/test_distributed_train.py"),
    Row("truncated and vanished shards under `minigpt5 fit`", None, "every step", "counted into the checkpoint",
        "tests/e2e/test_data_faults.py"),
    Row("NaN on one of two DDP ranks", None, "checkpoints before that step", "that step",
        "tests/e2e/test_distributed_train.py: every rank stops with the same message"),
    Row("corrupted inputs to the converters and data modules", None, "every untouched sample", "the broken one",
        "tests/data_modules/test_fuzz_inputs.py: counted skips, or errors naming the file"),
]

SCENARIOS: list[Callable[[Path], Row]] = [truncated_shard, vanished_shards, corrupt_samples, mostly_bad, disk_full,
                                          crafted_pickle, not_a_checkpoint]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = [scenario(Path(tmp) / scenario.__name__) for scenario in SCENARIOS]
    print("| fault | survived | kept | lost | how |")
    print("|---|---|---|---|---|")
    for row in rows + IN_TESTS:
        survived = "tested" if row.survived is None else "yes" if row.survived else "NO"
        print(f"| {row.fault} | {survived} | {row.kept} | {row.lost} | {row.how} |")
    print(f"\n{sum(r.survived for r in rows)} of {len(rows)} faults run here survived; "
          f"{len(IN_TESTS)} more are covered by the tests named.")


if __name__ == "__main__":
    main()
