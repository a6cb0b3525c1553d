"""CC3M image-caption pairs for stage 1 (UAS), read from img2dataset-style shards."""

from __future__ import annotations

from data_modules.base import ShardDataModule
from data_modules.shards import SampleEncoder


class CC3MDataModule(ShardDataModule):
    """Caption/image batches for UAS: the caption then ``[IMG0..7]`` and the end marker, worded by
    the model's template (plain: ``<s> prompt caption [IMG0..7] </s>``), plus the target image.

    Shards follow img2dataset's layout (``key.jpg`` + ``key.txt``); see
    :class:`~data_modules.base.ShardDataModule` for streaming, resumption and validation.
    """

    def make_encoder(self) -> SampleEncoder:
        return SampleEncoder(self.model_config, self.counter, self.latents, self.caption_embeddings)
