"""The networks the metrics see images and text through, real or tiny.

``load_extractors`` loads the real ones a protocol needs (Inception for FID/IS,
clean-fid's Inception, CLIP, Sentence-BERT), each from a local path or the
libraries' caches, with an error naming any missing file. ``tiny_extractors``
builds small random networks with the same interfaces, so the evaluation runs
end to end offline (tests, ``make eval``); their numbers only show the pipeline
works and are labelled as such in every results table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from evaluation.image_metrics import load_cleanfid_inception, load_feature_extractor
from evaluation.text_metrics import SentenceEncoder, load_sentence_encoder

PROTOCOL_NEEDS = {
    "cc3m": ("fid", "is", "cleanfid", "clip"),
    "vist": ("fid", "is", "cleanfid", "clip"),
    "mmdialog": ("is", "clip", "sbert"),
    "synthetic-vist": (),  # scored by the world's rules (evaluation.world_scores): no network
    "synthetic-dialog": (),
}
# The paper's CLIP per protocol: ViT-L/14 for CC3M and VIST, ViT-B/32 for MMDialog.
DEFAULT_CLIP = {"cc3m": "clip-vit-l-14", "vist": "clip-vit-l-14", "mmdialog": "clip-vit-b-32"}


@dataclass
class ClipProcessor:
    """The two halves of a CLIPProcessor, for CLIP models built without one."""

    image_processor: Any
    tokenizer: Any


@dataclass
class Extractors:
    """What each metric reads: ``None`` where the protocol does not need it."""

    kind: str  # "real" or "tiny" (random networks: the numbers only test the pipeline)
    fid_features: Optional[nn.Module] = None  # uint8 (N, 3, H, W) -> (N, d)
    is_logits: Optional[nn.Module] = None  # uint8 (N, 3, H, W) -> (N, classes)
    cleanfid_features: Optional[nn.Module] = None  # float (N, 3, 299, 299) in [0, 255] -> (N, d)
    clip: Optional[nn.Module] = None
    clip_processor: Any = None
    clip_name: str = ""
    sentence: Optional[SentenceEncoder] = None

    def to(self, device: Union[str, torch.device]) -> "Extractors":
        """Move every network to ``device`` (in place); returns self."""
        for value in vars(self).values():
            if isinstance(value, nn.Module):
                value.to(device)
        return self


@dataclass
class ExtractorPaths:
    """Where the real weights are; None means the library's cache (downloaded when online)."""

    inception: Optional[str] = None  # torch-fidelity's weights-inception-2015-12-05-6726825d.pth
    cleanfid_inception: Optional[str] = None  # clean-fid's inception-2015-12-05.pt
    clip: Optional[str] = None  # one of CLIP_MODELS; None picks the protocol's default
    clip_path: Optional[str] = None  # local CLIP folder (or hub id)
    sbert: Optional[str] = None  # Sentence-BERT folder or hub id


def load_extractors(protocol: str, paths: ExtractorPaths) -> Extractors:
    """The real extractors ``protocol`` needs."""
    needs = PROTOCOL_NEEDS[protocol]
    out = Extractors(kind="real")
    if "fid" in needs:
        out.fid_features, _ = load_feature_extractor("inception", paths.inception)
    if "is" in needs:
        out.is_logits, _ = load_feature_extractor("inception-logits", paths.inception)
    if "cleanfid" in needs:
        out.cleanfid_features = load_cleanfid_inception(paths.cleanfid_inception)
    if "clip" in needs:
        out.clip_name = paths.clip or DEFAULT_CLIP[protocol]
        out.clip, out.clip_processor = load_feature_extractor(out.clip_name, paths.clip_path)
    if "sbert" in needs:
        out.sentence = load_sentence_encoder(paths.sbert)
    return out


class TinyImageFeatures(nn.Module):
    """A small random conv net: images with values in [0, 255] (any size) -> (N, out) features.

    ``gain`` scales the output; as IS logits, a larger gain makes a more confident
    classifier, so IS moves away from its floor of 1 as images vary.
    """

    def __init__(self, out: int, gain: float = 1.0) -> None:
        super().__init__()
        self.gain = gain
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, out),
        )

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = nn.functional.interpolate(images.float() / 255.0, size=(32, 32), mode="bilinear", antialias=True)
        return self.net(x) * self.gain


def tiny_extractors(seed: int = 0) -> Extractors:
    """Random small stand-ins for every extractor (deterministic given ``seed``)."""
    from transformers import BertConfig, BertModel, CLIPConfig, CLIPImageProcessor, CLIPModel

    from minigpt5.tokenizer import build_tiny_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_tiny_tokenizer()
        vocab = len(tokenizer)
        clip = CLIPModel(CLIPConfig(
            text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, max_position_embeddings=77, bos_token_id=1, eos_token_id=2, pad_token_id=3),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=32, patch_size=8),
            projection_dim=16,
        ))
        bert = BertModel(BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64, max_position_embeddings=128))
        extractors = Extractors(
            kind="tiny",
            fid_features=TinyImageFeatures(16).eval(),
            is_logits=TinyImageFeatures(10, gain=30.0).eval(),
            cleanfid_features=TinyImageFeatures(16).eval(),
            clip=clip.eval().requires_grad_(False),
            clip_processor=ClipProcessor(
                CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer
            ),
            clip_name="tiny-clip",
            sentence=SentenceEncoder(bert.requires_grad_(False), tokenizer),
        )
    return extractors
