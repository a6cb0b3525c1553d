"""Pretrain the tiny Stable Diffusion stand-in (text encoder -> denoiser) on image-caption shards.

The paper starts from a pretrained, frozen SD 2.1. No SD weights can be downloaded here,
so the demo first trains the tiny UNet on its own captions and exports a diffusers-format
folder; stage 1 then loads it through the same ``from_pretrained`` path as the real SD,
and keeps it frozen. SD's CLIP text encoder was trained before SD itself; a random tiny
one is no stand-in for it, so ``train_text_encoder`` trains it with the UNet here (the
demo does: configs/tiny_sd.yaml). Any ``diffusion.kind`` trains alike: SDXL's UNet and
SD3's flow-matching transformer with their two text encoders (configs/tiny_sdxl.yaml,
configs/tiny_sd3.yaml), each with its own loss (:func:`minigpt5.decoders.diffusion_loss`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import diffusers
import torch
from lightning.pytorch import LightningModule

from lit_models.optim import OptimConfig, configure_adamw
from minigpt5 import decoders
from minigpt5.builders import build_diffusion, build_sd_tokenizer
from minigpt5.config import MiniGPT5Config
from minigpt5.sdxl import DualTextEncoder
from minigpt5.sequences import tokenize_for_text_encoder


class TextToImageModule(LightningModule):
    """Trains the denoiser of ``config.diffusion`` (and its text encoders if asked) under text conditioning."""

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
        self.kind = decoders.decoder_kind(config.diffusion)
        self.sd_tokenizer = build_sd_tokenizer(config.diffusion)
        self.text_encoder, self.unet, self.latents, self.scheduler = build_diffusion(
            config.diffusion, len(self.sd_tokenizer)
        )
        self.text_encoder.requires_grad_(train_text_encoder).train(train_text_encoder)
        self.latents.requires_grad_(False).eval()

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return decoders.denoise(self.unet, noisy, timesteps, cond, self.config.diffusion.resolution)

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
        return decoders.diffusion_loss(self.denoise, self.scheduler, latents, cond, self.config.loss, generator)

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
        """Write a diffusers-layout folder: model_index.json naming the kind's pipeline, text_encoder/ and
        tokenizer/ (SDXL, SD3: text_encoder_2/ and tokenizer_2/ too), unet/ (SD3: transformer/), scheduler/."""
        root = Path(directory)
        encoders = {"text_encoder": self.text_encoder}
        if isinstance(self.text_encoder, DualTextEncoder):
            encoders = {"text_encoder": self.text_encoder.text_encoder,
                        "text_encoder_2": self.text_encoder.text_encoder_2}
        tokenizers = {name.replace("text_encoder", "tokenizer"): self.sd_tokenizer for name in encoders}
        denoiser = decoders.DENOISERS[self.kind][0]
        parts = {**encoders, **tokenizers, denoiser: self.unet, "scheduler": self.scheduler}
        index = {"_class_name": decoders.PIPELINES[self.kind], "_diffusers_version": diffusers.__version__}
        for name, part in parts.items():
            part.save_pretrained(root / name)
            index[name] = [type(part).__module__.split(".")[0], type(part).__name__]  # (library, class), as diffusers
        (root / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    def on_train_end(self) -> None:
        # Runs after callbacks' on_train_end, so EMA weights are already copied in.
        if self.export_dir and self.trainer.is_global_zero:
            self.export(self.export_dir)
