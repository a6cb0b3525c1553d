"""Metric maths with small extractors that need no weights; missing real weights fail clearly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import CLIPConfig, CLIPModel

from evaluation.image_metrics import (
    CLIP_MODELS,
    clip_image_similarity,
    clip_text_scores,
    clip_text_similarity,
    fid,
    frechet_distance,
    inception_score,
    load_feature_extractor,
)
from minigpt5.loading import WeightsNotFoundError


# ---- Fréchet distance and FID ----


def _random_cov(d: int, gen: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    return a @ a.T / d + 0.5 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_closed_forms():
    gen = torch.Generator().manual_seed(0)
    d = 6
    mu, cov = torch.randn(d, generator=gen, dtype=torch.float64), _random_cov(d, gen)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8)
    mu2 = mu + torch.arange(d, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    assert frechet_distance(mu, eye, mu2, eye) == pytest.approx(float((mu - mu2).square().sum()), rel=1e-10)
    # Scaled identities: Tr(a I + b I - 2 sqrt(ab) I) = d (sqrt(a) - sqrt(b))^2.
    assert frechet_distance(mu, 4 * eye, mu, eye) == pytest.approx(d * (2 - 1) ** 2, rel=1e-10)


def test_fid_of_a_set_against_itself_is_zero():
    feats = torch.randn(500, 8, generator=torch.Generator().manual_seed(1))
    assert fid(feats, feats) == pytest.approx(0.0, abs=1e-3)


def test_fid_matches_closed_form_for_known_gaussians():
    gen = torch.Generator().manual_seed(2)
    d, n = 4, 20000
    mu1, mu2 = torch.zeros(d, dtype=torch.float64), torch.tensor([1.0, -0.5, 0.0, 2.0], dtype=torch.float64)
    cov1, cov2 = _random_cov(d, gen), _random_cov(d, gen)
    x1 = torch.distributions.MultivariateNormal(mu1, cov1).sample((n,))
    x2 = torch.distributions.MultivariateNormal(mu2, cov2).sample((n,))
    expected = frechet_distance(mu1, cov1, mu2, cov2)
    # Estimation error of means and covariances from n samples is O(sqrt(d / n)) per entry;
    # 5% of a distance of ~5.5 is several times that, while a wrong formula (e.g. no cross term) is far off.
    got = fid(x1.float(), x2.float())
    assert got == pytest.approx(expected, rel=0.05)
    # And it agrees with the closed form applied to the sample statistics.
    sample = frechet_distance(x1.mean(0), torch.cov(x1.T), x2.mean(0), torch.cov(x2.T))
    assert got == pytest.approx(sample, rel=1e-3)


def test_fid_runs_images_through_an_extractor():
    gen = torch.Generator().manual_seed(3)
    extractor = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5)).requires_grad_(False)
    real = torch.rand(64, 3, 8, 8, generator=gen)
    fake = real.clone()
    fake[:, 0] += 0.5  # shift one channel: features move, so FID > 0
    assert fid(real, real, extractor=extractor, batch_size=16) == pytest.approx(0.0, abs=1e-3)
    assert fid(real, fake, extractor=extractor, batch_size=16) > 1e-2
    with pytest.raises(ValueError, match="feature sizes differ"):
        fid(torch.randn(10, 3), torch.randn(10, 4))


# ---- Inception Score ----


def test_inception_score_of_a_uniform_classifier_is_one():
    mean, std = inception_score(torch.zeros(100, 10), splits=5)
    assert mean == pytest.approx(1.0, abs=1e-6) and std == pytest.approx(0.0, abs=1e-6)
    mean, _ = inception_score(torch.full((100, 10), 0.1), splits=5, probs=True)
    assert mean == pytest.approx(1.0, abs=1e-6)


def test_inception_score_of_confident_diverse_predictions():
    c = 10
    labels = torch.arange(200) % c  # every class equally often, so each split stays balanced-ish
    onehot = nn.functional.one_hot(labels, c).float()
    mean, _ = inception_score(onehot, splits=1, probs=True)
    assert mean == pytest.approx(c, rel=1e-4)  # the maximum: exp(H(y)) with H(y) = log C
    mean, _ = inception_score(onehot * 5.0, splits=4)  # softmax of logits: confident but not one-hot
    assert 1.0 < mean <= c
    mean, _ = inception_score(nn.functional.one_hot(torch.zeros(50, dtype=torch.long), c).float(), splits=2, probs=True)
    assert mean == pytest.approx(1.0, abs=1e-4)  # confident but not diverse


# ---- CLIP-I and CLIP-T ----


class _CharTokenizer:
    """Stands in for CLIPTokenizer: bytes as ids, then an end token (the highest id, where CLIP pools)."""

    vocab = 99

    def __call__(self, texts, padding=True, truncation=True, max_length=16, return_tensors="pt"):
        rows = [[1 + b % (self.vocab - 2) for b in t.encode()][: max_length - 1] + [self.vocab - 1] for t in texts]
        width = max(map(len, rows))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def tiny_clip() -> CLIPModel:
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=_CharTokenizer.vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8),
        projection_dim=16,
    )
    return CLIPModel(config).eval()


def test_clip_image_similarity_of_identical_images_is_one(tiny_clip):
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    assert clip_image_similarity(tiny_clip, images, images.clone()) == pytest.approx(1.0, abs=1e-5)
    other = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    assert -1.0 <= clip_image_similarity(tiny_clip, images, other) < 1.0 - 1e-4


def test_clip_text_similarity_is_the_image_text_cosine(tiny_clip):
    tok = _CharTokenizer()
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    texts = ["a red bird", "two dogs on a beach", "city at night"]
    scores = clip_text_scores(tiny_clip, tok, images, texts)
    assert scores.shape == (3,) and bool(((scores >= -1) & (scores <= 1)).all())
    with torch.no_grad():
        enc = tok(texts)
        img = tiny_clip.get_image_features(pixel_values=images).pooler_output
        txt = tiny_clip.get_text_features(**enc).pooler_output
    manual = nn.functional.cosine_similarity(img, txt, dim=-1)
    torch.testing.assert_close(scores, manual, atol=1e-5, rtol=1e-5)
    assert clip_text_similarity(tiny_clip, tok, images, texts) == pytest.approx(float(manual.mean()), abs=1e-5)
    # Pairing matters: each text scored against a different image gives different values.
    swapped = clip_text_scores(tiny_clip, tok, images.roll(1, dims=0), texts)
    assert not torch.allclose(scores, swapped)


# ---- missing weights ----


@pytest.mark.parametrize("name", sorted(CLIP_MODELS))
def test_missing_clip_weights_name_the_model(name):
    with pytest.raises(WeightsNotFoundError, match=CLIP_MODELS[name]):
        load_feature_extractor(name)


def test_missing_inception_weights_name_the_file(tmp_path):
    path = str(tmp_path / "inception.pth")
    with pytest.raises(WeightsNotFoundError, match="inception.pth"):
        load_feature_extractor("inception", path)


def test_offline_inception_download_fails_clearly():
    # Without a path torchmetrics downloads via torch-fidelity: offline, that fails; if
    # torch-fidelity is absent the error says how to install it.
    with pytest.raises((WeightsNotFoundError, ModuleNotFoundError), match="weights-inception|torch-fidelity"):
        load_feature_extractor("inception")


def test_unknown_extractor_name():
    with pytest.raises(ValueError, match="clip-vit-l-14"):
        load_feature_extractor("resnet")


def test_inception_download_failure_is_rewrapped(monkeypatch):
    import urllib.error

    import torchmetrics.image.fid as tm_fid

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(tm_fid, "NoTrainInceptionV3", offline)
    with pytest.raises(WeightsNotFoundError, match="weights-inception-2015-12-05-6726825d.pth") as info:
        load_feature_extractor("inception-logits")
    assert "torch hub cache" in str(info.value) and isinstance(info.value, FileNotFoundError)


def test_clip_image_similarity_preprocesses_pil_images(tiny_clip):
    from PIL import Image
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    gen = torch.Generator().manual_seed(7)
    pils = [Image.fromarray(torch.randint(0, 256, (24, 24, 3), generator=gen, dtype=torch.uint8).numpy()) for _ in range(2)]
    assert clip_image_similarity(tiny_clip, pils, [p.copy() for p in pils], processor) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="processor"):
        clip_image_similarity(tiny_clip, pils, pils)
