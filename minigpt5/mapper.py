"""Feature mapper: voken hidden states -> Stable Diffusion conditioning."""

from __future__ import annotations

import torch
from torch import nn

from minigpt5.config import MapperConfig


class FeatureMapper(nn.Module):
    """MLP then an encoder-decoder transformer whose decoder reads learnable queries.

    (N, n_vokens, llm_hidden) -> (N, num_queries, cross_attention_dim).
    """

    def __init__(self, cfg: MapperConfig, llm_hidden: int, cross_attention_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(llm_hidden, cfg.width), nn.GELU(), nn.Linear(cfg.width, cfg.width))
        self.transformer = nn.Transformer(
            d_model=cfg.width,
            nhead=cfg.num_heads,
            num_encoder_layers=cfg.num_encoder_layers,
            num_decoder_layers=cfg.num_decoder_layers,
            dim_feedforward=cfg.ff_size,
            dropout=cfg.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.queries = nn.Parameter(torch.randn(cfg.num_queries, cfg.width) * cfg.query_init_std)  # (Q, W)
        # The paper's width equals SD 2.1's text width (1024) and has no output head;
        # a narrower mapper (the tiny preset) gets a linear head to the UNet's width.
        self.out = nn.Identity() if cfg.width == cross_attention_dim else nn.Linear(cfg.width, cross_attention_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.mlp(features)  # (N, n, W)
        queries = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)  # (N, Q, W)
        y = self.transformer(src=x, tgt=queries)  # (N, Q, W)
        return self.out(y)  # (N, Q, C)
