"""Every long command shows a progress bar where a person watches and takes ``--no-progress``;
the commands' own output is the same with or without the bar."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import pytest
from terminal import Terminal

from data_modules.convert.cli import build_parser as data_parser
from data_modules.synthetic import write_synthetic
from lit_models.cli import COMMANDS, main
from lit_models.lightning_cli import fit_config, progress_bar_setting

ROOT = Path(__file__).resolve().parents[2]
# No bar: done in seconds, or (chat) a server whose page shows each reply's progress itself.
NO_BAR = {"plan", "export", "import-official", "chat"}


def help_text(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0, argv
    return capsys.readouterr().out


def data_commands() -> list[str]:
    (commands,) = [a for a in data_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return list(commands.choices)


def test_every_long_command_takes_no_progress(capsys):
    long_commands = [name for name in COMMANDS if name not in NO_BAR]
    assert {"fit", "pretrain-sd", "pretrain-lm", "pretrain-vision", "data", "generate", "eval", "reproduce"} <= set(
        long_commands)
    for name in long_commands:
        if COMMANDS[name].lightning:  # fit ... and pretrain-* fit: LightningCLI's subcommand parser
            argv = [name] if name in ("fit", "validate", "test", "predict") else [name, "fit"]
        elif name == "data":
            assert {"cc3m", "vist", "mmdialog", "synthetic", "encode-latents"} <= set(data_commands())
            for sub in data_commands():
                assert "--no-progress" in help_text(["data", sub], capsys), sub
            continue
        else:
            argv = [name]
        assert "--no-progress" in help_text(argv, capsys), name


def synthetic(out: Path, *flags: str) -> list[str]:
    return ["data", "synthetic", "--out", str(out), "--num", "6", "--val-num", "2", "--size", "16", *flags]


def test_data_synthetic_bar_on_a_terminal_only(tmp_path, capsys, monkeypatch):
    out = tmp_path / "shapes"
    assert main(synthetic(out)) == 0  # stderr captured: not a terminal
    quiet = capsys.readouterr()
    assert "synthetic pairs" not in quiet.err
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(synthetic(out)) == 0
    shown = terminal.getvalue()
    assert "synthetic pairs train" in shown and "6/6" in shown and "sample/s" in shown
    assert "synthetic pairs val" in shown and "2/2" in shown
    assert capsys.readouterr().out == quiet.out  # the summary is the same
    terminal.truncate(0)
    assert main(synthetic(out, "--no-progress")) == 0
    assert "synthetic" not in terminal.getvalue()
    assert capsys.readouterr().out == quiet.out


def test_generate_bar_counts_tokens_and_images(tmp_path, capsys, monkeypatch):
    argv = ["generate", "--tiny", "--prompt", "a red circle", "--out", str(tmp_path / "story"), "--max-new-tokens", "5",
            "--steps", "1", "--force-image", "--seed", "0", "--greedy"]
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(argv) == 0
    shown = terminal.getvalue()
    assert "generate" in shown and "/5" in shown and "token/s" in shown and "images=1" in shown
    printed = capsys.readouterr().out
    terminal.truncate(0)
    assert main([*argv, "--no-progress"]) == 0
    assert terminal.getvalue() == "" and capsys.readouterr().out == printed


def test_lightning_commands_map_the_rule_onto_the_trainer(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)  # where Lightning's bar writes
    assert progress_bar_setting(None, True) and not progress_bar_setting(None, False)
    assert not progress_bar_setting(True, False)  # --no-progress wins over the configs
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # a log file
    assert not progress_bar_setting(None, True) and progress_bar_setting(True, True)  # an explicit setting stays
    base = ["-c", str(ROOT / "configs/uas.yaml"), "-c", str(ROOT / "configs/model/tiny.yaml")]
    assert fit_config([*base, "--no-progress"]).trainer.enable_progress_bar is False
    forced = fit_config([*base, "--no-progress", "--trainer.enable_progress_bar=true"])
    assert forced.trainer.enable_progress_bar is False
    assert fit_config([*base, "--trainer.enable_progress_bar=true"]).trainer.enable_progress_bar is True
    assert fit_config(base).trainer.enable_progress_bar is False  # unset, and stdout is not a terminal


@pytest.mark.slow
def test_a_pretrain_fit_shows_lightnings_bar_on_a_terminal_and_none_under_no_progress(tmp_path, monkeypatch):
    shards = write_synthetic(tmp_path / "data", num=8, val_num=0, size=16, seed=0)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)

    def fit(*flags: str) -> str:
        terminal.truncate(0)
        terminal.seek(0)
        assert main(["pretrain-sd", "fit", "-c", str(ROOT / "configs/tiny_sd.yaml"), "--trainer.max_steps=2",
                     f"--trainer.default_root_dir={tmp_path / 'run'}", f"--model.export_dir={tmp_path / 'export'}",
                     f"--data.train_shards={shards.train}", "--data.batch_size=4", "--data.num_workers=0",
                     "--data.samples_per_epoch=8", *flags]) == 0
        return terminal.getvalue()

    assert "Epoch 0" in fit() and "it/s" in terminal.getvalue()
    assert "Epoch 0" not in fit("--no-progress")
