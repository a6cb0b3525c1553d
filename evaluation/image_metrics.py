"""Image metrics for evaluation: FID (torchmetrics and clean-fid), IS, CLIP-I and CLIP-T.

Plain functions over tensors, so the evaluation callback and ``minigpt5 eval``
share one implementation. FID and IS run through torchmetrics with a custom
``feature`` module, which lets tests check the maths with small extractors
that need no weights; the real extractors come from ``load_feature_extractor``.

Conventions:
- FID and IS take *features* (FID: (N, d) activations; IS: (N, C) logits or
  probabilities). To score images, pass ``extractor=``: a module mapping an
  image batch to those features (e.g. the Inception net from
  ``load_feature_extractor("inception")``).
- CLIP-I and CLIP-T are plain cosine similarities in [-1, 1], *not* scaled by
  100 and not clipped at 0 as torchmetrics' CLIPScore does.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore

from minigpt5.loading import WeightsNotFoundError, load_pretrained

# Names accepted by ``load_feature_extractor`` -> hub id of the CLIP weights.
CLIP_MODELS = {
    "clip-vit-l-14": "openai/clip-vit-large-patch14",  # CC3M and VIST (paper default)
    "clip-vit-b-32": "openai/clip-vit-base-patch32",  # MMDialog
}
# Inception names -> torch-fidelity feature layer.
INCEPTION_FEATURES = {"inception": "2048", "inception-logits": "logits_unbiased"}
# Inception weights torch-fidelity (and so torchmetrics) downloads into the torch hub cache.
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"
# clean-fid's TorchScript Inception, which it downloads into /tmp by default.
CLEANFID_WEIGHTS_FILE = "inception-2015-12-05.pt"
CLEANFID_DEFAULT_DIR = "/tmp"


class _Passthrough(nn.Module):
    """Feature "extractor" for inputs that already are features: (N, d) -> (N, d)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features  # read by FrechetInceptionDistance, so no dummy forward

    def forward(self, x: Tensor) -> Tensor:
        return x


def _features(x: Tensor, extractor: nn.Module | None, batch_size: int) -> Tensor:
    """Run ``extractor`` over ``x`` in batches (or return ``x`` as is), as a 2-D float tensor."""
    if extractor is None:
        feats = x
    else:
        with torch.no_grad():
            feats = torch.cat([extractor(chunk) for chunk in x.split(batch_size)])
    if feats.dim() != 2:
        raise ValueError(f"expected features of shape (N, d), got {tuple(feats.shape)}")
    return feats.float()


# ---- FID ----


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2}). The trace of the
    matrix square root is the sum of square roots of the eigenvalues of sigma1 @ sigma2
    (real and non-negative for covariances), computed in float64.
    """
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    mean_term = (mu1 - mu2).square().sum()
    eig = torch.linalg.eigvals(sigma1 @ sigma2).real.clamp(min=0)  # tiny negatives are round-off
    return float(mean_term + sigma1.trace() + sigma2.trace() - 2 * eig.sqrt().sum())


def fid(
    real: Tensor, fake: Tensor, extractor: nn.Module | None = None, batch_size: int = 64
) -> float:
    """FID between two sets, with torchmetrics' ``FrechetInceptionDistance``.

    ``real`` and ``fake`` are (N, d) features, or image batches when ``extractor`` maps
    images to (N, d) features. Each set needs at least two samples; a trustworthy
    estimate needs many more samples than feature dimensions.
    """
    real_f = _features(real, extractor, batch_size)
    fake_f = _features(fake, extractor, batch_size)
    if real_f.shape[1] != fake_f.shape[1]:
        raise ValueError(f"feature sizes differ: real {real_f.shape[1]}, fake {fake_f.shape[1]}")
    # normalize=True: torchmetrics passes float input to a custom module untouched.
    metric = FrechetInceptionDistance(feature=_Passthrough(real_f.shape[1]), normalize=True)
    metric.update(real_f, real=True)
    metric.update(fake_f, real=False)
    return float(metric.compute())


def cleanfid_features(images: Sequence[Image.Image], extractor: Callable[[Tensor], Tensor], batch_size: int) -> np.ndarray:
    """clean-fid's preprocessing (PIL bicubic resize to 299, values in [0, 255]) then ``extractor``."""
    from cleanfid.resize import build_resizer

    resize = build_resizer("clean")
    feats = []
    for start in range(0, len(images), batch_size):
        chunk = [resize(np.asarray(im.convert("RGB"))) for im in images[start:start + batch_size]]  # (299, 299, 3)
        batch = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).float()  # (B, 3, 299, 299)
        with torch.no_grad():
            feats.append(extractor(batch).double().cpu().numpy())
    return np.concatenate(feats)


