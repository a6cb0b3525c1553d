"""The ``minigpt5`` command.

  minigpt5 fit|validate|test|predict -c configs/uas.yaml ...   LightningCLI on MiniGPT5Module
  minigpt5 pretrain-sd fit -c configs/tiny_sd.yaml            the tiny SD stand-in (demo)
  minigpt5 pretrain-lm fit -c configs/tiny_lm.yaml            the tiny LLM stand-in and its tokenizer (demo)
  minigpt5 pretrain-vision fit -c configs/tiny_vision.yaml    the tiny image reader stand-in: tower + projection (demo)
  minigpt5 data cc3m|synthetic ...                            shard converters
  minigpt5 generate --ckpt last.ckpt --prompt "..." --out DIR interleaved story (HTML, PNGs, JSON)
  minigpt5 plan -c configs/uas.yaml ... --trainer.devices=8    memory per GPU under each strategy
  minigpt5 export --ckpt last.ckpt --out trainable.safetensors  consolidated trainable weights
  minigpt5 import-official --ckpt stage2_vist.ckpt --stage1 stage1_cc3m.ckpt --minigpt4 prerained_minigpt4_7b.pth \
      --out official.safetensors                               the authors' checkpoints as this project's weights
  minigpt5 reproduce --assets outputs/demo --out DIR          the paper's questions on the synthetic world

Lightning subcommands end a user error (a bad config value, a missing or unfit file) with one
line and exit code 2; ``--debug`` anywhere on the line shows the traceback instead.

Lives outside ``minigpt5/`` so the model package stays free of Lightning.
"""

from __future__ import annotations

import importlib
import sys
from argparse import ArgumentError
import warnings
from typing import Any, Optional

from jsonargparse import Namespace
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from data_modules.stream import DataFaultError
from lit_models.language_model import LanguageModelModule
from lit_models.module import MiniGPT5Module
from lit_models.requeue import RequeueAtStepBoundary
from lit_models.text_to_image import TextToImageModule
from lit_models.vision_alignment import VisionAlignmentModule
from lit_models.checkpoint_files import NotACheckpointError, UnsafeCheckpointError
from lit_models.checkpoint_io import CheckpointWriteError
from minigpt5.builders import WeightsNotFoundError
from minigpt5.config import ConfigError
from minigpt5.fingerprint import FrozenPartsChanged


# Warnings that are expected by design here, each silenced with its reason:
_EXPECTED_WARNINGS = (
    # frozen modules are kept in eval mode on purpose (no dropout in frozen parts)
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # the training stream's length is exact: every worker yields the same number of batches
    r"Your `IterableDataset` has `__len__` defined",
    # no val shards configured: no validation, as intended
    r"Total length of `\w+` across ranks is zero",
    # the data module's state (saved in every checkpoint) holds the stream position, so
    # mid-epoch resumption is exact although Lightning cannot see that from the loader
    r"You're resuming from a checkpoint that ended before the epoch ended",
    # subcommands (plan, pretrain-sd, pretrain-lm, pretrain-vision) hand their own argv on: sys.argv holds the same words
    r"LightningCLI's args parameter is intended to run from within Python",
)


ATOMIC_IO = "lit_models.checkpoint_io.AtomicCheckpointIO"


def _is_checkpoint_io(plugin: Any) -> bool:
    """Whether a parsed ``trainer.plugins`` entry (class_path namespace or instance) is a CheckpointIO."""
    if isinstance(plugin, CheckpointIO):
        return True
    if not isinstance(plugin, Namespace) or "class_path" not in plugin:
        return False
    module, _, name = plugin.class_path.rpartition(".")
    return issubclass(getattr(importlib.import_module(module), name), CheckpointIO)


def with_atomic_checkpoints(plugins: Any) -> list[Any]:
    """``trainer.plugins`` plus :class:`~lit_models.checkpoint_io.AtomicCheckpointIO` unless a
    CheckpointIO is already configured (a config may name its own)."""
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
    if not any(_is_checkpoint_io(p) for p in plugins):
        plugins.append(Namespace(class_path=ATOMIC_IO, init_args=Namespace()))
    return plugins


