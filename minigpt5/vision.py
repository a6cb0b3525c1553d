"""Input-side images: a frozen vision tower whose tokens a trainable projection maps into
the LLM's embedding space, at ``<ImageHere>`` placeholder positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    Blip2Config,
    Blip2ForImageTextRetrieval,
    CLIPVisionConfig,
    CLIPVisionModel,
    PretrainedConfig,
)

from minigpt5.architectures import architecture_source
from minigpt5.config import VisionConfig
from minigpt5.loading import load_pretrained

IMAGE_TOKEN = "<ImageHere>"
# Both OpenAI CLIP and BLIP-2 normalise with these statistics.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def tiny_tower_config(cfg: VisionConfig) -> PretrainedConfig:
    """The Hugging Face config of the tiny random tower for ``cfg``."""
    heads = max(1, cfg.hidden_size // 16)
    layers = dict(hidden_size=cfg.hidden_size, intermediate_size=2 * cfg.hidden_size,
                  num_hidden_layers=cfg.num_layers, num_attention_heads=heads)
    if cfg.kind == "clip":
        return CLIPVisionConfig(**layers, image_size=cfg.image_size, patch_size=cfg.patch_size)
    return Blip2Config(
        vision_config=dict(**layers, image_size=cfg.image_size, patch_size=cfg.patch_size),
        qformer_config=dict(**layers, encoder_hidden_size=cfg.hidden_size),
        num_query_tokens=cfg.num_query_tokens,
    )


def geometry(kind: str, config: PretrainedConfig) -> tuple[int, int, int]:
    """(input image size, tokens per image, token width) of a tower with this HF config."""
    if kind == "clip":
        vision = getattr(config, "vision_config", config)  # a full CLIP config or a vision one
        return vision.image_size, (vision.image_size // vision.patch_size) ** 2 + 1, vision.hidden_size
    if kind == "blip2":
        return config.vision_config.image_size, config.num_query_tokens, config.qformer_config.hidden_size
    raise ValueError(f"no vision tower for vision.kind={kind!r}")


def tower_config(cfg: VisionConfig) -> PretrainedConfig:
    """The tower's HF config, read without loading weights (the data side needs its geometry)."""
    if cfg.path is None:
        return tiny_tower_config(cfg)
    return load_pretrained("vision tower config", cfg.path, AutoConfig.from_pretrained)


class VisionTower(nn.Module):
    """Images (N, 3, S, S) normalised for the tower -> tokens (N, num_tokens, width)."""

    def __init__(self, cfg: VisionConfig, empty: bool = False) -> None:
        """``empty``: a loaded tower is built from its architecture config, no weights read."""
        super().__init__()
        self.kind = cfg.kind
        dtype = getattr(torch, cfg.torch_dtype)
        model_class = CLIPVisionModel if cfg.kind == "clip" else Blip2ForImageTextRetrieval
        if cfg.path is None:
            model = model_class(tiny_tower_config(cfg)).to(dtype)
        elif empty:
            source = architecture_source(cfg.path)
            model = model_class(load_pretrained("vision tower config", source, AutoConfig.from_pretrained)).to(dtype)
        else:
            model = load_pretrained(f"{cfg.kind} vision tower", cfg.path, model_class.from_pretrained, dtype=dtype)
        self.hf_config = model.config
        self.image_size, self.num_tokens, self.width = geometry(cfg.kind, model.config)
        if cfg.kind == "clip":
            self.encoder = model
        else:
            # Keep the ViT, the Q-Former and its queries; drop the retrieval heads.
            self.encoder = model.vision_model
            self.qformer = model.qformer
            self.query_tokens = model.query_tokens

    @property
    def dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype

    def save_pretrained(self, directory: str) -> None:
        """The tower in Hugging Face layout, loadable as ``vision.path``: CLIP's vision model,
        or a BLIP-2 retrieval model around this ViT, Q-Former and queries (its retrieval heads
        as built: nothing here reads them)."""
        if self.kind == "clip":
            self.encoder.save_pretrained(directory)
            return
        model = Blip2ForImageTextRetrieval(self.hf_config)
        model.vision_model, model.qformer, model.query_tokens = self.encoder, self.qformer, self.query_tokens
        model.save_pretrained(directory)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(pixel_values=pixels.to(self.dtype)).last_hidden_state  # (N, P, Dv)
        if self.kind == "clip":
            return tokens
        queries = self.query_tokens.expand(tokens.shape[0], -1, -1)  # (N, q, Dq)
        mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        return self.qformer(query_embeds=queries, encoder_hidden_states=tokens, encoder_attention_mask=mask).last_hidden_state


def normalise_for_tower(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1] -> resized to ``size`` and CLIP-normalised.

    Used for generated images fed back as context; the data side does the same with PIL.
    """
    x = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
    x = (x + 1) / 2
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
