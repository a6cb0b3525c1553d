"""Pretrain the tiny LLM stand-in (a small Llama and its word-level tokenizer) on the world's text.

The paper starts from a pretrained, frozen Vicuna. None can be downloaded here, and a
random frozen LLM writes no sensible words, so the demo first trains a small Llama on
the text of the same shards the stages read (captions, stories, dialogues) and exports
it in Hugging Face layout; the stages then load it through the same
``AutoTokenizer``/``AutoModelForCausalLM.from_pretrained`` path as Vicuna
(``--model.config.llm.path=<export folder>``).

Tokenizer -> model: the vocabulary is the training corpus's words, so the tokenizer
comes from the data. :class:`~data_modules.corpus.CorpusDataModule` builds it from its
train shards; ``minigpt5 pretrain-lm`` links the data module's ``tokenizer`` into this
module's ``tokenizer`` argument at instantiation (``LanguageModelCLI``), and the module
sizes the embedding table and the special-token ids from it. Built directly (tests,
scripts), the module takes any tokenizer with bos/eos/pad tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule
from torchmetrics.aggregation import MeanMetric
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from lit_models.optim import OptimConfig, configure_adamw
from minigpt5.config import ConfigError
from minigpt5.losses import IGNORE_INDEX


@dataclass
class LanguageModelConfig:
    """Sizes of the tiny Llama: the random tiny preset's (``minigpt5.config.LLMConfig``), so the
    stages cost the same with it. Measured on 2 cores (batch 32, lr 3e-3): it learns the shape
    world's text, in-context copying in dialogues included, within 800-2500 steps depending on
    the seed (3 seeds); 128 wide x 4 layers is 3.4x slower per step and took 1400 (1 seed)."""

    hidden_size: int = 64
    num_layers: int = 2  # two layers are the fewest that learn in-context copying
    num_heads: int = 4  # as many key/value heads (no grouped-query attention at this size)
    intermediate_size: int = 128  # SwiGLU width
    max_positions: int = 256  # longest sequence; longer documents are cut (data.max_length is linked to it)

    def __post_init__(self) -> None:
        sizes = (self.hidden_size, self.num_layers, self.num_heads, self.intermediate_size, self.max_positions)
        if min(sizes) < 1 or self.hidden_size % self.num_heads:
            raise ConfigError(
                "model.config: sizes must be >= 1 and hidden_size divisible by num_heads; got hidden_size="
                f"{self.hidden_size}, num_layers={self.num_layers}, num_heads={self.num_heads}, "
                f"intermediate_size={self.intermediate_size}, max_positions={self.max_positions}"
            )


def build_language_model(cfg: LanguageModelConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """A randomly initialised Llama with one embedding row per token of ``tokenizer`` (untied head)."""
    missing = [name for name in ("bos_token_id", "eos_token_id", "pad_token_id") if getattr(tokenizer, name) is None]
    if missing:
        raise ConfigError(f"the LM tokenizer has no {', '.join(missing)}: it needs <s>, </s> and a pad token")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


class LanguageModelModule(LightningModule):
    """Next-token training of the tiny Llama; exports it with its tokenizer at the end of training.

    Logs ``train/loss`` per step, and per validation ``val/loss`` (mean over every
    predicted held-out token) and ``val/perplexity`` (its exponential).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        config: LanguageModelConfig = LanguageModelConfig(),
        optim: OptimConfig = OptimConfig(lr=3e-3, warmup_steps=50, weight_decay=0.01, decay="linear"),
        export_dir: Optional[str] = None,
    ) -> None:
        """``tokenizer``: linked from the data module by the CLI (see the module docstring).
        ``export_dir``: where :meth:`export` writes at the end of training (None: nowhere)."""
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer"], logger=False)
        self.tokenizer, self.config, self.optim, self.export_dir = tokenizer, config, optim, export_dir
        self.model = build_language_model(config, tokenizer)
        self.val_nll = MeanMetric()  # token-weighted, synced across ranks

    def model_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean next-token loss of the batch, and how many tokens it was averaged over."""
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        return out.loss, (batch["labels"][:, 1:] != IGNORE_INDEX).sum()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self.model_step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, tokens = self.model_step(batch)
        self.val_nll.update(loss, weight=tokens)

    def on_validation_epoch_end(self) -> None:
        nll = self.val_nll.compute()
        self.val_nll.reset()
        self.log("val/loss", nll, prog_bar=True)
        self.log("val/perplexity", nll.exp())

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_adamw(self, self.optim)

    def export(self, directory: str) -> None:
        """Hugging Face layout (config, safetensors weights, tokenizer files), loadable by ``from_pretrained``."""
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def on_train_end(self) -> None:
        if self.export_dir and self.trainer.is_global_zero:
            self.export(self.export_dir)
