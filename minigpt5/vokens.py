"""Generative vokens: [IMG0]..[IMG7] added to the tokenizer, with their own small rows.

The LLM's embedding table and LM head stay frozen and untouched. The voken rows live
in a separate module and are joined at lookup (input side) and at the logits (output
side), so optimizer state, weight decay and checkpoints see only these rows.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from minigpt5.config import ConfigError, VokenConfig


def add_voken_tokens(tokenizer: PreTrainedTokenizerBase, cfg: VokenConfig, num_embeddings: int) -> list[int]:
    """Add the voken tokens so their ids are ``num_embeddings .. num_embeddings + n - 1``.

    When the LLM's embedding table has more rows than the tokenizer (padded vocabularies),
    unused filler tokens are added first so the voken ids sit right after the table.
    """
    tokens = cfg.tokens
    expected = list(range(num_embeddings, num_embeddings + len(tokens)))
    if all(t in tokenizer.get_vocab() for t in tokens):
        ids = tokenizer.convert_tokens_to_ids(tokens)
        if ids != expected:
            raise ConfigError(f"tokenizer already holds vokens at ids {ids}, expected {expected}")
        return ids
    if len(tokenizer) > num_embeddings:
        raise ConfigError(
            f"tokenizer has {len(tokenizer)} tokens but the LLM embedding table only {num_embeddings} rows"
        )
    fillers = [f"<|unused_{i}|>" for i in range(num_embeddings - len(tokenizer))]
    if fillers:
        tokenizer.add_tokens(fillers, special_tokens=True)
    tokenizer.add_tokens(tokens, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if ids != expected:
        raise ConfigError(f"voken ids {ids} are not contiguous after the embedding table ({expected})")
    return ids


class VokenRows(nn.Module):
    """The trainable input-embedding and LM-head rows of the vokens."""

    def __init__(
        self, first_id: int, input_rows: torch.Tensor, output_rows: torch.Tensor, softcap: Optional[float] = None
    ) -> None:
        """``softcap``: the LLM squashes its logits to ``softcap * tanh(logits / softcap)`` (Gemma 2);
        the voken logits are squashed alike."""
        super().__init__()
        self.first_id = first_id
        self.softcap = softcap
        self.input_rows = nn.Parameter(input_rows.detach().clone().float())  # (n, D)
        self.output_rows = nn.Parameter(output_rows.detach().clone().float())  # (n, D)

    @classmethod
    def mean_initialised(
        cls, first_id: int, num_vokens: int, embedding: torch.Tensor, lm_head: torch.Tensor,
        softcap: Optional[float] = None,
    ) -> "VokenRows":
        """New rows start at the mean of the existing input / output rows."""
        mean_in = embedding.detach().float().mean(0, keepdim=True).expand(num_vokens, -1)
        mean_out = lm_head.detach().float().mean(0, keepdim=True).expand(num_vokens, -1)
        return cls(first_id, mean_in, mean_out, softcap)

    @property
    def num_vokens(self) -> int:
        return self.input_rows.shape[0]

    def is_voken(self, input_ids: torch.Tensor) -> torch.Tensor:
        return (input_ids >= self.first_id) & (input_ids < self.first_id + self.num_vokens)

    def embed(self, input_ids: torch.Tensor, embedding: nn.Embedding) -> torch.Tensor:
        """Look up ``input_ids`` (B, T) in the frozen table, voken ids in these rows -> (B, T, D)."""
        is_voken = self.is_voken(input_ids)
        base = embedding(torch.where(is_voken, torch.zeros_like(input_ids), input_ids))  # (B, T, D)
        rows = self.input_rows.to(base.dtype)[(input_ids - self.first_id).clamp(0, self.num_vokens - 1)]
        return torch.where(is_voken.unsqueeze(-1), rows, base)

    def extend_logits(self, hidden: torch.Tensor, base_logits: torch.Tensor) -> torch.Tensor:
        """Append the voken logits: (B, T, V) and hidden (B, T, D) -> (B, T, V + n).

        The result keeps the base logits' dtype: with a bf16 LLM, an fp32 copy of a
        32k-vocabulary logit tensor would cost more than the whole voken head.
        """
        voken_logits = hidden.to(self.output_rows.dtype) @ self.output_rows.t()  # (B, T, n)
        if self.softcap is not None:
            voken_logits = self.softcap * torch.tanh(voken_logits / self.softcap)
        return torch.cat([base_logits, voken_logits.to(base_logits.dtype)], dim=-1)
