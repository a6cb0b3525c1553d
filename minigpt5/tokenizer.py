"""An offline byte-level BPE tokenizer for the tiny preset (nothing downloaded)."""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
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
