"""Text metrics the paper reports for MMDialog: BLEU-1, BLEU-2, ROUGE-L and Sentence-BERT similarity.

All are sentence-level (one generated response against its reference), so that
scores can be averaged per dialogue and then across dialogues. BLEU-n is the
cumulative BLEU with uniform weights over 1..n-grams and a brevity penalty,
unsmoothed, over words (``tokens="words"``, the default: BLEU as the MMDialog paper
and every other reader of a BLEU figure means it) or over characters
(``tokens="chars"``: what the official code computes, by passing strings where nltk's
``sentence_bleu`` expects token lists, metric.py:426, though it imports
``word_tokenize``; use it to compare with the paper's figures). ROUGE-L is the
F-measure of the longest common subsequence (torchmetrics).
"""

from __future__ import annotations

import math
import string
from collections import Counter
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn
from torchmetrics.functional.text import rouge_score

from minigpt5.loading import load_pretrained

# Sentence-BERT default: a mean-pooled MiniLM from the sentence-transformers collection.
SBERT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

BleuTokens = Literal["words", "chars"]
BLEU_TOKENS = ("words", "chars")


def bleu_tokens(text: str, tokens: BleuTokens) -> list[str]:
    """Words (split on whitespace) or characters, spaces included (as nltk iterates a string)."""
    if tokens == "words":
        return text.split()
    if tokens == "chars":
        return list(text)
    raise ValueError(f"BLEU tokens must be one of {', '.join(BLEU_TOKENS)}; got {tokens!r}")


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(hypothesis: str, reference: str, n: int, tokens: BleuTokens = "words") -> float:
    """Sentence BLEU-n of ``hypothesis`` against one ``reference``: the geometric mean of the
    clipped 1..n-gram precisions times the brevity penalty (0 for an empty hypothesis, or
    when some order has no match: no smoothing)."""
    hyp, ref = bleu_tokens(hypothesis.strip(), tokens), bleu_tokens(reference.strip(), tokens)
    if not hyp:
        return 0.0
    log_precision = 0.0
    for order in range(1, n + 1):
        hyp_grams, ref_grams = _ngrams(hyp, order), _ngrams(ref, order)
        matches = sum(min(count, ref_grams[gram]) for gram, count in hyp_grams.items())
        if matches == 0:
            return 0.0
        log_precision += math.log(matches / sum(hyp_grams.values())) / n
    brevity = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return brevity * math.exp(log_precision)


def scoring_text(text: str) -> str:
    """A response as the official MMDialog scoring reads it: stripped, and empty when it is
    only punctuation (metric.py:413-418; the cut at the first image is the system's)."""
    text = text.strip()
    return "" if all(c in string.punctuation for c in text) else text


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


def text_scores(hypothesis: str, reference: str, tokens: BleuTokens = "words") -> dict[str, float]:
    """BLEU-1, BLEU-2 (over ``tokens``) and ROUGE-L of one response."""
    return {"bleu1": bleu(hypothesis, reference, 1, tokens), "bleu2": bleu(hypothesis, reference, 2, tokens),
            "rouge_l": rouge_l(hypothesis, reference)}
