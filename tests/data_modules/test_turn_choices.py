"""Stage-2 turn choices on the real VIST and MMDialog samples: the official task mix and
dialogue reading (official dataloader.py) against this project's reading."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import webdataset as wds

from data_modules.convert.mmdialog import convert_mmdialog
from data_modules.errors import BadSample
from data_modules.interleaved import InterleavedDataModule, InterleavedEncoder, read_record
from data_modules.shards import SampleCounter
from data_modules.synthetic import write_synthetic
from data_modules.turn_choices import OFFICIAL, TurnChoices, sample_examples
from lit_models.lightning_cli import ParseOnlyCLI, run_lightning
from lit_models.module import MiniGPT5Module
from minigpt5.config import LLMConfig, MiniGPT5Config, VisionConfig
from minigpt5.losses import IGNORE_INDEX
from minigpt5.task_prompts import MMDIALOG_SYSTEM, VIST_CONTINUE, VIST_GENERATE, VIST_SYSTEM, VIST_UNDERSTAND

ROOT = Path(__file__).resolve().parents[2]
CFG = MiniGPT5Config(llm=LLMConfig(max_length=1024), vision=VisionConfig(kind="clip"))
TOKENS_PER_IMAGE = 5  # tiny CLIP tower: (32 / 16)^2 patches + class token
NO_LIMIT = replace(OFFICIAL, max_turn_tokens=None)  # the real sample's first turn is over 50 tokens


def raw_samples(spec: str) -> list[dict]:
    return list(wds.WebDataset(spec, shardshuffle=False, empty_check=False))


def examples(spec: str, choices: TurnChoices, counter: SampleCounter = None, targets: str = "all"):
    encoder = InterleavedEncoder(CFG, counter or SampleCounter(), targets, "both", choices=choices)
    (sample,) = raw_samples(spec)
    return sample_examples(sample, read_record(sample), choices, targets, "both", encoder.count_tokens,
                           encoder.counter)


def parts(example) -> list:
    """Every part the user gives: the story so far (or the history), then a story task's request."""
    request = [example.request] if example.request is not None else []
    return [part for message in example.context for part in message.parts] + request


@pytest.fixture
def vist(samples_dir):
    return json.loads((samples_dir / "VIST" / "val_cleaned.json").read_text())["40470"]


def mmdialog_copy(samples_dir: Path, tmp_path: Path) -> tuple[Path, dict]:
    """A writable copy of the real MMDialog sample: (its folder, the conversation)."""
    folder = tmp_path / "mmdialog"
    shutil.copytree(samples_dir / "MMDialog" / "test", folder)
    return folder, json.loads((folder / "test_conversations.txt").read_text().splitlines()[0])


def convert(folder: Path, record: dict, tmp_path: Path) -> str:
    (folder / "test_conversations.txt").write_text(json.dumps(record) + "\n")
    return convert_mmdialog(folder / "test_conversations.txt", folder, tmp_path / "shards").spec


@pytest.fixture
def mmdialog(samples_dir, tmp_path):
    folder, record = mmdialog_copy(samples_dir, tmp_path)
    return convert(folder, record, tmp_path), record


# ---- VIST ----

def test_vist_official_task_mix_on_the_real_story(vist_shards, vist):
    captions = [step["caption"] for step in vist]  # already in sequence order in the sample
    got = examples(vist_shards, OFFICIAL)
    assert [(e.task, e.turn) for e in got] == [("generate", 0)] + [
        (task, t) for t in range(1, 5) for task in ("generate", "continue", "understand")]
    for e in got:
        t = e.turn
        assert e.system == VIST_SYSTEM and [m.role for m in e.context] == ["user"] and e.role == "assistant"
        story, (ask,) = parts(e)[:t], parts(e)[t:]
        assert [p.text for p in story] == captions[:t] and [p.images for p in story] == [[f"{i}.jpg"] for i in range(t)]
        if e.task == "generate":  # the caption is given, the image alone is the target
            assert ask.text in [w.format(text=captions[t]) for w in VIST_GENERATE] and ask.images == []
            assert (e.text, e.images) == ("", [f"{t}.jpg"])
        elif e.task == "continue":
            assert ask.text in VIST_CONTINUE and ask.images == []
            assert (e.text, e.images) == (captions[t], [f"{t}.jpg"])
        else:  # understand: the step's image is read, its caption written
            assert ask.text in VIST_UNDERSTAND and ask.images == [f"{t}.jpg"]
            assert (e.text, e.images) == (captions[t], [])
    assert got == examples(vist_shards, OFFICIAL)  # the wording drawn is fixed per example
    assert parts(got[0])[0].text == f"Generate an image with the scene description: {captions[0]}" or \
        parts(got[0])[0].text == f"the scene description: {captions[0]}"


