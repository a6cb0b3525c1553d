"""Classifier-free-guided sample grids for fixed captions, logged to TensorBoard and saved as PNG."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torchvision.utils import make_grid

from minigpt5.images import to_pil_images

log = logging.getLogger(__name__)


class SampleGrid(Callback):
    """Every ``every_n_steps`` optimizer steps (and at the end of fit), generate one image
    per caption per seed with guided sampling and log the grid (rows = seeds)."""

    def __init__(
        self,
        captions: list[str],
        every_n_steps: int = 500,
        num_seeds: int = 2,
        guidance_scale: Optional[float] = None,
        num_inference_steps: Optional[int] = None,
        seed: int = 0,
        dirpath: Optional[str] = None,
    ) -> None:
        if not captions:
            raise ValueError("SampleGrid needs at least one caption")
        if every_n_steps < 1:
            raise ValueError(f"SampleGrid.every_n_steps must be >= 1, got {every_n_steps}")
        self.captions = list(captions)
        self.every_n_steps = every_n_steps
        self.num_seeds = num_seeds
        self.guidance_scale = guidance_scale
        self.num_inference_steps = num_inference_steps
        self.seed = seed
        self.dirpath = dirpath
        self.last_path: Optional[Path] = None
        self._samples_dir: Optional[Path] = None  # resolved in setup, on every rank
        self._last_step = -1  # the global step of the last grid, so no step logs twice

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # trainer.log_dir is a broadcast under DDP: every rank must ask, not only rank 0 when it draws.
        root = self.dirpath or trainer.log_dir or trainer.default_root_dir
        self._samples_dir = Path(root) / "samples"

    @torch.no_grad()
    def grid(self, pl_module: LightningModule) -> torch.Tensor:
        """(3, H', W') grid in [0, 1]: one row per seed, one column per caption."""
        model = pl_module.model
        was_training = model.training
        model.eval()
        rows = []
        for i in range(self.num_seeds):
            generator = torch.Generator(device=pl_module.device).manual_seed(self.seed + i)
            rows.append(model.generate_images(
                self.captions, scale=self.guidance_scale,
                num_inference_steps=self.num_inference_steps, generator=generator,
            ))
        model.train(was_training)
        images = torch.cat(rows)  # (seeds * captions, 3, H, W)
        return make_grid((images.float().cpu() + 1) / 2, nrow=len(self.captions), padding=1, pad_value=1.0)

    def log_grid(self, trainer: Trainer, pl_module: LightningModule) -> None:
        grid = self.grid(pl_module)
        step = trainer.global_step
        logger = trainer.logger
        if logger is not None and hasattr(logger.experiment, "add_image"):
            logger.experiment.add_image("samples/cfg", grid, step)
        if self._samples_dir is None:
            raise RuntimeError("SampleGrid.log_grid needs the trainer's setup first (it resolves the samples folder)")
        path = self._samples_dir / f"step_{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        to_pil_images(grid.unsqueeze(0) * 2 - 1)[0].save(path)
        self.last_path = path
        log.info("sample grid for %d captions saved to %s", len(self.captions), path)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and trainer.is_global_zero and self._last_step != step:
            self._last_step = step
            self.log_grid(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero and self._last_step != trainer.global_step:
            self._last_step = trainer.global_step
            self.log_grid(trainer, pl_module)
