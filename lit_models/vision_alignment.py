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

The caption loss alone teaches the tower what is cheap to say: on the world's pictures the
LM then names the colour 200/200 and the shape at chance (76/200, chance 67), although the
same tower trained to classify shape reaches 94% in 600 steps. BLIP-2 learns its image
representation from text before it meets an LLM; ``words_weight`` stands in for that stage:
a linear head on the tower's mean token predicts which vocabulary words the caption holds
(one binary cross-entropy per word), and only the tower and this head (never exported) learn
from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torchmetrics.aggregation import MeanMetric

from lit_models.optim import OptimConfig, configure_adamw
from minigpt5.config import ConfigError, MiniGPT5Config, VisionConfig
from minigpt5.losses import IGNORE_INDEX, text_loss
from minigpt5.model import MiniGPT5
from minigpt5.projection import save_minigpt4_projection

TOWER_DIR = "tower"
PROJECTION_FILE = "projection.pth"


def caption_words(labels: torch.Tensor, vocabulary: int) -> torch.Tensor:
    """Target token ids (B, T; IGNORE_INDEX elsewhere) -> (B, vocabulary) with 1 where a row's targets hold that id."""
    present = torch.zeros(labels.shape[0], vocabulary, device=labels.device)
    present.scatter_add_(1, labels.clamp(min=0), (labels != IGNORE_INDEX).float())
    return present.clamp(max=1)  # a word twice in a caption is still one word


class VisionAlignmentModule(LightningModule):
    """Trains the vision tower (unless ``train_tower`` is off) and the input projection of
    ``config``'s model on the caption text loss, plus (``words_weight`` > 0) the tower on
    the caption-words loss; everything else stays frozen and unused.

    Logs ``train/text`` and ``train/words`` per step and ``val/text`` (mean over held-out caption tokens).
    """

    def __init__(
        self,
        config: MiniGPT5Config = MiniGPT5Config(vision=VisionConfig(kind="blip2")),
        optim: OptimConfig = OptimConfig(lr=1e-3, warmup_steps=50, decay="linear", mapper_lr_scale=1.0),
        train_tower: bool = True,
        words_weight: float = 5.0,
        export_dir: Optional[str] = None,
    ) -> None:
        """``words_weight``: weight of the caption-words loss (0: the caption loss alone).
        ``export_dir``: where :meth:`export` writes ``tower/`` and ``projection.pth`` at the end of training."""
        super().__init__()
        if config.vision.kind == "none":
            raise ConfigError("pretrain-vision trains an image reader: set model.config.vision.kind to blip2 or clip")
        if words_weight < 0 or (words_weight > 0 and not train_tower):
            raise ConfigError(f"model.words_weight trains the tower: it must be 0 with train_tower=false, and >= 0; "
                              f"got {words_weight} with train_tower={train_tower}")
        self.save_hyperparameters(logger=False)
        self.config, self.optim, self.export_dir, self.words_weight = config, optim, export_dir, words_weight
        self.model = MiniGPT5(config)
        self.model.requires_grad_(False)
        assert self.model.vision is not None and self.model.input_projection is not None
        self.model.vision.requires_grad_(train_tower)
        self.model.input_projection.requires_grad_(True)
        self.word_head = torch.nn.Linear(self.model.vision.width, len(self.model.tokenizer)) if words_weight else None
        self.val_nll = MeanMetric()  # token-weighted, synced across ranks

    def model_step(
        self, batch: dict[str, Any], image_tokens: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean caption-token loss of the batch, and how many tokens it was averaged over
        (``image_tokens``: the tower's output for the batch's pictures, when already read)."""
        logits, _ = self.model.llm_forward(batch["input_ids"], batch["attention_mask"], batch["input_pixels"],
                                           image_tokens)
        return text_loss(logits, batch["labels"]), (batch["labels"][:, 1:] != IGNORE_INDEX).sum()

    def words_loss(self, image_tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy of the word head on the mean of each picture's tower tokens
        (B, k, Dv) against which vocabulary entries its caption holds (``labels``' targets)."""
        assert self.word_head is not None
        logits = self.word_head(image_tokens.mean(1).float())  # (B, V)
        return F.binary_cross_entropy_with_logits(logits, caption_words(labels, logits.shape[1]))

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
        # The tower reads each picture once, for the caption loss and the words loss alike.
        tokens = self.model.read_images(batch["input_pixels"]) if self.word_head is not None else None
        loss, _ = self.model_step(batch, tokens)
        size = batch["input_ids"].shape[0]
        self.log("train/text", loss, prog_bar=True, batch_size=size)
        if tokens is None:
            return loss
        words = self.words_loss(tokens, batch["labels"])
        self.log("train/words", words, batch_size=size)
        return loss + self.words_weight * words

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
