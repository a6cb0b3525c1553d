"""Running a system over a protocol's items and scoring what it produced.

Scores accumulate item by item (features, not images, are kept), so a full test
set never has to sit in memory:

- image protocols (``cc3m``, ``vist``): FID (torchmetrics and clean-fid) and IS of the
  generated images, CLIP-I against the ground-truth image, CLIP-T against the target
  text (the step's own text; the paper's code scores the voken string by mistake);
  VIST adds FID per story averaged over stories (stories with fewer than two scored
  steps have no covariance and are skipped, and counted);
- ``mmdialog``: BLEU-1/2, ROUGE-L and Sentence-BERT similarity of the response text,
  the CLIP-weighted F1 of producing an image where the reference has one, each averaged
  per dialogue then across dialogues; IS over all generated images, pooled (a
  dialogue holds too few images for a per-dialogue IS).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid
from tqdm import tqdm

from evaluation.extractors import Extractors
from evaluation.image_metrics import (
    clean_fid_from_features,
    cleanfid_features,
    clip_image_embeddings,
    clip_text_embeddings,
    fid,
    frechet_distance,
    inception_score,
)
from evaluation.items import WORLD_PROTOCOLS, EvalItem
from evaluation.text_metrics import sbert_similarity, text_scores
from evaluation.world_scores import WorldScores, score_turn
from minigpt5.images import to_target_tensor

log = logging.getLogger(__name__)


# ---- pure aggregation rules (tested against hand computations) ----


def mean_of_group_means(groups: Sequence[str], values: Sequence[float]) -> Optional[float]:
    """Average ``values`` within each group, then across groups (None without values)."""
    per_group: dict[str, list[float]] = defaultdict(list)
    for g, v in zip(groups, values):
        per_group[g].append(v)
    if not per_group:
        return None
    return sum(sum(v) / len(v) for v in per_group.values()) / len(per_group)


def per_group_fid(groups: Sequence[str], real: Tensor, fake: Tensor) -> tuple[Optional[float], int]:
    """FID within each group of at least two items, averaged over those groups -> (mean, groups used).

    ``real`` and ``fake`` are (N, d) features aligned with ``groups``. The closed form is
    used directly: a handful of samples gives a singular covariance, which it handles.
    """
    rows: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        rows[g].append(i)
    scores = []
    for idx in rows.values():
        if len(idx) < 2:
            continue
        r, f = real[idx].double(), fake[idx].double()
        scores.append(frechet_distance(r.mean(0), torch.cov(r.T), f.mean(0), torch.cov(f.T)))
    return (sum(scores) / len(scores) if scores else None), len(scores)


def clip_f1(turns: Sequence[tuple[int, int, float]]) -> Optional[float]:
    """The CLIP-weighted F1 of image responses in one dialogue.

    ``turns``: per response (generated image count, reference image count, CLIP similarity
    of the generated image to the reference, used where both have images). A turn
    where both have images scores ``max(sim, 0)``; precision divides the summed scores
    by the turns with a generated image, recall by the turns with a reference image.
    None when neither side has any image (nothing to score); 0 when only one side does.
    """
    generated = sum(1 for g, _, _ in turns if g > 0)
    referenced = sum(1 for _, r, _ in turns if r > 0)
    if generated == 0 and referenced == 0:
        return None
    hit = sum(max(sim, 0.0) for g, r, sim in turns if g > 0 and r > 0)
    precision = hit / generated if generated else 0.0
    recall = hit / referenced if referenced else 0.0
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def is_splits(n: int) -> int:
    """torchmetrics' 10 splits when there are enough images (20+), else one."""
    return 10 if n >= 20 else 1


# ---- accumulators ----


