"""Input-side images: a frozen vision tower whose tokens a trainable projection maps into
the LLM's embedding space, at ``<ImageHere>`` placeholder positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    Blip2Config,
    Blip2ForImageTextRetrieval,
    CLIPVisionConfig,
    CLIPVisionModel,
)

from minigpt5.config import VisionConfig
from minigpt5.loading import load_pretrained

IMAGE_TOKEN = "<ImageHere>"
# Both OpenAI CLIP and BLIP-2 normalise with these statistics.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class VisionTower(nn.Module):
    """Images (N, 3, S, S) normalised for the tower -> tokens (N, num_tokens, width)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.kind = cfg.kind
        dtype = getattr(torch, cfg.torch_dtype)
        if cfg.kind == "clip":
            if cfg.path is None:
                self.encoder = CLIPVisionModel(CLIPVisionConfig(
                    hidden_size=cfg.hidden_size, intermediate_size=2 * cfg.hidden_size,
                    num_hidden_layers=cfg.num_layers, num_attention_heads=max(1, cfg.hidden_size // 16),
                    image_size=cfg.image_size, patch_size=cfg.patch_size,
                ))
            else:
                self.encoder = load_pretrained("vision tower", cfg.path, CLIPVisionModel.from_pretrained, dtype=dtype)
            vcfg = self.encoder.config
            self.image_size = vcfg.image_size
            self.num_tokens = (vcfg.image_size // vcfg.patch_size) ** 2 + 1
            self.width = vcfg.hidden_size
        elif cfg.kind == "blip2":
            if cfg.path is None:
                heads = max(1, cfg.hidden_size // 16)
                model = Blip2ForImageTextRetrieval(Blip2Config(
                    vision_config=dict(hidden_size=cfg.hidden_size, intermediate_size=2 * cfg.hidden_size,
                                       num_hidden_layers=cfg.num_layers, num_attention_heads=heads,
                                       image_size=cfg.image_size, patch_size=cfg.patch_size),
                    qformer_config=dict(hidden_size=cfg.hidden_size, intermediate_size=2 * cfg.hidden_size,
                                        num_hidden_layers=cfg.num_layers, num_attention_heads=heads,
                                        encoder_hidden_size=cfg.hidden_size),
                    num_query_tokens=cfg.num_query_tokens,
                ))
            else:
                model = load_pretrained("BLIP-2 vision tower", cfg.path, Blip2ForImageTextRetrieval.from_pretrained, dtype=dtype)
            # Keep the ViT, the Q-Former and its queries; drop the retrieval heads.
            self.encoder = model.vision_model
            self.qformer = model.qformer
            self.query_tokens = model.query_tokens
            self.image_size = model.config.vision_config.image_size
            self.num_tokens = model.config.num_query_tokens
            self.width = model.config.qformer_config.hidden_size
        else:
            raise ValueError(f"no vision tower for vision.kind={cfg.kind!r}")

    @property
    def dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype

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
