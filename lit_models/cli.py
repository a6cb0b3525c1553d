"""The ``minigpt5`` command: :data:`COMMANDS` lists every subcommand and the module that runs it
(``minigpt5 --help`` prints the table).

Commands that read ``fit``-style configs end a user error (a bad config value, a missing or
unfit file) with one line and exit code 2; ``--debug`` anywhere on the line shows the
traceback instead.

Lives outside ``minigpt5/`` so the model package stays free of Lightning.
"""

from __future__ import annotations

import importlib
import sys
from argparse import ArgumentError
from dataclasses import dataclass
from typing import Optional

from lightning.pytorch.cli import LightningCLI

from data_modules.stream import DataFaultError
from lit_models import lightning_cli
from lit_models.checkpoint_files import NotACheckpointError, UnsafeCheckpointError
from lit_models.checkpoint_io import CheckpointWriteError
from minigpt5.builders import WeightsNotFoundError
from minigpt5.config import ConfigError
from minigpt5.fingerprint import FrozenPartsChanged


@dataclass(frozen=True)
class Command:
    """One ``minigpt5`` subcommand: the module that holds it and what it does.

    With ``lightning`` (a LightningModule class of ``module``) LightningCLI runs on that class;
    otherwise ``module.main(argv)`` runs, given the words after the command's name.
    """

    module: str  # imported only when the command runs
    usage: str  # how it is called, after ``minigpt5``
    summary: str  # what it does
    lightning: str = ""
    cli: str = "MiniGPT5CLI"  # with ``lightning``: the LightningCLI class of lit_models.lightning_cli
    fit_config: bool = False  # reads fit-style configs (as every Lightning command does): user errors in one line

    @property
    def one_line_errors(self) -> bool:
        return bool(self.lightning) or self.fit_config


_TRAIN = Command("lit_models.module", "fit|validate|test|predict -c configs/uas.yaml ...", "MiniGPT-5, stage 1 or 2",
                 "MiniGPT5Module")

COMMANDS: dict[str, Command] = {
    **{name: _TRAIN for name in LightningCLI.subcommands()},  # fit, validate, test, predict
    "pretrain-sd": Command("lit_models.text_to_image", "pretrain-sd fit -c configs/tiny_sd.yaml",
                           "the tiny SD stand-in (demo)", "TextToImageModule"),
    "pretrain-lm": Command("lit_models.language_model", "pretrain-lm fit -c configs/tiny_lm.yaml",
                           "the tiny LLM stand-in and its tokenizer (demo)", "LanguageModelModule",
                           cli="LanguageModelCLI"),
    "pretrain-vision": Command("lit_models.vision_alignment", "pretrain-vision fit -c configs/tiny_vision.yaml",
                               "the tiny image reader stand-in: tower + projection (demo)", "VisionAlignmentModule"),
    "data": Command("data_modules.convert.cli", "data cc3m|vist|mmdialog|mmc4|jsonl|synthetic|encode-latents ...",
                    "shard converters"),
    "generate": Command("lit_models.generate_cli", 'generate --ckpt last.ckpt --prompt "..." --out DIR',
                        "an interleaved story (HTML, PNGs, JSON)"),
    "chat": Command("lit_models.chat_cli", "chat --ckpt last.ckpt [--share]",
                    "an interleaved chat in the browser (Gradio, the chat extra)"),
    "eval": Command("lit_models.eval_cli", "eval --ckpt last.ckpt --protocol cc3m|vist|mmdialog --shards ... --out DIR",
                    "the paper's protocols and systems, scored"),
    "plan": Command("lit_models.plan", "plan [--inference] -c configs/uas.yaml ... --trainer.devices=8",
                    "memory per GPU under each strategy, or of generation under each loading choice", fit_config=True),
    "export": Command("lit_models.export_cli", "export --ckpt last.ckpt --out trainable.safetensors [--format pretrained]",
                      "consolidated trainable weights, or a model folder for from_pretrained"),
    "import-official": Command("lit_models.import_official",
                               "import-official --ckpt stage2_vist.ckpt --stage1 stage1_cc3m.ckpt "
                               "--minigpt4 prerained_minigpt4_7b.pth --out official.safetensors",
                               "the authors' checkpoints as this project's weights"),
    "reproduce": Command("lit_models.reproduce", "reproduce --assets outputs/demo --out DIR",
                         "the paper's questions on the synthetic world"),
}

# Errors that are the user's (a config value, a missing or unfit file), not a bug: one line and
# exit code 2 from the commands that read fit-style configs; ``--debug`` shows the traceback instead.
USER_ERRORS = (ConfigError, WeightsNotFoundError, FileNotFoundError, FrozenPartsChanged, NotACheckpointError,
               UnsafeCheckpointError, DataFaultError, CheckpointWriteError)


def usage() -> str:
    """Every command, once (fit, validate, test and predict share a line), with its module."""
    lines = ["usage: minigpt5 COMMAND ...  (`minigpt5 COMMAND --help` lists its options)", ""]
    for command in dict.fromkeys(COMMANDS.values()):
        lines += [f"  minigpt5 {command.usage}", f"      {command.summary} ({command.module})"]
    return "\n".join(lines)


def run(name: str, command: Command, argv: list[str]) -> int:
    """Run ``command``; ``argv`` starts with its name."""
    module = importlib.import_module(command.module)
    if not command.lightning:
        return module.main(argv[1:])
    # MiniGPT5Module's commands are LightningCLI's subcommands; the others take one after their name.
    args = argv if name in LightningCLI.subcommands() else argv[1:]
    lightning_cli.run_lightning(getattr(module, command.lightning), args,
                                cli_class=getattr(lightning_cli, command.cli))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name = argv[0]
    if name.startswith("-"):  # top-level LightningCLI flags (e.g. -c before the subcommand)
        name = "fit"
    elif name not in COMMANDS:
        print(f"{usage()}\n\nminigpt5: error: unknown command {name!r}", file=sys.stderr)
        return 2
    command = COMMANDS[name]
    if not command.one_line_errors:
        return run(name, command, argv)
    try:
        return run(name, command, argv)
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"minigpt5 {argv[0]}: error: {err}", file=sys.stderr)
        return 2
    except ArgumentError as err:  # a bad flag or config key/value, as jsonargparse words it
        if debug:
            raise
        words = " ".join(a for a in argv[:2] if not a.startswith("-"))
        print(f"minigpt5 {words}: error: {err} (`minigpt5 {words} --help` lists the options)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