def _uint8(images: Sequence[Image.Image], resolution: int) -> Tensor:
    """PIL images -> (N, 3, R, R) uint8, padded square and resized as training targets are."""
    pixels = torch.stack([to_target_tensor(im, resolution) for im in images])
    return ((pixels + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


@dataclass
class ImageScores:
    """Accumulates a draw protocol's features and per-item scores."""

    extractors: Extractors
    resolution: int
    batch_size: int = 16
    groups: list[str] = field(default_factory=list)
    _pending: list[tuple[str, Image.Image, Image.Image, str]] = field(default_factory=list)
    _feats: dict[str, list[Tensor]] = field(default_factory=lambda: defaultdict(list))

    def add(self, group: str, real: Image.Image, fake: Image.Image, text: str) -> None:
        self._pending.append((group, real, fake, text))
        if len(self._pending) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        groups, reals, fakes, texts = zip(*self._pending)
        self._pending = []
        ex = self.extractors
        real8, fake8 = _uint8(reals, self.resolution), _uint8(fakes, self.resolution)
        feats = self._feats
        feats["fid_real"].append(ex.fid_features(real8).double())
        feats["fid_fake"].append(ex.fid_features(fake8).double())
        feats["is_logits"].append(ex.is_logits(fake8).double())
        feats["clean_real"].append(torch.from_numpy(cleanfid_features(list(reals), ex.cleanfid_features, len(reals))))
        feats["clean_fake"].append(torch.from_numpy(cleanfid_features(list(fakes), ex.cleanfid_features, len(fakes))))
        fake_emb = clip_image_embeddings(ex.clip, list(fakes), ex.clip_processor)
        real_emb = clip_image_embeddings(ex.clip, list(reals), ex.clip_processor)
        text_emb = clip_text_embeddings(ex.clip, ex.clip_processor, list(texts))
        feats["clip_i"].append((fake_emb * real_emb).sum(-1).double())
        feats["clip_t"].append((fake_emb * text_emb).sum(-1).double())
        self.groups += groups

    def result(self, per_group: bool) -> dict[str, Any]:
        self._flush()
        n = len(self.groups)
        if n < 2:
            raise ValueError(f"image metrics need at least 2 scored items, got {n}")
        f = {k: torch.cat(v) for k, v in self._feats.items()}
        is_mean, is_std = inception_score(f["is_logits"], splits=is_splits(n))
        out: dict[str, Any] = {
            "items": n,
            "fid": fid(f["fid_real"], f["fid_fake"]),
            "clean_fid": clean_fid_from_features(f["clean_real"].numpy(), f["clean_fake"].numpy()),
            "is": is_mean,
            "is_std": is_std,
            "clip_i": float(f["clip_i"].mean()),
            "clip_t": float(f["clip_t"].mean()),
        }
        if per_group:
            out["fid_per_story"], out["stories_scored"] = per_group_fid(self.groups, f["fid_real"], f["fid_fake"])
            out["stories_skipped"] = len(set(self.groups)) - out["stories_scored"]
        return out


@dataclass
class DialogueScores:
    """Accumulates MMDialog responses: text scores, image-response F1 terms, IS logits."""

    extractors: Extractors
    resolution: int
    text_rows: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    image_turns: dict[str, list[tuple[int, int, float]]] = field(default_factory=lambda: defaultdict(list))
    is_logits: list[Tensor] = field(default_factory=list)
    responses: int = 0
    no_reference_text: int = 0

    def add(self, item: EvalItem, text: str, images: list[Image.Image]) -> None:
        ex = self.extractors
        self.responses += 1
        if item.text.strip():
            scores = text_scores(text, item.text)
            scores["sbert"] = float(sbert_similarity(ex.sentence, [text], [item.text])[0])
            self.text_rows.append((item.group, scores))
        else:
            self.no_reference_text += 1  # image-only reference: no text to score against
        sim = 0.0
        if images and item.images:
            gen = clip_image_embeddings(ex.clip, images[:1], ex.clip_processor)
            ref = clip_image_embeddings(ex.clip, item.images, ex.clip_processor)
            sim = float((ref @ gen[0]).max())  # the reference image the response is closest to
        self.image_turns[item.group].append((len(images), len(item.images), sim))
        if images:
            self.is_logits.append(ex.is_logits(_uint8(images, self.resolution)).double())

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"items": self.responses, "dialogues": len(self.image_turns),
                               "responses_without_reference_text": self.no_reference_text}
        groups = [g for g, _ in self.text_rows]
        for key in ("bleu1", "bleu2", "rouge_l", "sbert"):
            out[key] = mean_of_group_means(groups, [s[key] for _, s in self.text_rows])
        f1s = [v for v in (clip_f1(t) for t in self.image_turns.values()) if v is not None]
        out["clip_f1"] = sum(f1s) / len(f1s) if f1s else None
        out["dialogues_without_images"] = len(self.image_turns) - len(f1s)
        logits = torch.cat(self.is_logits) if self.is_logits else torch.zeros(0, 1)
        out["generated_images"] = len(logits)
        out["is"], out["is_std"] = inception_score(logits, splits=is_splits(len(logits))) if len(logits) >= 2 else (None, None)
        return out


# ---- running ----


@dataclass
class Run:
    """A system's scores under one protocol, and a few (ground truth, generated) pairs to look at."""

    metrics: dict[str, Any]
    examples: list[tuple[EvalItem, list[Image.Image], str]]


def run_protocol(
    system: Any, items: Iterable[EvalItem], protocol: str, extractors: Extractors, resolution: int,
    *, keep_examples: int = 8, progress: bool = True, total: Optional[int] = None,
) -> Run:
    """Run ``system`` over ``items`` and score it by ``protocol``'s rules.

    ``mmdialog`` and the synthetic world's protocols need a system that writes (``respond``)."""
    world = protocol in WORLD_PROTOCOLS
    dialogue = protocol == "mmdialog"
    if (dialogue or world) and not hasattr(system, "respond"):
        raise ValueError(f"{system.name} cannot write free responses; the {protocol} protocol needs one that does")
    if world:
        scores: Any = WorldScores()
    else:
        scores = DialogueScores(extractors, resolution) if dialogue else ImageScores(extractors, resolution)
    examples = []
    for item in tqdm(items, desc=f"{system.name} on {protocol}", total=total, disable=not progress, unit="item"):
        if world:
            text, images = system.respond(item)
            scores.add(score_turn(item.rules, [t for t, _ in item.context], text, images))
        elif dialogue:
            text, images = system.respond(item)
            scores.add(item, text, images)
        else:
            text, images = "", [system.draw(item)]
            scores.add(item.group, item.images[0], images[0], item.text)
        if len(examples) < keep_examples:
            examples.append((item, images, text))
    metrics = scores.result() if dialogue or world else scores.result(per_group=protocol == "vist")
    return Run(metrics, examples)


def comparison_grid(run: Run, resolution: int) -> Optional[Tensor]:
    """(3, H, W) grid in [0, 1]: the kept examples' ground truth above what was generated (None without pairs)."""
    pairs = [(item.images[0], images[0]) for item, images, _ in run.examples if item.images and images]
    if not pairs:
        return None
    tensors = torch.stack([to_target_tensor(im, resolution) for row in zip(*pairs) for im in row])
    return make_grid((tensors + 1) / 2, nrow=len(pairs), padding=1, pad_value=1.0)