def test_vist_this_projects_reading_is_the_bare_continuation(vist_shards, vist):
    got = examples(vist_shards, TurnChoices())
    assert [(e.task, e.turn, e.system, e.role) for e in got] == [("continue", t, "", None) for t in range(1, 5)]
    for e in got:
        assert [p.text for p in parts(e)] == [step["caption"] for step in vist[: e.turn]]
        assert (e.text, e.images) == (vist[e.turn]["caption"], [f"{e.turn}.jpg"])


def test_vist_tasks_without_the_official_prompts(vist_shards, vist):
    got = examples(vist_shards, TurnChoices(story_tasks=["generate", "understand"]))
    assert [(e.task, e.turn) for e in got] == [("generate", 0)] + [
        (task, t) for t in range(1, 5) for task in ("generate", "understand")]
    for e in got:
        *story, last = parts(e)
        assert [p.text for p in story] == [step["caption"] for step in vist[: e.turn]]
        if e.task == "generate":  # the caption is plain context, the image the target
            assert (last.text, last.images, e.text, e.images) == (vist[e.turn]["caption"], [], "", [f"{e.turn}.jpg"])
        else:  # the image alone in, its caption out
            assert (last.text, last.images, e.text, e.images) == ("", [f"{e.turn}.jpg"], vist[e.turn]["caption"], [])
        assert e.system == "" and e.role is None


def test_vist_official_batch_tokens_labels_and_images(vist_shards, vist):
    dm = InterleavedDataModule(vist_shards, vist_shards, model_config=CFG, num_workers=0, batch_size=64,
                               choices=OFFICIAL)
    dm.setup("fit")
    (batch,) = list(dm.val_dataloader())
    enc, ids, labels = dm.encoder, batch["input_ids"], batch["labels"]
    tasks = [(e.task, e.turn) for e in examples(vist_shards, OFFICIAL)]
    assert ids.shape[0] == len(tasks) == 13
    images_in = {"generate": 0, "continue": 0, "understand": 1}
    for row, (task, t) in enumerate(tasks):
        assert int((ids[row] == enc.image_token_id).sum()) == (t + images_in[task]) * TOKENS_PER_IMAGE
        assert int((ids[row] == enc.voken_ids[0]).sum()) == (task != "understand")
        scored = labels[row][labels[row] != IGNORE_INDEX].tolist()
        caption = enc.tokenizer(vist[t]["caption"], add_special_tokens=False).input_ids
        eos = enc.tokenizer.eos_token_id
        if task == "generate":  # text loss only on [IMG0] and the end marker: the caption is the source
            assert scored == [enc.voken_ids[0], eos]
            assert enc.tokenizer.decode(ids[row]).count(vist[t]["caption"]) == 1
        else:
            assert scored == caption + ([enc.voken_ids[0]] if task == "continue" else []) + [eos]
    assert batch["input_pixels"].shape[0] == (0 + 1 + 2 + 3 + 4) * 2 + (2 + 3 + 4 + 5)
    assert batch["target_pixels"].shape[0] == 5 + 4  # generate and continue draw; understand writes
    assert (dm.counter.bad, dm.counter.skipped, dm.counter.truncated) == (0, 0, 0)


def test_vist_last_step_gets_every_task(vist_shards):
    got = examples(vist_shards, OFFICIAL, targets="last")
    assert [(e.task, e.turn) for e in got] == [("generate", 4), ("continue", 4), ("understand", 4)]


def test_understand_needs_a_vision_tower():
    no_vision = MiniGPT5Config(vision=VisionConfig(kind="none"))
    with pytest.raises(ValueError, match="understand.*vision"):
        InterleavedEncoder(no_vision, SampleCounter(), "all", "both", choices=OFFICIAL)


# ---- MMDialog ----

