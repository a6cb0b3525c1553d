"""Fuzzing the converters with corrupted copies of the real samples in ../shared/samples.

Each case (fixed seed, a bounded number per converter) breaks one thing: bytes flipped in a
file, an empty or cut image, a field removed or of the wrong type, a line that is not UTF-8,
a huge caption, an empty input. Every case must end in counted skips (and then every sample
the case did not touch is written) or in a clear error that names the broken file; never a
traceback from inside a library.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Callable, Optional

import pytest

from data_modules.cc3m import CC3MDataModule
from data_modules.convert.cc3m import convert_cc3m
from data_modules.convert.mmdialog import convert_mmdialog
from data_modules.convert.vist import convert_vist
from data_modules.interleaved import InterleavedDataModule
from data_modules.shard_reader import read_shard
from data_modules.writer import write_shards

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples"
CASES = 16  # per converter
SEED = 0

# A mutation breaks a copy of the samples in ``root`` and returns (the file it broke, how many
# samples it may have spoilt: those need not be written).
Mutation = Callable[[Path, random.Random], tuple[Path, int]]


def flip_bytes(path: Path, rng: random.Random, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    for _ in range(count):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


def one_image(root: Path, rng: random.Random) -> Path:
    return rng.choice(sorted(p for p in root.rglob("*.jpg")))


def image_flipped(root, rng):
    path = one_image(root, rng)
    flip_bytes(path, rng)
    return path, 1


def image_emptied(root, rng):
    path = one_image(root, rng)
    path.write_bytes(b"")
    return path, 1


def image_cut(root, rng):
    path = one_image(root, rng)
    path.write_bytes(path.read_bytes()[: rng.randrange(1, 200)])
    return path, 1


def run(convert: Callable[[], object], broken: Path) -> Optional[object]:
    """The summary, or None after checking that the error names ``broken``."""
    try:
        return convert()
    except (ValueError, FileNotFoundError) as err:  # the converters' clear errors (exit code 2 in the CLI)
        assert str(broken) in str(err), f"the error does not name {broken}: {err}"
        return None


def check_sequences(convert: Callable[[], object], broken: Path, sequences: int, spoilt: int) -> None:
    """A story or dialogue conversion either names ``broken`` in its error, or read every
    sequence, wrote or counted each as skipped, and wrote all but the ``spoilt`` ones."""
    summary = run(convert, broken)
    if summary is not None:
        assert summary.read == sequences
        assert summary.written + sum(summary.skipped.values()) == summary.read
        assert summary.written >= sequences - spoilt


def cases(mutations: list[Mutation]) -> list[tuple[int, Mutation]]:
    return [(i, mutations[i % len(mutations)]) for i in range(CASES)]


# ---- CC3M: tsv + images ----

def cc3m_rows(root: Path) -> list[str]:
    return (root / "cc3m_val.tsv").read_text().splitlines()


def tsv_row_edited(edit: Callable[[str, random.Random], bytes]) -> Mutation:
    def mutate(root: Path, rng: random.Random) -> tuple[Path, int]:
        tsv = root / "cc3m_val.tsv"
        lines = tsv.read_bytes().split(b"\n")
        row = rng.randrange(1, len([line for line in lines if line.strip()]))
        lines[row] = edit(lines[row].decode(), rng)
        tsv.write_bytes(b"\n".join(lines))
        return tsv, 1
    return mutate


def tsv_emptied(root, rng):
    tsv = root / "cc3m_val.tsv"
    tsv.write_bytes(b"")
    return tsv, 0


CC3M_MUTATIONS: list[Mutation] = [
    image_flipped, image_emptied, image_cut, tsv_emptied,
    tsv_row_edited(lambda row, rng: row.encode().replace(b" ", b" \xff\xfe ", 1)),  # not UTF-8
    tsv_row_edited(lambda row, rng: ("w " * 50_000 + row).encode()),  # a huge caption: still a sample
    tsv_row_edited(lambda row, rng: row.split("\t")[0].encode()),  # a column removed
    tsv_row_edited(lambda row, rng: (row + "\textra").encode()),  # a column too many
    tsv_row_edited(lambda row, rng: row.replace(".jpg", ".png").encode()),  # an image that is not there
]


@pytest.mark.parametrize("case,mutate", cases(CC3M_MUTATIONS), ids=lambda v: getattr(v, "__name__", str(v)))
def test_cc3m_converter_survives_corrupted_samples(tmp_path, case, mutate):
    root = tmp_path / "in"
    shutil.copytree(SAMPLES / "CC3M", root)
    rows = len(cc3m_rows(root)) - 1
    broken, spoilt = mutate(root, random.Random(f"{SEED}/{case}"))
    summary = run(lambda: convert_cc3m(root / "cc3m_val.tsv", tmp_path / "out", shard_size=4), broken)
    if summary is None:
        return
    assert summary.rows == rows
    assert summary.written + summary.missing + summary.corrupt + summary.malformed == summary.rows
    assert summary.written >= rows - spoilt


# ---- VIST: stories json + image mapping + images ----

def vist_story_edited(edit: Callable[[dict, random.Random], None]) -> Mutation:
    def mutate(root: Path, rng: random.Random) -> tuple[Path, int]:
        path = root / "val_cleaned.json"
        table = json.loads(path.read_text())
        story = rng.choice(sorted(table))
        table[story] = edit(table[story], rng) or table[story]
        path.write_text(json.dumps(table))
        return path, 1
    return mutate


def step_field_set(name: str, value) -> Callable[[list, random.Random], None]:
    def edit(steps: list, rng: random.Random) -> None:
        steps[rng.randrange(len(steps))][name] = value
    return edit


def step_field_removed(steps: list, rng: random.Random) -> None:
    step = steps[rng.randrange(len(steps))]
    del step[rng.choice(sorted(step))]


def vist_file_broken(name: str, how: Callable[[Path, random.Random], None]) -> Mutation:
    def mutate(root: Path, rng: random.Random) -> tuple[Path, int]:
        how(root / name, rng)
        return root / name, 10**9
    mutate.__name__ = f"{name}_{how.__name__}"
    return mutate


def not_utf8(path: Path, rng: random.Random) -> None:
    data = path.read_bytes()
    at = rng.randrange(len(data))
    path.write_bytes(data[:at] + b"\xff\xfe" + data[at:])


def emptied(path: Path, rng: random.Random) -> None:
    path.write_bytes(b"")


VIST_MUTATIONS: list[Mutation] = [
    image_flipped, image_emptied, image_cut, vist_story_edited(step_field_removed),
    vist_story_edited(step_field_set("caption", 123)),
    vist_story_edited(step_field_set("image_id", [1, 2])),
    vist_story_edited(step_field_set("sequence_index", "first")),
    vist_story_edited(step_field_set("caption", "w " * 50_000)),
    vist_story_edited(lambda steps, rng: "not a list"),
    vist_file_broken("val_cleaned.json", not_utf8), vist_file_broken("val_cleaned.json", flip_bytes),
    vist_file_broken("val_image_mapping.json", emptied),
]


@pytest.mark.parametrize("case,mutate", cases(VIST_MUTATIONS), ids=lambda v: getattr(v, "__name__", str(v)))
def test_vist_converter_survives_corrupted_samples(tmp_path, case, mutate):
    root = tmp_path / "in"
    shutil.copytree(SAMPLES / "VIST", root)
    stories = len(json.loads((root / "val_cleaned.json").read_text()))
    broken, spoilt = mutate(root, random.Random(f"{SEED}/{case}"))
    check_sequences(lambda: convert_vist(root / "val_cleaned.json", root / "val_image_mapping.json", tmp_path / "out"),
                    broken, stories, spoilt)


# ---- MMDialog: json lines + images ----

def dialogue_line_edited(edit: Callable[[dict, random.Random], object]) -> Mutation:
    def mutate(root: Path, rng: random.Random) -> tuple[Path, int]:
        path = root / "test" / "test_conversations.txt"
        lines = path.read_text().splitlines()
        row = rng.randrange(len(lines))
        record = json.loads(lines[row])
        edited = edit(record, rng)
        lines[row] = edited if isinstance(edited, str) else json.dumps(record)
        path.write_text("\n".join(lines) + "\n", errors="surrogateescape")  # "\udcff" is the byte 0xff
        return path, 1
    return mutate


def turn_item_set(value) -> Callable[[dict, random.Random], None]:
    def edit(record: dict, rng: random.Random) -> None:
        turn = rng.choice(record["conversation"])["turn"]
        turn[rng.randrange(len(turn))] = value
    return edit


MMDIALOG_MUTATIONS: list[Mutation] = [
    image_flipped, image_emptied, image_cut,
    dialogue_line_edited(lambda record, rng: record.pop("conversation_id")),
    dialogue_line_edited(lambda record, rng: record.update(conversation="hello")),
    dialogue_line_edited(turn_item_set({"__TEXT__": 5})),
    dialogue_line_edited(turn_item_set({"__MEDIA__": None})),
    dialogue_line_edited(turn_item_set({"__TEXT__": "w " * 50_000})),
    dialogue_line_edited(lambda record, rng: json.dumps(record)[: rng.randrange(1, 40)]),  # a cut line
    dialogue_line_edited(lambda record, rng: "\udcff" + json.dumps(record)),  # written as bytes that are not UTF-8
]


@pytest.mark.parametrize("case,mutate", cases(MMDIALOG_MUTATIONS), ids=lambda v: getattr(v, "__name__", str(v)))
def test_mmdialog_converter_survives_corrupted_samples(tmp_path, case, mutate):
    root = tmp_path / "in"
    shutil.copytree(SAMPLES / "MMDialog", root)
    dialogues = len([line for line in (root / "test" / "test_conversations.txt").read_text().splitlines()
                     if line.strip()])
    broken, spoilt = mutate(root, random.Random(f"{SEED}/{case}"))
    check_sequences(lambda: convert_mmdialog(root / "test" / "test_conversations.txt", root / "test", tmp_path / "out"),
                    broken, dialogues, spoilt)


# ---- the DataModules: shards whose samples were corrupted after conversion ----

def shard_samples(path: Path) -> list[dict]:
    return list(read_shard(str(path)))


def sample_broken(how: str) -> Callable[[dict, random.Random], None]:
    """Break one member of a shard sample (its bytes, its presence, a json field's type, its size)."""
    def edit(sample: dict, rng: random.Random) -> None:
        fields = sorted(k for k in sample if not k.startswith("__"))
        name = rng.choice([f for f in fields if f.endswith("json")] if how in ("retype", "grow") else fields)
        if how == "flip":
            data = bytearray(sample[name])
            for _ in range(16):
                data[rng.randrange(len(data))] ^= 0xFF
            sample[name] = bytes(data)
        elif how == "drop":
            del sample[name]
        elif how == "empty":
            sample[name] = b""
        elif how == "retype":  # every value of the record becomes a number
            record = json.loads(sample[name])
            sample[name] = json.dumps({k: 7 for k in record}).encode()
        else:  # grow: a huge text in every string of the record
            record = json.loads(sample[name])
            sample[name] = json.dumps(_grown(record)).encode()
    edit.__name__ = how
    return edit


def _grown(value):
    if isinstance(value, str):
        return value + " w" * 20_000
    if isinstance(value, list):
        return [_grown(v) for v in value]
    if isinstance(value, dict):
        return {k: _grown(v) for k, v in value.items()}
    return value


def converted(kind: str, out: Path) -> Path:
    """The real samples of ``kind`` as one shard."""
    if kind == "cc3m":
        convert_cc3m(SAMPLES / "CC3M" / "cc3m_val.tsv", out, shard_size=100)
    elif kind == "vist":
        convert_vist(SAMPLES / "VIST" / "val_cleaned.json", SAMPLES / "VIST" / "val_image_mapping.json", out)
    else:
        convert_mmdialog(SAMPLES / "MMDialog" / "test" / "test_conversations.txt", SAMPLES / "MMDialog" / "test", out)
    (shard,) = sorted(out.glob("*.tar"))
    return shard


def examples(kind: str, shard: Path) -> tuple[int, object]:
    """How many examples the data module's validation reading makes of ``shard``, and its counter."""
    if kind == "cc3m":
        dm = CC3MDataModule(str(shard), str(shard), num_workers=0, batch_size=1)
    else:
        dm = InterleavedDataModule(str(shard), str(shard), num_workers=0, batch_size=1)
    dm.setup("fit")
    return sum(batch["input_ids"].shape[0] for batch in dm.val_dataloader()), dm.counter


BREAKS = [sample_broken(how) for how in ("flip", "drop", "empty", "retype", "grow")]


@pytest.mark.parametrize("kind", ["cc3m", "vist", "mmdialog"])
@pytest.mark.parametrize("case", range(5))
def test_data_modules_skip_corrupted_samples_and_keep_the_others(tmp_path, kind, case):
    shard = converted(kind, tmp_path / "clean")
    clean, _ = examples(kind, shard)
    rng = random.Random(f"{SEED}/{kind}/{case}")
    samples = shard_samples(shard)
    victim = rng.randrange(len(samples))
    BREAKS[case](samples[victim], rng)
    (tmp_path / "broken").mkdir()
    (broken,) = write_shards(str(tmp_path / "broken" / "%06d.tar"), samples, shard_size=100)
    got, counter = examples(kind, Path(broken))
    lost = clean - got
    # Only the victim's examples may be lost (each other sample gives at least one), and a loss is counted.
    assert 0 <= lost <= clean - (len(samples) - 1), (lost, clean)
    assert lost == 0 or counter.bad + counter.skipped + counter.turns_left_out > 0