def clean_fid(
    real: Sequence[Image.Image], fake: Sequence[Image.Image], extractor: Callable[[Tensor], Tensor], batch_size: int = 32
) -> float:
    """FID as clean-fid computes it ("clean" mode): its resizing, its statistics and Fréchet distance.

    ``extractor`` maps (N, 3, 299, 299) float images in [0, 255] to (N, d) features, e.g.
    clean-fid's Inception from :func:`load_cleanfid_inception`.
    """
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {len(real)} real and {len(fake)} generated")
    return clean_fid_from_features(cleanfid_features(real, extractor, batch_size), cleanfid_features(fake, extractor, batch_size))


def clean_fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """clean-fid's FID of two (N, d) feature sets (its statistics and Fréchet distance)."""
    from cleanfid.fid import fid_from_feats

    return float(fid_from_feats(real, fake))


# ---- IS ----


def inception_score(
    logits_or_probs: Tensor,
    splits: int = 10,
    *,
    probs: bool = False,
    extractor: nn.Module | None = None,
    batch_size: int = 64,
) -> tuple[float, float]:
    """Inception Score (mean, std over ``splits``) with torchmetrics' ``InceptionScore``.

    ``logits_or_probs`` is (N, C) classifier logits, or probabilities when ``probs=True``
    (or images when ``extractor`` maps images to logits). IS is 1 for a uniform (or
    constant) classifier and at most C. torchmetrics shuffles the samples before
    splitting, using the global torch RNG.
    """
    feats = _features(logits_or_probs, extractor, batch_size)
    if probs:
        feats = feats.double().clamp_min(1e-12).log()  # softmax(log p) == p
    if feats.shape[0] < splits:
        raise ValueError(f"need at least {splits} samples for {splits} splits, got {feats.shape[0]}")
    # normalize=False: with True, torchmetrics would cast the input to uint8.
    metric = InceptionScore(feature=_Passthrough(feats.shape[1]), splits=splits)
    metric.update(feats)
    mean, std = metric.compute()
    return float(mean), float(std) if splits > 1 else 0.0  # one split has no spread (torch.std gives NaN)


# ---- CLIP-I and CLIP-T ----


def _embeddings(out: Any) -> Tensor:
    """Projected CLIP embeddings from ``get_*_features`` (a tensor, or an output with ``pooler_output``)."""
    return out if isinstance(out, Tensor) else out.pooler_output


def _pixel_values(images: Any, processor: Any | None, device: torch.device) -> Tensor:
    """Images as CLIP ``pixel_values``: used as is when a tensor, else run through the image processor."""
    if isinstance(images, Tensor):
        return images.to(device)
    if processor is None:
        raise ValueError("images that are not pixel_values tensors need a CLIP processor")
    image_processor = getattr(processor, "image_processor", processor)
    return image_processor(images=images, return_tensors="pt")["pixel_values"].to(device)


@torch.no_grad()
def clip_image_embeddings(model: nn.Module, images: Any, processor: Any | None = None) -> Tensor:
    """L2-normalised CLIP image embeddings, (N, D)."""
    device = next(model.parameters()).device
    emb = _embeddings(model.get_image_features(pixel_values=_pixel_values(images, processor, device)))
    return nn.functional.normalize(emb.float(), dim=-1)


@torch.no_grad()
def clip_text_embeddings(model: nn.Module, tokenizer: Any, texts: Sequence[str]) -> Tensor:
    """L2-normalised CLIP text embeddings, (N, D). ``tokenizer`` may be a CLIPProcessor."""
    device = next(model.parameters()).device
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    max_len = model.config.text_config.max_position_embeddings
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    emb = _embeddings(
        model.get_text_features(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device))
    )
    return nn.functional.normalize(emb.float(), dim=-1)


def clip_image_scores(model: nn.Module, images_a: Any, images_b: Any, processor: Any | None = None) -> Tensor:
    """Per-pair CLIP-I: cosine similarity of image i in ``images_a`` and image i in ``images_b``, (N,)."""
    a = clip_image_embeddings(model, images_a, processor)
    b = clip_image_embeddings(model, images_b, processor)
    if a.shape != b.shape:
        raise ValueError(f"need the same number of images in both sets, got {a.shape[0]} and {b.shape[0]}")
    return (a * b).sum(dim=-1)


def clip_image_similarity(model: nn.Module, images_a: Any, images_b: Any, processor: Any | None = None) -> float:
    """CLIP-I: mean over pairs of the cosine similarity of CLIP image embeddings, in [-1, 1]."""
    return float(clip_image_scores(model, images_a, images_b, processor).mean())


