"""The one LightningModule: weighs and logs MiniGPT5's losses, owns optimization and checkpoints."""

from __future__ import annotations

import io
import math
import logging
import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule

from lit_models.checkpoint_files import load_checkpoint_file
from lit_models.export import saved_fingerprint, trainable_weights
from lit_models.optim import OptimConfig, configure_adamw
from minigpt5.adapters import resolve_lora_targets
from minigpt5.config import ConfigError, MiniGPT5Config, model_differences
from minigpt5.fingerprint import CHECKPOINT_KEY, check_frozen_parts, part_paths
from minigpt5.losses import IGNORE_INDEX
from minigpt5.model import MiniGPT5, target_count
from minigpt5.randomness import Generators

MAPPER_PREFIX = "model.mapper."
log = logging.getLogger(__name__)


# Model settings renamed since checkpoints were first written: old key path -> new key path.
RENAMED_SETTINGS = {("prompt",): ("template", "prompt")}


def rename_settings(config: Optional[dict[str, Any]]) -> bool:
    """Move each old-named setting of a checkpoint's ``config`` (a dict) to its new name; whether any moved."""
    moved = False
    for old, new in RENAMED_SETTINGS.items():
        parent = config
        for key in old[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or old[-1] not in parent:
            continue
        value = parent.pop(old[-1])
        target = config
        for key in new[:-1]:
            target = target.setdefault(key, {})
        target.setdefault(new[-1], value)
        moved = True
    return moved


class NonFiniteLossError(FloatingPointError):
    """A NaN or inf loss: training stops before anything is saved."""


class MiniGPT5Module(LightningModule):
    """Stage-agnostic training wrapper; the stage is decided by ``config`` (losses, adapter)."""

    def __init__(
        self,
        config: MiniGPT5Config = MiniGPT5Config(),
        optim: OptimConfig = OptimConfig(),
        init_from: Optional[str] = None,
    ) -> None:
        """``init_from``: a checkpoint (e.g. stage 1's) whose weights start this run."""
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.config = config
        self.optim = optim
        self.model = MiniGPT5(config)
        if init_from is not None:
            self.load_weights_from(init_from)
        self.base_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        # Checkpoints hold trainable weights only; the frozen ones come from the config.
        self.strict_loading = False

    # ---- steps ----

    def model_step(
        self, batch: dict[str, Any], generator: Generators = None, text_scale: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted total (text loss times ``text_scale`` if given) and the unscaled named losses."""
        out = self.model(batch, generator=generator)
        scaled = out if text_scale is None else replace(out, text=out.text * text_scale)
        return scaled.total(self.config.loss), out.named()

    def _log_losses(self, stage: str, total: torch.Tensor, losses: dict[str, torch.Tensor], batch_size: int) -> None:
        on_step = stage == "train"
        self.log(f"{stage}/loss", total, prog_bar=True, on_step=on_step, on_epoch=not on_step, batch_size=batch_size, sync_dist=not on_step)
        for name, value in losses.items():
            self.log(f"{stage}/{name}", value, on_step=on_step, on_epoch=not on_step, batch_size=batch_size, sync_dist=not on_step)

    def micro_step(self, batch_idx: int) -> int:
        """Index of this micro-batch in the run (optimizer step x accumulation + position)."""
        accumulate = self.trainer.accumulate_grad_batches
        return self.global_step * accumulate + batch_idx % accumulate

    def step_seed(self, batch_idx: int) -> int:
        """A seed fixed by (run seed, micro-batch, rank), for the global RNG (dropout)."""
        return (self.base_seed * 1_000_003 + self.micro_step(batch_idx) * self.trainer.world_size + self.global_rank) % 2**63

    def sample_generators(self, batch_idx: int, offset: int, count: int) -> list[torch.Generator]:
        """One generator per target image, seeded by (run seed, micro-batch, the image's
        index in the global batch): noise, timesteps, guidance dropout and VAE sampling of an
        image do not depend on how the global batch is split over ranks."""
        base = (self.base_seed * 1_000_003 + self.micro_step(batch_idx)) * 1_000_033
        return [torch.Generator(device=self.device).manual_seed((base + offset + i) % 2**63) for i in range(count)]

    def rank_shares(self, batch: dict[str, Any]) -> tuple[int, Optional[torch.Tensor]]:
        """(this rank's first target-image index in the global batch, its share of the text
        tokens times the world size). DDP averages gradients over ranks, so a rank's text loss
        (a mean over its tokens) times that share makes the sum a mean over all tokens."""
        images = target_count(batch)
        tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
        if self.trainer.world_size == 1:
            return 0, None
        counts = self.all_gather(torch.stack([torch.tensor(images, device=self.device), tokens]))  # (world, 2)
        offset = int(counts[: self.global_rank, 0].sum())
        return offset, tokens * self.trainer.world_size / counts[:, 1].sum().clamp(min=1)

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        torch.manual_seed(self.step_seed(batch_idx))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        offset, text_share = self.rank_shares(batch)
        generators = self.sample_generators(batch_idx, offset, target_count(batch))
        total, losses = self.model_step(batch, generators, text_share)
        self.stop_if_not_finite(total, losses, batch_idx)
        self._log_losses("train", total, losses, batch["input_ids"].shape[0])
        return total

    def stop_if_not_finite(self, total: torch.Tensor, losses: dict[str, torch.Tensor], batch_idx: int) -> None:
        """NonFiniteLossError before the backward pass when the loss is NaN or inf on any rank.
        The ranks compare their losses (one scalar gathered per step), so all of them stop at
        the same step with the same message, and none waits in a collective for a rank that left."""
        world = self.trainer.world_size
        totals = self.all_gather(total.detach()).flatten().tolist() if world > 1 else [total.item()]
        bad = [rank for rank, value in enumerate(totals) if not math.isfinite(value)]
        if not bad:
            return
        where = f"global step {self.global_step} (batch {batch_idx})"
        if world == 1:
            detail = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            raise NonFiniteLossError(f"non-finite training loss at {where}: total={totals[0]}, {detail}. Training "
                                     "stopped; no checkpoint was written for this step.")
        if self.global_rank in bad:
            log.error("rank %d: non-finite loss terms %s", self.global_rank,
                      ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items()))
        raise NonFiniteLossError(
            f"non-finite training loss at {where} on rank(s) {bad} of {world} (total per rank: {totals}). Training "
            "stopped on every rank; no checkpoint was written for this step."
        )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # Fixed noise per batch index so validation losses are comparable across epochs.
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        total, losses = self.model_step(batch, generator=generator)
        self._log_losses("val", total, losses, batch["input_ids"].shape[0])

    # ---- optimization ----

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_adamw(self, self.optim, (MAPPER_PREFIX,))

    # ---- checkpoints: trainable weights only ----

    def load_weights_from(self, path: str) -> list[str]:
        """Load every tensor of checkpoint ``path`` (its trainable weights) into this module.

        ``path``: a Lightning checkpoint, a DeepSpeed checkpoint folder or a
        ``minigpt5 export`` safetensors file.

        Stage 2 starts from stage 1 this way: the voken rows and mapper come from the
        checkpoint; what stage 1 did not have (adapter, input projection) keeps its
        initialisation and is returned. A key this model lacks or a shape mismatch is an error.
        """
        try:
            state = trainable_weights(path)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"init_from checkpoint '{path}' does not exist") from err
        own = self.state_dict()
        unknown = sorted(k for k in state if k not in own)
        mismatched = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
        if unknown or mismatched:
            raise KeyError(f"checkpoint '{path}' does not fit this model: unknown keys {unknown[:5]}, "
                           f"shape mismatches {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in mismatched[:5]]}")
        self.check_frozen_parts(saved_fingerprint(path), f"checkpoint '{path}'")
        self.load_state_dict(state, strict=False)
        fresh = sorted(self.trainable_keys() - set(state))
        log.info("initialised %d tensors from %s; %d trainable tensors start fresh: %s",
                 len(state), path, len(fresh), fresh[:8])
        return fresh

    def trainable_keys(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def check_frozen_parts(self, saved: dict[str, torch.Tensor], where: str) -> None:
        """Refuse a checkpoint trained against other frozen weights than this model's."""
        check_frozen_parts(saved, self.model.frozen_fingerprint, where, part_paths(self.config))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keys = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}
        checkpoint[CHECKPOINT_KEY] = self.model.frozen_fingerprint

    @classmethod
    def from_checkpoint(cls, path: str, map_location: Any = "cpu", allow_pickle: bool = False) -> "MiniGPT5Module":
        """Rebuild the module from a checkpoint's config and load its trainable weights.

        The file is read as tensors and plain values only (:mod:`lit_models.checkpoint_files`),
        unless ``allow_pickle`` (a file the user trusts). A config written before a setting
        was renamed is read under the new name
        (:data:`RENAMED_SETTINGS`). Lightning warns about every frozen key absent from the
        checkpoint; that is the design here, and :meth:`on_load_checkpoint` checks the
        trainable keys exactly.
        """
        source: Any = path
        if Path(path).is_file():
            checkpoint = load_checkpoint_file(path, allow_pickle=allow_pickle, mmap=True)
            if rename_settings(checkpoint.get("hyper_parameters", {}).get("config")):
                source = io.BytesIO()
                torch.save(checkpoint, source)
                source.seek(0)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Found keys that are in the model state dict but not in the checkpoint")
            return cls.load_from_checkpoint(source, map_location=map_location, weights_only=not allow_pickle)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters", {}).get("config")
        resolve = resolve_lora_targets(self.model.llm)  # null targets and the family's names agree
        changed = model_differences(saved, self.config, resolve) if saved is not None else []
        if changed:
            raise ConfigError(
                "the checkpoint was trained with another model than this config builds, so its weights mean "
                f"nothing here: {'; '.join(changed)}. Resume with the checkpoint's settings (its hparams.yaml), "
                "or start a new run from it with --model.init_from"
            )
        self.check_frozen_parts(checkpoint.get(CHECKPOINT_KEY, {}), "the checkpoint being loaded")
        if "state_dict" not in checkpoint:
            return  # a DeepSpeed checkpoint: the engine restored the weights itself
        saved, expected = set(checkpoint["state_dict"]), self.trainable_keys()
        if saved != expected:
            missing, extra = sorted(expected - saved), sorted(saved - expected)
            raise KeyError(
                f"checkpoint does not match this model's trainable weights: missing {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}, unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}"
            )
