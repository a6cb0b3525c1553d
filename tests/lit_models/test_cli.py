"""The ``minigpt5`` dispatcher: one table of commands, each run from the module it names."""

from __future__ import annotations

import importlib

from lightning.pytorch import LightningModule

from lit_models import lightning_cli
from lit_models.cli import COMMANDS, main


def test_every_command_names_what_runs_it():
    for name, command in COMMANDS.items():
        module = importlib.import_module(command.module)
        if command.lightning:
            assert issubclass(getattr(module, command.lightning), LightningModule), name
            assert issubclass(getattr(lightning_cli, command.cli), lightning_cli.MiniGPT5CLI), name
        else:
            assert callable(module.main), name


def test_help_lists_every_command_and_an_unknown_one_is_an_error(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, command in COMMANDS.items():
        assert name in out and command.module in out
    assert main(["frobnicate"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "minigpt5: error: unknown command 'frobnicate'"
    assert main([]) == 2 and "usage: minigpt5 COMMAND" in capsys.readouterr().err
