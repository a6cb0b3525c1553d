"""Checkpoints from strangers: nothing in a file runs on load (lit_models/checkpoint_files.py)."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from lit_models.checkpoint_files import NotACheckpointError, UnsafeCheckpointError, load_checkpoint_file
from lit_models.cli import main
from lit_models.export import trainable_weights
from lit_models.module import MiniGPT5Module


class RunsACommand:
    """Unpickling this runs ``touch <marker>``, as a crafted checkpoint would run anything."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def evil_checkpoint(tmp_path) -> tuple[str, str]:
    marker = str(tmp_path / "ran")
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"payload": RunsACommand(marker)}}, path)
    return str(path), marker


def test_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path, capsys):
    path, marker = evil_checkpoint(tmp_path)
    for load in (load_checkpoint_file, trainable_weights, MiniGPT5Module.from_checkpoint):
        with pytest.raises(UnsafeCheckpointError, match=r"evil\.ckpt.*--allow-pickle"):
            load(path)
    assert main(["generate", "--ckpt", path, "--prompt", "a red circle", "--out", str(tmp_path / "out")]) == 2
    assert "could run code" in capsys.readouterr().err
    assert not os.path.exists(marker)
    load_checkpoint_file(path, allow_pickle=True)  # the user's explicit choice: it runs
    assert os.path.exists(marker)


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path, capsys):
    junk = tmp_path / "notes.txt"
    junk.write_text("these are not weights\n")
    with pytest.raises(NotACheckpointError, match="notes.txt"):
        load_checkpoint_file(junk)
    legacy = tmp_path / "plain.pkl"
    legacy.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(NotACheckpointError, match="plain.pkl"):
        load_checkpoint_file(legacy)
    assert main(["generate", "--ckpt", str(junk), "--prompt", "hi", "--out", str(tmp_path / "out")]) == 2
    assert "not a PyTorch checkpoint" in capsys.readouterr().err


def test_checkpoints_with_the_projects_config_objects_still_load(tmp_path):
    """A checkpoint whose hyper-parameters are config dataclasses (not dicts) is read safely."""
    import lightning

    module = MiniGPT5Module()
    checkpoint = {"state_dict": {k: v for k, v in module.state_dict().items() if k in module.trainable_keys()},
                  "hyper_parameters": dict(module.hparams), "pytorch-lightning_version": lightning.__version__}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "own.ckpt")
    assert MiniGPT5Module.from_checkpoint(str(tmp_path / "own.ckpt")).config == module.config


def test_input_images_that_are_bombs_or_not_images_are_named(tmp_path, monkeypatch):
    from PIL import Image

    from lit_models.generate_cli import load_images

    big = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 pixels: over twice the limit, a "bomb"
    with pytest.raises(ValueError, match=r"big\.png.*exceeds limit"):
        load_images([str(big)])
    text = tmp_path / "photo.jpg"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="photo.jpg"):
        load_images([str(text)])


def test_generated_text_is_escaped_in_the_story_page():
    from lit_models.pages import story_html
    from minigpt5.generate import GenerationResult

    result = GenerationResult(prompt="<b>hi</b>", input_images=[], segments=["<script>alert(1)</script>"],
                              token_ids=[], sequence_ids=[], prompt_length=0, context_pixels=None,
                              voken_features=[], settings={}, stopped="eos")
    page = story_html(result)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<b>hi</b>" not in page


def test_every_command_names_a_missing_or_wrong_checkpoint_in_one_line(tmp_path, capsys):
    junk = tmp_path / "notes.txt"
    junk.write_text("these are not weights\n")
    missing = str(tmp_path / "nowhere.ckpt")
    commands = {
        "eval": ["--protocol", "cc3m", "--shards", str(tmp_path / "x.tar"), "--extractors", "tiny",
                 "--out", str(tmp_path)],
        "export": ["--out", str(tmp_path / "w.safetensors")],
        "generate": ["--prompt", "hi", "--out", str(tmp_path / "g")],
    }
    for command, rest in commands.items():
        for ckpt, says in ((missing, "nowhere.ckpt"), (str(junk), "not a PyTorch checkpoint")):
            assert main([command, "--ckpt", ckpt, *rest]) == 2, (command, ckpt)
            err = capsys.readouterr().err
            assert says in err and "Traceback" not in err, (command, err)
