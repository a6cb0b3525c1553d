"""The LightningCLI every command that reads ``fit``-style ``-c`` files and flags builds.

``minigpt5 fit`` and the ``pretrain-*`` commands run it (:mod:`lit_models.cli` dispatches);
``plan`` and ``import-official`` only parse with it (:func:`fit_config`). It imports none of
the commands, so each of them can import it.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import Any, Optional

from jsonargparse import Namespace
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from lit_models.module import MiniGPT5Module
from lit_models.requeue import RequeueAtStepBoundary
from minigpt5.progress import NO_PROGRESS, NO_PROGRESS_HELP, shows_progress
from minigpt5.config import dataclass_from  # noqa: F401  (plan and import-official read configs with it)

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


def progress_bar_setting(configured: Optional[bool], enabled: bool) -> bool:
    """``trainer.enable_progress_bar`` under the rule of every long command (:mod:`minigpt5.progress`):
    off under ``--no-progress``; when the configs leave it unset, on only when stdout, where
    Lightning's bar writes, is a terminal (a log file gets no bar lines)."""
    if not enabled:
        return False
    return shows_progress(stream=sys.stdout) if configured is None else configured


class MiniGPT5CLI(LightningCLI):
    """LightningCLI with the model config shared with the data module (tokenizers, sizes) and
    ``--no-progress``, as every long command has."""

    def add_default_arguments_to_parser(self, parser) -> None:
        super().add_default_arguments_to_parser(parser)
        parser.add_argument(NO_PROGRESS, action="store_true", help=NO_PROGRESS_HELP)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.config", "data.init_args.model_config")

    def before_instantiate_classes(self) -> None:
        # An empty TensorBoard save_dir means the run directory, so one flag
        # (--trainer.default_root_dir) moves checkpoints, events and samples together.
        config = self.config[self.subcommand] if self.subcommand else self.config
        config.trainer.plugins = with_atomic_checkpoints(config.trainer.plugins)
        config.trainer.enable_progress_bar = progress_bar_setting(config.trainer.enable_progress_bar,
                                                                  not config.no_progress)
        logger = config.trainer.logger
        if getattr(logger, "class_path", "").endswith("TensorBoardLogger") and not logger.init_args.save_dir:
            logger.init_args.save_dir = config.trainer.default_root_dir or "."


class LanguageModelCLI(MiniGPT5CLI):
    """``pretrain-lm``: the data module builds the word tokenizer from its train shards and
    hands it to the model at instantiation; documents are cut to the model's context."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.config.max_positions", "data.init_args.max_length")
        parser.link_arguments("data", "model.tokenizer", compute_fn=lambda data: data.tokenizer, apply_on="instantiate")


class ParseOnlyCLI(MiniGPT5CLI):
    """The fit CLI's parser and configs, without instantiating the model, data or trainer."""

    def instantiate_classes(self) -> None:
        pass


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


def fit_config(args: list[str]) -> Namespace:
    """The configuration ``fit`` would run with ``args`` (``-c`` files and flags), nothing built."""
    return run_lightning(MiniGPT5Module, args, run=False, cli_class=ParseOnlyCLI).config