def official_history(conversation: list[dict]) -> list[tuple[int, list[int], str]]:
    """The official loop's history (dataloader.py:350-402), as (target turn, context turns, target role),
    re-derived from its rules on a dialogue with no bad turns."""
    out, history, user_turns, cut = [], [], 0, 0
    for i, _ in enumerate(conversation):
        if i > 0:
            out.append((i, list(history), "user" if i % 2 == 0 else "assistant"))
        if i % 2 == 0:
            user_turns += 1
            if user_turns == 2:
                cut = len(history)
        if user_turns == 2 and i % 2 == 1:
            history, user_turns, cut = history[cut:], 1, 0
        history.append(i)
    return out


def test_mmdialog_official_reading_of_the_real_dialogue(mmdialog):
    spec, record = mmdialog
    turns = [turn["turn"] for turn in record["conversation"]]
    got = examples(spec, NO_LIMIT)
    expected = official_history(turns)
    assert [e.turn for e in got] == [i for i, _, _ in expected] == list(range(1, 9))
    image_of = {}  # member names are numbered over the dialogue's images
    for i, items in enumerate(turns):
        if len(items) > 1:
            image_of[i] = f"{len(image_of)}.jpg"
    for e, (i, context, role) in zip(got, expected):
        assert e.system == MMDIALOG_SYSTEM and e.task == "respond" and e.role == role
        assert [p.text for p in parts(e)] == [turns[j][0]["__TEXT__"].strip() for j in context]
        assert [m.role for m in e.context] == ["user" if j % 2 == 0 else "assistant" for j in context]
        assert [p.images for p in parts(e)] == [[image_of[j]] if j in image_of else [] for j in context]
        assert (e.text, e.images) == (turns[i][0]["__TEXT__"].strip(), [image_of[i]] if i in image_of else [])
    assert [len(c) for _, c, _ in expected] == [1, 2, 3, 2, 3, 2, 3, 2]  # the last exchange, not the whole history


def test_mmdialog_this_projects_reading_keeps_the_whole_history(mmdialog):
    spec, record = mmdialog
    got = examples(spec, TurnChoices())
    assert [e.turn for e in got] == [1, 3, 5, 7]  # the assistant's turns alone
    assert [len(parts(e)) for e in got] == [1, 3, 5, 7]
    assert all(e.role is None and e.system == "" and {m.role for m in e.context} == {None} for e in got)
    both = examples(spec, replace(TurnChoices(), speakers="both"))
    assert [e.turn for e in both] == [len(parts(e)) for e in both] == list(range(1, 9))
    assert [e.turn for e in examples(spec, TurnChoices(), targets="last")] == [7]
    assert [e.turn for e in examples(spec, replace(TurnChoices(), speakers="both"), targets="last")] == [8]


def test_without_roles_no_target_ends_where_a_user_stops(tmp_path):
    """Without speakers' markers, a user's turn as a target is the user's words then the end
    marker: the same tokens a response must follow. Only the assistant's turns are targets."""
    shards = write_synthetic(tmp_path, num=8, val_num=0, size=16, seed=0, shard_size=8, layout="dialogues")
    encoder = InterleavedEncoder(CFG, SampleCounter(), "all", "both")
    tok = encoder.tokenizer
    for sample in raw_samples(shards.train):
        rules = read_record(sample)["turns"]
        got = [item["example"] for item in encoder(sample)]
        assert len(got) == len(rules) // 2
        for example in got:
            written = tok.decode([t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX],
                                 skip_special_tokens=True)
            assert written.split()[:2] in (["here", "is"], ["it", "is"])  # every reply of the world starts so


def test_mmdialog_real_first_turn_is_over_the_official_50_tokens(mmdialog, caplog):
    spec, record = mmdialog
    counter = SampleCounter()
    with caplog.at_level(logging.WARNING), pytest.raises(BadSample, match="no examples from its 0 usable turn"):
        examples(spec, OFFICIAL, counter)
    assert (counter.dialogues_stopped, counter.turns_left_out) == (1, 9)
    assert "stopped at turn 0" in caplog.text and "over data.choices.max_turn_tokens=50" in caplog.text


