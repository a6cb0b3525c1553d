"""Pretrain the tiny Stable Diffusion stand-in (text encoder -> UNet) on image-caption shards.

The paper starts from a pretrained, frozen SD 2.1. No SD weights can be downloaded here,
so the demo first trains the tiny UNet on its own captions and exports a diffusers-format
folder; stage 1 then loads it through the same ``from_pretrained`` path as the real SD,
and keeps it frozen. SD's CLIP text encoder was trained before SD itself; a random tiny
one is no stand-in for it, so ``train_text_encoder`` trains it with the UNet here (the
demo does: configs/tiny_sd.yaml).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule

from lit_models.optim import OptimConfig, configure_adamw
from minigpt5.builders import build_diffusion, build_sd_tokenizer, decoder_kind
from minigpt5.config import ConfigError, MiniGPT5Config
from minigpt5.losses import ldm_loss
from minigpt5.sequences import tokenize_for_text_encoder


class TextToImageModule(LightningModule):
    """Trains only the UNet of ``config.diffusion`` under text-encoder conditioning."""

    def __init__(
        self,
        config: MiniGPT5Config = MiniGPT5Config(),
        optim: OptimConfig = OptimConfig(lr=1e-3, warmup_steps=100, decay="constant", mapper_lr_scale=1.0),
        caption_dropout: float = 0.1,
        train_text_encoder: bool = False,
        export_dir: Optional[str] = None,
    ) -> None:
        """``train_text_encoder``: train the text encoder with the UNet (SD's CLIP encoder was
        trained before SD; a random one stays random), or keep it at its init."""
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.config, self.optim, self.caption_dropout, self.export_dir = config, optim, caption_dropout, export_dir
        self.train_text_encoder = train_text_encoder
        if decoder_kind(config.diffusion) != "sd":
            raise ConfigError(f"pretrain-sd builds and exports SD 1.x/2.x-style stand-ins only; diffusion.kind "
                              f"is {decoder_kind(config.diffusion)}")
        self.sd_tokenizer = build_sd_tokenizer(config.diffusion)
        self.text_encoder, self.unet, self.latents, self.scheduler = build_diffusion(
            config.diffusion, len(self.sd_tokenizer)
        )
        self.text_encoder.requires_grad_(train_text_encoder).train(train_text_encoder)
        self.latents.requires_grad_(False).eval()

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(noisy, timesteps, encoder_hidden_states=cond).sample

    def _loss(self, batch: dict[str, Any], generator: Optional[torch.Generator] = None) -> torch.Tensor:
        ids = batch["caption_ids"]  # (N, L)
        if self.training and self.caption_dropout > 0:
            empty = tokenize_for_text_encoder(self.sd_tokenizer, [""], ids.shape[1]).to(ids.device)
            drop = torch.rand(ids.shape[0], device=ids.device) < self.caption_dropout
            ids = torch.where(drop[:, None], empty, ids)
        with torch.set_grad_enabled(self.train_text_encoder and torch.is_grad_enabled()):
            cond = self.text_encoder(ids)[0]  # (N, L, C)
        with torch.no_grad():
            latents = self.latents.encode(batch["target_pixels"], generator)
        return ldm_loss(self.denoise, self.scheduler, latents, cond,
                        min_snr_gamma=self.config.loss.min_snr_gamma, generator=generator)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/ldm", loss, prog_bar=True, batch_size=batch["target_pixels"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        self.log("val/ldm", self._loss(batch, generator), batch_size=batch["target_pixels"].shape[0])

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_adamw(self, self.optim)

    def export(self, directory: str) -> None:
        """Write a diffusers-layout folder: text_encoder/, tokenizer/, unet/, scheduler/."""
        root = Path(directory)
        self.text_encoder.save_pretrained(root / "text_encoder")
        self.sd_tokenizer.save_pretrained(root / "tokenizer")
        self.unet.save_pretrained(root / "unet")
        self.scheduler.save_pretrained(root / "scheduler")

    def on_train_end(self) -> None:
        # Runs after callbacks' on_train_end, so EMA weights are already copied in.
        if self.export_dir and self.trainer.is_global_zero:
            self.export(self.export_dir)
