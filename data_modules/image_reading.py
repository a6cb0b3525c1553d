"""Image-caption pairs as reading examples: the picture in, its caption out (``minigpt5 pretrain-vision``).

MiniGPT-4's alignment stage teaches its projection to turn BLIP-2's image tokens into
something Vicuna describes in words; the paper starts from that projection and keeps it
frozen. The tiny stand-in learns the same thing from the world's pairs: each pair becomes
a one-message story example whose request shows the image (as VIST's understanding task
shows the step's image) and whose target is the caption, worded by the stages' own
template, so the image tokens sit where stage 2 puts them.
"""

from __future__ import annotations

from typing import Any

from data_modules.interleaved import InterleavedDataModule, InterleavedEncoder
from data_modules.shards import decode_sample
from data_modules.turn_choices import Part, TaskExample


class ImageReadingEncoder(InterleavedEncoder):
    """A raw pair (image, caption) -> one example: the image as input, the caption as the text target."""

    def __call__(self, sample: dict[str, Any]) -> list[dict[str, Any]]:
        image, caption = decode_sample(sample)
        task = TaskExample("understand", 0, "", [], None, " ".join(caption.split()), [], request=Part("", [image]))
        return [self.encode(task)]


class ImageReadingDataModule(InterleavedDataModule):
    """Image-caption shards (CC3M layout) as :class:`ImageReadingEncoder` examples; needs a vision tower."""

    def make_encoder(self) -> ImageReadingEncoder:
        if self.model_config.vision.kind == "none":
            raise ValueError("reading images needs a vision tower: set model.config.vision.kind to blip2 or clip")
        return ImageReadingEncoder(self.model_config, self.counter, self.targets, self.context, self.latents,
                                   self.choices)
