"""SD3-family flow-matching transformers as the image decoder (``diffusion.kind: sd3``).

``SD3Transformer2DModel`` reads token rows (N, L, J) (J: its joint attention width) and a
pooled embedding (N, P), packed here as SDXL's are (:mod:`minigpt5.sdxl`): the L rows, then
the pooled row. Its two CLIP encoders make the CAP target (a :class:`~minigpt5.sdxl.DualTextEncoder`
pooling from both); the T5 encoder SD3 may add is left out, as SD3's pipeline allows.
"""

from __future__ import annotations

import torch
from diffusers import SD3Transformer2DModel

from minigpt5.sdxl import unpack


def denoise(transformer: SD3Transformer2DModel, noisy: torch.Tensor, timesteps: torch.Tensor,
            cond: torch.Tensor) -> torch.Tensor:
    """The transformer's flow prediction for noisy latents (N, c, h, w) under packed conditioning (N, L + 1, J)."""
    tokens, pooled = unpack(cond, transformer.config.pooled_projection_dim)
    timesteps = timesteps.expand(noisy.shape[0]) if timesteps.dim() == 0 else timesteps  # (N,)
    return transformer(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=tokens,
                       pooled_projections=pooled).sample
