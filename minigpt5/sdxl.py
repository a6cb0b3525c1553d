"""SDXL as the image decoder: two CLIP text encoders, a pooled text embedding, size and crop time ids.

SDXL's UNet reads token rows (N, L, C), the penultimate hidden states of both encoders
concatenated, and through ``added_cond_kwargs`` a pooled embedding (N, P), the second
encoder's projected output, with time ids (N, 6). Here that conditioning travels as one
tensor (N, L + 1, C): the L token rows, then one row holding the pooled embedding
zero-padded to C. Everything built for SD's (N, L, C) conditioning (guidance's doubled
batch, the CAP loss, the empty-caption target of a dropped sample, caption caches) so
carries SDXL's unchanged; only the UNet call unpacks it. The padding is zero in the
mapper's output and in the encoders' alike, so it adds no error to the CAP loss, whose
mean is over the L + 1 rows, the pooled row one of them.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection
from transformers.modeling_outputs import BaseModelOutput

TIME_IDS = 6  # original height and width, crop top and left, target height and width


def pack(tokens: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """Token rows (N, L, C) and pooled embeddings (N, P), P <= C -> one tensor (N, L + 1, C)."""
    width = tokens.shape[-1]
    if pooled.shape[-1] > width:
        raise ValueError(f"the pooled embedding ({pooled.shape[-1]} wide) is wider than the token rows ({width})")
    row = F.pad(pooled, (0, width - pooled.shape[-1])).unsqueeze(1)  # (N, 1, C)
    return torch.cat([tokens, row.to(tokens.dtype)], dim=1)  # (N, L + 1, C)


def unpack(cond: torch.Tensor, pooled_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L + 1, C) -> token rows (N, L, C) and pooled embeddings (N, P)."""
    return cond[:, :-1], cond[:, -1, :pooled_width]


def time_ids(resolution: int, count: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """diffusers' ``add_time_ids`` for an uncropped square image of ``resolution`` pixels -> (count, 6).

    Targets are padded square and resized to the resolution, never cropped, so training and
    sampling give the UNet the same ids.
    """
    ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], device=device, dtype=dtype)
    return ids.expand(count, TIME_IDS)


def pooled_width(unet: UNet2DConditionModel) -> Optional[int]:
    """The width of the pooled text embedding ``unet`` reads (SDXL's ``text_time``); None for SD's UNets."""
    config = unet.config
    if config.addition_embed_type is None:
        return None
    if config.addition_embed_type != "text_time":
        raise ValueError(f"unsupported UNet addition_embed_type {config.addition_embed_type!r} (None or text_time)")
    return config.projection_class_embeddings_input_dim - TIME_IDS * config.addition_time_embed_dim


def denoise(
    unet: UNet2DConditionModel, noisy: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor, resolution: int
) -> torch.Tensor:
    """SDXL's UNet on noisy latents (N, c, h, w) under packed conditioning (N, L + 1, C)."""
    tokens, pooled = unpack(cond, pooled_width(unet))
    added = {"text_embeds": pooled, "time_ids": time_ids(resolution, noisy.shape[0], noisy.device, cond.dtype)}
    return unet(noisy, timesteps, encoder_hidden_states=tokens, added_cond_kwargs=added).sample


class DualTextEncoder(nn.Module):
    """SDXL's two text encoders as one: caption ids (N, L) -> packed conditioning (N, L + 1, C).

    SD3's two CLIP encoders too, with ``pooled_from_both`` (its pooled embedding is both
    encoders' projected outputs, concatenated) and ``width`` (the token rows zero-padded to
    its transformer's joint attention width, as SD3's pipeline pads them).

    Both read the first tokenizer's ids. SDXL's tokenizers share a vocabulary and differ only
    in padding (the second pads with its own token, "!" in SDXL base), so the second
    encoder's ids are the first's with the padding (every position after the first end token,
    and any ``pad_id`` where that is not the end token) set to ``pad_id_2``: exactly what
    ``tokenizer_2`` gives.
    """

    def __init__(
        self, text_encoder: CLIPTextModel, text_encoder_2: CLIPTextModelWithProjection,
        eos_id: int, pad_id: int, pad_id_2: int, pooled_from_both: bool = False, width: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.eos_id, self.pad_id, self.pad_id_2 = eos_id, pad_id, pad_id_2
        self.pooled_from_both = pooled_from_both
        concatenated = text_encoder.config.hidden_size + text_encoder_2.config.hidden_size
        if width is not None and width < concatenated:
            raise ValueError(f"the encoders' rows ({concatenated} wide) are wider than the denoiser's ({width})")
        self.width = width or concatenated
        self.pooled_width = text_encoder_2.config.projection_dim + (
            text_encoder.config.projection_dim if pooled_from_both else 0)

    @property
    def device(self) -> torch.device:
        """Where the encoders are, as a transformers model says (the caption cache reads it)."""
        return self.text_encoder.device

    def output_shape(self, length: int) -> tuple[int, int]:
        """The shape of one caption's packed output, for captions of ``length`` ids."""
        return length + 1, self.width

    def ids_for_second(self, ids: torch.Tensor) -> torch.Tensor:
        """The second tokenizer's ids (N, L) from the first's."""
        is_eos = (ids == self.eos_id).int()  # (N, L)
        padding = (is_eos.cumsum(dim=1) - is_eos) > 0  # after the first end token
        if self.pad_id != self.eos_id:
            padding |= ids == self.pad_id
        return ids.masked_fill(padding, self.pad_id_2)

    def forward(self, ids: torch.Tensor) -> BaseModelOutput:
        first = self.text_encoder(ids, output_hidden_states=True)
        second = self.text_encoder_2(self.ids_for_second(ids), output_hidden_states=True)
        tokens = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)  # (N, L, C1 + C2)
        tokens = F.pad(tokens, (0, self.width - tokens.shape[-1]))  # (N, L, C)
        pooled = torch.cat([first.text_embeds, second.text_embeds], dim=-1) if self.pooled_from_both else second.text_embeds
        return BaseModelOutput(last_hidden_state=pack(tokens, pooled))
