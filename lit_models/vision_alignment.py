"""Pretrain the tiny stand-ins for the frozen image reader: a BLIP-2-style tower and MiniGPT-4's projection.

The paper reads context images with BLIP-2's pretrained EVA-ViT and Q-Former, through the
projection MiniGPT-4 aligned to Vicuna, all three frozen. Nothing can be downloaded here,
and a random tower with a random projection tells the LLM almost nothing about a picture
(a linear probe of the tiny random tower's tokens names the world's shape 48% of the time,
chance 33%). So ``minigpt5 pretrain-vision`` trains the tiny tower and the projection
together, under the frozen LLM stand-in, to make the LLM write an image's caption
(:mod:`data_modules.image_reading`) -- BLIP-2's and MiniGPT-4's training collapsed into one
captioning objective -- and exports the tower in Hugging Face layout (``vision.path``) and
the projection as MiniGPT-4 saves it (``vision.projection_path``, frozen with
``vision.train_projection=false``, as the paper keeps it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from lightning.pytorch import LightningModule
from torchmetrics.aggregation import MeanMetric

from lit_models.optim import OptimConfig, configure_adamw
from minigpt5.config import ConfigError, MiniGPT5Config, VisionConfig
from minigpt5.losses import IGNORE_INDEX, text_loss
from minigpt5.model import MiniGPT5
from minigpt5.projection import save_minigpt4_projection

TOWER_DIR = "tower"
PROJECTION_FILE = "projection.pth"


class VisionAlignmentModule(LightningModule):
    """Trains the vision tower (unless ``train_tower`` is off) and the input projection of
    ``config``'s model on the caption text loss; everything else stays frozen and unused.

    Logs ``train/text`` per step and ``val/text`` (mean over held-out caption tokens).
    """

    def __init__(
        self,
        config: MiniGPT5Config = MiniGPT5Config(vision=VisionConfig(kind="blip2")),
        optim: OptimConfig = OptimConfig(lr=1e-3, warmup_steps=50, decay="linear", mapper_lr_scale=1.0),
        train_tower: bool = True,
        export_dir: Optional[str] = None,
    ) -> None:
        """``export_dir``: where :meth:`export` writes ``tower/`` and ``projection.pth`` at the end of training."""
        super().__init__()
        if config.vision.kind == "none":
            raise ConfigError("pretrain-vision trains an image reader: set model.config.vision.kind to blip2 or clip")
        self.save_hyperparameters(logger=False)
        self.config, self.optim, self.export_dir = config, optim, export_dir
        self.model = MiniGPT5(config)
        self.model.requires_grad_(False)
        assert self.model.vision is not None and self.model.input_projection is not None
        self.model.vision.requires_grad_(train_tower)
        self.model.input_projection.requires_grad_(True)
        self.val_nll = MeanMetric()  # token-weighted, synced across ranks

    def model_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean caption-token loss of the batch, and how many tokens it was averaged over."""
        logits, _ = self.model.llm_forward(batch["input_ids"], batch["attention_mask"], batch["input_pixels"])
        return text_loss(logits, batch["labels"]), (batch["labels"][:, 1:] != IGNORE_INDEX).sum()

    @torch.no_grad()
    def caption_losses(self, batches: Iterable[dict[str, Any]]) -> tuple[float, float]:
        """Mean caption-token loss over ``batches`` after each caption's own picture, and after
        another's (each batch's pictures rolled by one): an image-blind reader scores both alike."""
        own = other = 0.0
        tokens = 0
        for batch in batches:
            loss, count = self.model_step(batch)
            rolled, _ = self.model_step(dict(batch, input_pixels=batch["input_pixels"].roll(1, 0)))
            own, other, tokens = own + float(loss) * int(count), other + float(rolled) * int(count), tokens + int(count)
        return own / tokens, other / tokens

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _ = self.model_step(batch)
        self.log("train/text", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, tokens = self.model_step(batch)
        self.val_nll.update(loss, weight=tokens)

    def on_validation_epoch_end(self) -> None:
        self.log("val/text", self.val_nll.compute(), prog_bar=True)
        self.val_nll.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_adamw(self, self.optim)

    def export(self, directory: str) -> None:
        """``directory/tower`` (``vision.path``) and ``directory/projection.pth`` (``vision.projection_path``)."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        assert self.model.vision is not None and self.model.input_projection is not None
        self.model.vision.save_pretrained(str(root / TOWER_DIR))
        save_minigpt4_projection(self.model.input_projection, str(root / PROJECTION_FILE))

    def on_train_end(self) -> None:
        if self.export_dir and self.trainer.is_global_zero:
            self.export(self.export_dir)