def clip_text_scores(model: nn.Module, processor: Any, images: Any, texts: Sequence[str]) -> Tensor:
    """Per-pair CLIP-T: cosine similarity of image i and text i, (N,).

    ``processor`` is a CLIPProcessor, or a tokenizer when ``images`` are already
    ``pixel_values``. Unlike torchmetrics' CLIPScore: no x100 scaling, no clipping at 0.
    """
    img = clip_image_embeddings(model, images, processor)
    txt = clip_text_embeddings(model, processor, texts)
    if img.shape != txt.shape:
        raise ValueError(f"need one text per image, got {img.shape[0]} images and {txt.shape[0]} texts")
    return (img * txt).sum(dim=-1)


def clip_text_similarity(model: nn.Module, processor: Any, images: Any, texts: Sequence[str]) -> float:
    """CLIP-T: mean over pairs of the image-text cosine similarity, in [-1, 1]."""
    return float(clip_text_scores(model, processor, images, texts).mean())


# ---- loading the real extractors ----


def _load_inception(path: str | None, feature: str) -> nn.Module:
    """torchmetrics' Inception-v3 giving ``feature`` (uint8 images in), weights from ``path`` or the torch hub cache."""
    if path is not None and not os.path.isfile(path):
        raise WeightsNotFoundError(
            f"Inception weights file '{path}' does not exist. Download {INCEPTION_WEIGHTS_URL} on a "
            f"machine with internet and pass its path."
        )
    from torchmetrics.image.fid import NoTrainInceptionV3

    try:
        return NoTrainInceptionV3(name="inception-v3-compat", features_list=[feature], feature_extractor_weights_path=path)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "the Inception feature extractor needs torch-fidelity: `pip install torch-fidelity` "
            "(or `pip install torchmetrics[image]`)."
        ) from err
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a truncated download a RuntimeError
        hub = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise WeightsNotFoundError(
            f"could not load the Inception weights '{INCEPTION_WEIGHTS_FILE}': {err.__class__.__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}\n"
            f"Download {INCEPTION_WEIGHTS_URL} on a machine with internet and either put it in {hub} "
            f"(the torch hub cache; TORCH_HOME moves it) or pass its path."
        ) from err


def load_cleanfid_inception(path: str | None = None) -> nn.Module:
    """clean-fid's TorchScript Inception (2048-d features of [0, 255] images at 299 px).

    ``path``: the weights file (named ``inception-2015-12-05.pt``, as clean-fid expects);
    None uses clean-fid's default location and downloads into it when online.
    """
    from cleanfid.downloads_helper import inception_url
    from cleanfid.inception_torchscript import InceptionV3W

    folder = CLEANFID_DEFAULT_DIR if path is None else os.path.dirname(os.path.abspath(path))
    how = (f"Download {inception_url} on a machine with internet and either put it in {CLEANFID_DEFAULT_DIR}/ "
           f"or pass its path (the file must be named {CLEANFID_WEIGHTS_FILE}).")
    if path is not None and (os.path.basename(path) != CLEANFID_WEIGHTS_FILE or not os.path.isfile(path)):
        raise WeightsNotFoundError(f"clean-fid Inception weights '{path}' not found. {how}")
    try:
        return InceptionV3W(folder, download=path is None).eval()
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a truncated file a RuntimeError
        raise WeightsNotFoundError(
            f"could not load clean-fid's Inception weights '{os.path.join(folder, CLEANFID_WEIGHTS_FILE)}': "
            f"{err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''}\n{how}"
        ) from err


def load_feature_extractor(name: str, path: str | None = None) -> tuple[nn.Module, Any | None]:
    """Load a pretrained extractor: ``(model, processor)``; ``processor`` is None for Inception.

    ``name``: ``"inception"`` (2048-d FID features) or ``"inception-logits"`` (IS logits),
    both taking uint8 (N, 3, H, W) images, ``path`` a weights file; or one of
    ``CLIP_MODELS`` (``path`` a local folder or hub id; defaults to the OpenAI id).
    Missing weights raise ``WeightsNotFoundError`` (a ``FileNotFoundError``) naming
    what is missing and how to provide it.
    """
    if name in INCEPTION_FEATURES:
        return _load_inception(path, INCEPTION_FEATURES[name]), None
    if name in CLIP_MODELS:
        from transformers import CLIPModel, CLIPProcessor

        path = path or CLIP_MODELS[name]
        model = load_pretrained(f"CLIP model ({name})", path, CLIPModel.from_pretrained).eval()
        processor = load_pretrained(f"CLIP processor ({name})", path, CLIPProcessor.from_pretrained)
        return model.requires_grad_(False), processor
    raise ValueError(f"unknown feature extractor '{name}'; choose one of {sorted(INCEPTION_FEATURES) + sorted(CLIP_MODELS)}")
