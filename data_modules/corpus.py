"""Plain text from the world's shards, for pretraining the tiny LM (``minigpt5 pretrain-lm``).

Every layout the stages read is a text source, one document per sample: an
image-caption pair (``key.txt``, CC3M/img2dataset layout) gives its caption; a story
(``key.json`` with ``steps``, VIST layout) or a dialogue (``key.json`` with ``turns``,
MMDialog layout) gives its steps'/turns' texts in order, joined with single spaces.
Images are never decoded. Each document trains as ``<s> words </s>``.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any, Iterator, Optional

from transformers import PreTrainedTokenizerFast
from webdataset.tariterators import tarfile_samples

from data_modules.base import ShardDataModule
from data_modules.errors import BadSample
from data_modules.interleaved import turn_members
from data_modules.shards import SampleCounter, ShardSpec, decode_caption, expand_shards
from minigpt5.sequences import Example, pad_examples
from minigpt5.tokenizer import build_word_tokenizer

log = logging.getLogger(__name__)


def document_text(sample: dict[str, Any]) -> str:
    """A raw sample's document: its caption, else its steps'/turns' texts; BadSample if it has none."""
    if "txt" in sample:  # pairs may also carry a metadata .json (img2dataset writes one)
        return decode_caption(sample)
    texts = [" ".join(text.split()) for text, _ in turn_members(sample)]
    document = " ".join(t for t in texts if t)
    if not document:
        raise BadSample(sample, "no text in any step or turn")
    return document


def corpus_documents(urls: list[str], counter: SampleCounter) -> Iterator[str]:
    """The documents of ``urls``, each shard read once in order; bad samples logged and counted in ``counter``."""
    for sample in tarfile_samples({"url": url} for url in urls):
        try:
            yield document_text(sample)
        except BadSample as exc:
            counter(exc)


class DocumentEncoder:
    """Raw samples -> ``<s> words </s>`` examples (``__call__``) -> padded batches (``collate``).

    Labels are the input ids (the LM shifts them); a document longer than ``max_length``
    tokens is cut to it (counted as truncated).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast, counter: SampleCounter, max_length: int) -> None:
        self.tokenizer, self.counter, self.max_length = tokenizer, counter, max_length

    def __call__(self, sample: dict[str, Any]) -> list[Example]:
        words = self.tokenizer(document_text(sample), add_special_tokens=False).input_ids
        ids = [self.tokenizer.bos_token_id, *words, self.tokenizer.eos_token_id]
        if len(ids) > self.max_length:
            self.counter.note_truncated(sample, "max_length (model.config.max_positions)")
            ids = ids[: self.max_length]
        return [Example(ids, list(ids))]

    def collate(self, examples: list[Example]) -> dict[str, Any]:
        """input_ids, attention_mask, labels (B, T): right-padded, labels -100 on padding."""
        return pad_examples(examples, self.tokenizer.pad_token_id)


class CorpusDataModule(ShardDataModule):
    """Document batches for the tiny LM from pairs, stories and dialogues together.

    ``train_shards``/``val_shards``: any :func:`~data_modules.shards.expand_shards` spec,
    e.g. a list of the pairs', stories' and dialogues' brace specs. :attr:`tokenizer` is
    the word-level tokenizer of the training corpus: built on first use by reading every
    train shard once (the same shards give the same ids, so each rank, and a resumed run,
    builds the same one). Streaming, resumption and validation are
    :class:`~data_modules.base.ShardDataModule`'s; ``batch_size`` counts documents.

    ``shuffle_buffer`` (raw samples) is large by default: each layout lives in its own
    shards, and with a buffer spanning only a couple of shards the model trains on one
    layout at a time (measured: with 1000, the first word it predicts after ``<s>``
    followed the shards read last, 96% "a" at the end of a run on a 44% caption mix).
    """

    def __init__(
        self,
        train_shards: ShardSpec,
        val_shards: Optional[ShardSpec] = None,
        max_length: int = 256,
        batch_size: int = 32,
        num_workers: int = 1,
        shuffle_buffer: int = 10000,
        samples_per_epoch: int = 10000,
        val_samples: Optional[int] = None,
        seed: int = 0,
        stream_groups: Optional[int] = None,
        prefetch_factor: int = 2,
        pin_memory: Optional[bool] = None,
        persistent_val_workers: bool = False,
        worker_start: str = "forkserver",
        max_bad_share: float = 0.1,
    ) -> None:
        """``max_length``: longest example in tokens, ``<s>`` and ``</s>`` included (the CLI
        links it to the model's ``config.max_positions``)."""
        super().__init__(
            train_shards, val_shards, batch_size=batch_size, num_workers=num_workers, shuffle_buffer=shuffle_buffer,
            samples_per_epoch=samples_per_epoch, val_samples=val_samples, seed=seed, stream_groups=stream_groups,
            prefetch_factor=prefetch_factor, pin_memory=pin_memory, persistent_val_workers=persistent_val_workers,
            worker_start=worker_start, max_bad_share=max_bad_share,
        )
        if max_length < 3:
            raise ValueError(f"data.max_length must be >= 3 (<s>, a word, </s>), got {max_length}")
        self.max_length = max_length

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerFast:
        urls = expand_shards(self.train_shards)
        counter = SampleCounter()
        tokenizer = build_word_tokenizer(corpus_documents(urls, counter))
        log.info(
            "word tokenizer: %d tokens from %d train shards (%d bad samples skipped)", len(tokenizer), len(urls),
            counter.bad,
        )
        return tokenizer

    def make_encoder(self) -> DocumentEncoder:
        return DocumentEncoder(self.tokenizer, self.counter, self.max_length)
