"""Feature mapper: voken hidden states -> Stable Diffusion conditioning."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from minigpt5.config import ConfigError, MapperConfig
from minigpt5.sdxl import pack


class FeatureMapper(nn.Module):
    """MLP then an encoder-decoder transformer whose decoder reads learnable queries.

    (N, n_vokens, llm_hidden) -> (N, num_queries, cross_attention_dim), or with ``pooled_width``
    (SDXL) -> (N, num_queries + 1, cross_attention_dim): a pooled head, a linear layer on the
    mean of the output rows, gives the pooled text embedding, packed as :func:`minigpt5.sdxl.pack` packs it.

    The decoder's first self-attention reads only the queries, so it is the same for every
    sample: :meth:`forward` runs it once per batch and expands the result, where
    ``nn.Transformer`` would run it N times (unless dropout, which draws a mask per sample,
    is active).
    """

    def __init__(
        self, cfg: MapperConfig, llm_hidden: int, cross_attention_dim: int, pooled_width: Optional[int] = None
    ) -> None:
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
            norm_first=True,  # query_self_attention and forward follow this order
        )
        self.dropout = cfg.dropout
        self.queries = nn.Parameter(torch.randn(cfg.num_queries, cfg.width) * cfg.query_init_std)  # (Q, W)
        # The paper's width equals SD 2.1's text width (1024) and has no output head;
        # a narrower mapper (the tiny preset) gets a linear head to the UNet's width.
        self.out = nn.Identity() if cfg.width == cross_attention_dim else nn.Linear(cfg.width, cross_attention_dim)
        if pooled_width is not None and pooled_width > cross_attention_dim:
            raise ConfigError(f"the pooled text embedding ({pooled_width} wide) must not be wider than the "
                              f"cross-attention width ({cross_attention_dim})")
        self.pooled = None if pooled_width is None else nn.Linear(cross_attention_dim, pooled_width)

    def query_self_attention(self, rows: int) -> torch.Tensor:
        """The first decoder layer's residual self-attention block over the queries -> (rows, Q, W)."""
        layer = self.transformer.decoder.layers[0]
        queries = self.queries.unsqueeze(0).expand(rows, -1, -1)  # (rows, Q, W)
        return queries + layer._sa_block(layer.norm1(queries), None, None)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.mlp(features)  # (N, n, W)
        memory = self.transformer.encoder(x)  # (N, n, W)
        first, *rest = self.transformer.decoder.layers
        per_sample = self.training and self.dropout > 0  # a dropout mask per sample, as nn.Transformer draws
        y = self.query_self_attention(x.shape[0] if per_sample else 1).expand(x.shape[0], -1, -1)  # (N, Q, W)
        # The rest of the first layer (pre-norm, as nn.TransformerDecoderLayer), then the other layers.
        y = y + first._mha_block(first.norm2(y), memory, None, None)
        y = y + first._ff_block(first.norm3(y))
        for layer in rest:
            y = layer(y, memory)
        tokens = self.out(self.transformer.decoder.norm(y))  # (N, Q, C)
        if self.pooled is None:
            return tokens
        return pack(tokens, self.pooled(tokens.mean(dim=1)))  # (N, Q + 1, C)
