"""Text metrics the paper reports for MMDialog: BLEU-1, BLEU-2, ROUGE-L and Sentence-BERT similarity.

All are sentence-level (one generated response against its reference), so that
scores can be averaged per dialogue and then across dialogues. BLEU-n is the
cumulative BLEU with uniform weights over 1..n-grams and a brevity penalty
(torchmetrics, unsmoothed); ROUGE-L is the F-measure of the longest common
subsequence (torchmetrics).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torchmetrics.functional.text import bleu_score, rouge_score

from minigpt5.loading import load_pretrained

# Sentence-BERT default: a mean-pooled MiniLM from the sentence-transformers collection.
SBERT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def bleu(hypothesis: str, reference: str, n: int) -> float:
    """Sentence BLEU-n of ``hypothesis`` against one ``reference`` (0 for an empty hypothesis)."""
    if not hypothesis.strip():
        return 0.0
    return float(bleu_score([hypothesis], [[reference]], n_gram=n))


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F-measure of ``hypothesis`` against ``reference``."""
    return float(rouge_score(hypothesis, reference, rouge_keys="rougeL")["rougeL_fmeasure"])


class SentenceEncoder(nn.Module):
    """Sentence-BERT embeddings: the encoder's token states mean-pooled over the attention mask, L2-normalised."""

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int = 128) -> None:
        super().__init__()
        self.model, self.tokenizer, self.max_length = model.eval(), tokenizer, max_length

    @torch.no_grad()
    def forward(self, texts: Sequence[str]) -> Tensor:
        device = next(self.model.parameters()).device
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        mask = enc["attention_mask"].to(device)
        states = self.model(input_ids=enc["input_ids"].to(device), attention_mask=mask).last_hidden_state  # (N, T, D)
        pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        return nn.functional.normalize(pooled.float(), dim=-1)  # (N, D)


def load_sentence_encoder(path: str | None = None) -> SentenceEncoder:
    """A Sentence-BERT model from a local folder or hub id (default ``SBERT_MODEL``); clear error when absent."""
    from transformers import AutoModel, AutoTokenizer

    path = path or SBERT_MODEL
    model = load_pretrained("Sentence-BERT model", path, AutoModel.from_pretrained)
    tokenizer = load_pretrained("Sentence-BERT tokenizer", path, AutoTokenizer.from_pretrained)
    return SentenceEncoder(model.requires_grad_(False), tokenizer)


def sbert_similarity(encoder: SentenceEncoder, hypotheses: Sequence[str], references: Sequence[str]) -> Tensor:
    """Per-pair cosine similarity of Sentence-BERT embeddings, (N,)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"need one reference per hypothesis, got {len(hypotheses)} and {len(references)}")
    return (encoder(hypotheses) * encoder(references)).sum(-1)


def text_scores(hypothesis: str, reference: str) -> dict[str, float]:
    """BLEU-1, BLEU-2 and ROUGE-L of one response."""
    return {"bleu1": bleu(hypothesis, reference, 1), "bleu2": bleu(hypothesis, reference, 2),
            "rouge_l": rouge_l(hypothesis, reference)}