def test_mmdialog_missing_image_stops_the_dialogue_or_drops_the_image(samples_dir, tmp_path, caplog):
    folder, record = mmdialog_copy(samples_dir, tmp_path)
    missing = record["conversation"][2]["turn"][1]["__MEDIA__"]
    (folder / f"{missing}.jpg").unlink()
    spec = convert(folder, record, tmp_path)

    counter = SampleCounter()
    with caplog.at_level(logging.WARNING):
        (only,) = examples(spec, NO_LIMIT, counter)  # official: turns 0 and 1 remain, one target
    assert only.turn == 1 and (counter.dialogues_stopped, counter.turns_left_out) == (1, 7)
    assert "stopped at turn 2: its first image was missing" in caplog.text

    counter = SampleCounter()
    skipping = examples(spec, replace(NO_LIMIT, bad_turns="skip"), counter)  # the bad turn alone goes
    assert len(skipping) == 7 and (counter.dialogues_stopped, counter.turns_left_out) == (0, 1)
    assert [m.role for m in skipping[1].context] == ["user", "assistant"] and skipping[1].role == "assistant"

    ours = examples(spec, replace(TurnChoices(), speakers="both"))  # this project's reading: the turn stays, without its image
    assert len(ours) == 8 and (ours[1].text, ours[1].images) == (record["conversation"][2]["turn"][0]["__TEXT__"], [])


def test_mmdialog_turn_dropped_at_conversion_stops_the_official_reading(samples_dir, tmp_path, caplog):
    folder, record = mmdialog_copy(samples_dir, tmp_path)
    record["conversation"][5]["turn"] = [{"__TEXT__": "  "}]  # the converter drops it as empty
    spec = convert(folder, record, tmp_path)
    counter = SampleCounter()
    with caplog.at_level(logging.WARNING):
        got = examples(spec, NO_LIMIT, counter)
    assert [e.turn for e in got] == [1, 2, 3, 4] and (counter.dialogues_stopped, counter.turns_left_out) == (1, 3)
    assert "stopped at turn 5: dropped at conversion" in caplog.text
    # this project's reading: the other 8 turns, 7 targets, of which turns 1, 3 and 7 are the assistant's
    assert [e.turn for e in examples(spec, TurnChoices())] == [1, 3, 6]  # positions among the usable turns


def test_mmdialog_first_text_and_image_or_all_of_them(samples_dir, tmp_path):
    folder, record = mmdialog_copy(samples_dir, tmp_path)
    first_turn = record["conversation"][1]["turn"]
    extra = record["conversation"][3]["turn"][1]["__MEDIA__"]
    first_turn += [{"__TEXT__": "and a second text"}, {"__MEDIA__": extra}]
    spec = convert(folder, record, tmp_path)
    official = examples(spec, NO_LIMIT)[0]
    assert (official.text, official.images) == (first_turn[0]["__TEXT__"], ["1.jpg"])
    ours = examples(spec, TurnChoices())[0]
    assert (ours.text, ours.images) == (f"{first_turn[0]['__TEXT__']} and a second text", ["1.jpg", "2.jpg"])


def test_over_long_turns_skipped_alone_under_skip(mmdialog, caplog):
    spec, _ = mmdialog
    counter = SampleCounter()
    with caplog.at_level(logging.WARNING):
        got = examples(spec, TurnChoices(max_turn_tokens=100, speakers="both"), counter)
    # tiny tokenizer: turns 0 (222 tokens) and 3 (165) are over 100; 7 turns left, 6 targets
    assert len(got) == 6 and (counter.turns_left_out, counter.dialogues_stopped) == (2, 0)
    assert "skipped turn 0" in caplog.text and "skipped turn 3" in caplog.text


def test_first_turn_content_needs_the_converters_turn_fields(tmp_path):
    shards = write_synthetic(tmp_path, num=2, val_num=0, size=16, seed=0, shard_size=2, layout="dialogues")
    sample = raw_samples(shards.train)[0]
    assert sample_examples(sample, read_record(sample), TurnChoices(), "all", "both", len, SampleCounter())
    with pytest.raises(ValueError, match="convert the dialogues again, or set data.choices.turn_content=all"):
        sample_examples(sample, read_record(sample), OFFICIAL, "all", "both", len, SampleCounter())