def silence_expected_warnings() -> None:
    for pattern in _EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


class MiniGPT5CLI(LightningCLI):
    """LightningCLI with the model config shared with the data module (tokenizers, sizes)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.config", "data.init_args.model_config")

    def before_instantiate_classes(self) -> None:
        # An empty TensorBoard save_dir means the run directory, so one flag
        # (--trainer.default_root_dir) moves checkpoints, events and samples together.
        config = self.config[self.subcommand] if self.subcommand else self.config
        config.trainer.plugins = with_atomic_checkpoints(config.trainer.plugins)
        logger = config.trainer.logger
        if getattr(logger, "class_path", "").endswith("TensorBoardLogger") and not logger.init_args.save_dir:
            logger.init_args.save_dir = config.trainer.default_root_dir or "."


class LanguageModelCLI(MiniGPT5CLI):
    """``pretrain-lm``: the data module builds the word tokenizer from its train shards and
    hands it to the model at instantiation; documents are cut to the model's context."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.config.max_positions", "data.init_args.max_length")
        parser.link_arguments("data", "model.tokenizer", compute_fn=lambda data: data.tokenizer, apply_on="instantiate")


def run_lightning(
    model_class: type[LightningModule],
    args: Optional[list[str]] = None,
    run: bool = True,
    cli_class: type[MiniGPT5CLI] = MiniGPT5CLI,
) -> MiniGPT5CLI:
    """Parse ``args`` (a subcommand first when ``run``) and run it; ``run=False`` only builds."""
    silence_expected_warnings()
    return cli_class(
        model_class,
        run=run,
        subclass_mode_data=True,
        # Parse errors raise (ArgumentError) instead of printing the whole usage: ``main`` prints one line.
        parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False},
        save_config_kwargs={"overwrite": True},
        # Always on; a no-op unless SLURMEnvironment(auto_requeue=True) installed a handler.
        trainer_defaults={"callbacks": [RequeueAtStepBoundary()]},
        args=args,
    )


# Errors that are the user's (a config value, a missing or unfit file), not a bug: one line and
# exit code 2 from the Lightning subcommands; ``--debug`` shows the traceback instead.
USER_ERRORS = (ConfigError, WeightsNotFoundError, FileNotFoundError, FrozenPartsChanged, NotACheckpointError,
               UnsafeCheckpointError, DataFaultError, CheckpointWriteError)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if argv[:1] == ["data"]:
        from data_modules.convert.cli import main as data_main

        return data_main(argv[1:])
    if argv[:1] == ["eval"]:
        from lit_models.eval_cli import main as eval_main

        return eval_main(argv[1:])
    if argv[:1] == ["export"]:
        from lit_models.export import main as export_main

        return export_main(argv[1:])
    if argv[:1] == ["import-official"]:
        from lit_models.import_official import main as import_main

        return import_main(argv[1:])
    if argv[:1] == ["reproduce"]:
        from lit_models.reproduce import main as reproduce_main

        return reproduce_main(argv[1:])
    if argv[:1] == ["generate"]:
        from lit_models.generate_cli import main as generate_main

        return generate_main(argv[1:])
    try:
        if argv[:1] == ["plan"]:
            from lit_models.plan import main as plan_main

            return plan_main(argv[1:])
        if argv[:1] == ["pretrain-sd"]:
            run_lightning(TextToImageModule, argv[1:])
        elif argv[:1] == ["pretrain-lm"]:
            run_lightning(LanguageModelModule, argv[1:], cli_class=LanguageModelCLI)
        elif argv[:1] == ["pretrain-vision"]:
            run_lightning(VisionAlignmentModule, argv[1:])
        else:
            run_lightning(MiniGPT5Module, argv)
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"minigpt5 {argv[0] if argv else ''}: error: {err}", file=sys.stderr)
        return 2
    except ArgumentError as err:  # a bad flag or config key/value, as jsonargparse words it
        if debug:
            raise
        words = " ".join(a for a in argv[:2] if not a.startswith("-"))
        print(f"minigpt5 {words}: error: {err} (`minigpt5 {words} --help` lists the options)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
