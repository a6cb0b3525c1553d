"""Offline tokenizers (nothing downloaded).

- :func:`build_tiny_tokenizer`: a byte-level BPE over a built-in word list, for the random
  tiny preset and the tiny SD text encoder.
- :func:`build_word_tokenizer`: a whole-word tokenizer whose vocabulary is every word of a
  corpus, for the pretrained tiny LM (``minigpt5 pretrain-lm``). It cannot emit byte
  fragments: decoded text only ever holds vocabulary words and spaces.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")

# A small fixed corpus: the synthetic data's words plus common English, so the tiny
# tokenizer gives whole-word tokens for the demo's captions and bytes for anything else.
_CORPUS = """
a an the of and with on in at to is are was were it this that there here one two three
red green blue yellow purple orange black white gray pink brown cyan magenta
circle square triangle star cross ring diamond shape shapes small large big tiny
image picture photo of showing story dialogue then next later finally we my our
sky tree water city street people man woman dog cat house car food beach park
day night sun light dark background front left right top bottom middle center
"""


@lru_cache(maxsize=4)
def _trained_tokenizer_json(vocab_size: int) -> str:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.split(), trainer=trainer)
    return tok.to_str()


def build_tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer trained on a built-in word list."""
    tok = Tokenizer.from_str(_trained_tokenizer_json(vocab_size))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def _word_normalizer() -> normalizers.Normalizer:
    """NFKC, every control/format/unassigned character and U+FFFD to a space, lower case."""
    return normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(r"[\p{C}\x{FFFD}]"), " "), normalizers.Lowercase()]
    )


def build_word_tokenizer(documents: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is every word of ``documents``.

    Words are what the normaliser (:func:`_word_normalizer`) and the ``Whitespace``
    pre-tokenizer (runs of word characters, or of punctuation) make of the text. Ids:
    ``SPECIAL_TOKENS`` 0..3, then the words sorted, so the same set of words always gets
    the same ids. Unknown words map to ``<unk>``; decoding joins words with spaces. No
    BOS/EOS is added on encoding (as for the tiny BPE): callers place ``<s>``/``</s>``.
    """
    normalizer, pre_tokenizer = _word_normalizer(), pre_tokenizers.Whitespace()
    words = {
        word
        for document in documents
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(document))
    }
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *sorted(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