@pytest.mark.parametrize("bad, match", [
    ({"story_tasks": ["generate", "generate"]}, "story_tasks"), ({"story_tasks": []}, "story_tasks"),
    ({"story_tasks": ["draw"]}, "story_tasks"), ({"prompts": "chat"}, "prompts"), ({"roles": "yes"}, "roles"),
    ({"turn_content": "last"}, "turn_content"), ({"bad_turns": "drop"}, "bad_turns"),
    ({"max_turn_tokens": 0}, "max_turn_tokens"), ({"history": "last"}, "history"), ({"speakers": "user"}, "speakers"),
    ({"image_context_dropout": 1.0}, "image_context_dropout"), ({"image_context_dropout": -0.1}, "image_context_dropout"),
    ({"image_context_dropout": "half"}, "image_context_dropout"),
])
def test_bad_choices_are_named(bad, match):
    with pytest.raises(ValueError, match=f"data.choices.{match}"):
        TurnChoices(**bad)


# ---- image context dropout ----

def test_image_context_dropout_leaves_out_context_images_of_training_examples_only(tmp_path):
    spec = write_synthetic(tmp_path / "stories", num=200, val_num=0, size=16, layout="stories").train
    samples = raw_samples(spec)
    choices = TurnChoices(image_context_dropout=0.5)

    def read(sample, training):
        return sample_examples(sample, read_record(sample), choices, "all", "both", len, SampleCounter(), training)

    kept = [e for s in samples for e in read(s, training=False)]
    drawn = [e for s in samples for e in read(s, training=True)]
    assert drawn == [e for s in samples for e in read(s, training=True)]  # the draw is fixed by the sample
    assert all(p.images for e in kept for p in parts(e))  # validation and evaluation keep every image
    dropped = 0
    for full, seen in zip(kept, drawn):
        assert [p.text for p in parts(seen)] == [p.text for p in parts(full)]  # the text always stays
        assert (seen.text, seen.images) == (full.text, full.images)  # so does the target and its picture
        images = [bool(p.images) for p in parts(seen)]
        assert all(images) or not any(images)  # all of an example's context images go, or none
        dropped += not any(images)
    assert 0.4 < dropped / len(drawn) < 0.6  # 400 examples, half drawn


def test_the_datamodule_drops_in_training_and_validates_on_every_image(tmp_path):
    spec = write_synthetic(tmp_path / "stories", num=8, val_num=0, size=16, layout="stories").train
    dm = InterleavedDataModule(spec, spec, model_config=CFG, num_workers=0, batch_size=64,
                               choices=TurnChoices(image_context_dropout=0.5))
    dm.setup("fit")
    assert dm.encoder.training and not dm.make_val_encoder().training
    plain = InterleavedDataModule(spec, spec, model_config=CFG, num_workers=0)
    plain.setup("fit")
    assert plain.make_val_encoder() is plain.encoder  # without dropout, one encoder serves both
    (batch,) = list(dm.val_dataloader())
    assert batch["input_pixels"].shape[0] == 8 * (1 + 2)  # steps 1 and 2 of 8 stories read 1 and 2 pictures
    train_images = sum(len(item["input_pixels"]) for s in raw_samples(spec) for item in dm.encoder(s))
    assert 0 < train_images < 8 * (1 + 2)


# ---- the configs ----

def parsed_choices(*files: str) -> dict:
    args = [a for f in files for a in ("-c", str(ROOT / f))]
    config = run_lightning(MiniGPT5Module, args, run=False, cli_class=ParseOnlyCLI).config
    return vars(config.data.init_args.choices)


def test_paper_configs_read_the_data_as_the_official_code_and_the_demo_as_this_project():
    stage2 = ["configs/uas.yaml", "configs/mls.yaml"]
    vist = parsed_choices(*stage2, "configs/mls_vist.yaml", "configs/model/paper.yaml")
    assert (vist["story_tasks"], vist["prompts"], vist["roles"]) == (OFFICIAL.story_tasks, "official", True)
    dialogue = TurnChoices(**parsed_choices(*stage2, "configs/mls_mmdialog.yaml", "configs/model/paper.yaml"))
    assert dialogue == replace(OFFICIAL, story_tasks=["continue"])  # the story tasks do not touch dialogues
    demo = parsed_choices(*stage2, "configs/mls_vist.yaml", "configs/model/tiny.yaml", "configs/demo_mls.yaml")
    assert TurnChoices(**demo) == TurnChoices()
