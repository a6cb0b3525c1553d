"""Running a system over a protocol's items and scoring what it produced.

Scores accumulate item by item (features, not images, are kept), so a full test
set never has to sit in memory. :class:`ProtocolOptions` holds the choices of how
(``minigpt5 eval`` and the evaluation callback share it):

- ``draw``: ``free`` (default, the official protocol: model.py:337-382 generates
  freely and metric.py:122, 243 score only the items where an image came) lets the
  system decide whether to draw after the item's input; ``forced`` teacher-forces the
  voken block after the target text, so every item gets an image. Either way every
  result carries ``drawn``, the share of items with an image, and the image metrics
  are over those items. Responses (MMDialog, the synthetic world) are always free.
- ``clip_f1`` (MMDialog): ``official`` (default) pools, per dialogue, the CLIP
  similarity of the response text to the reference text and of the response image to
  the reference image (metric.py:439-503); ``image`` is this project's image-only F1
  (see :func:`clip_f1`).
- ``bleu`` (MMDialog): ``words`` (default) or ``chars``, the official code's
  (:mod:`evaluation.text_metrics`).

What is scored:

- image protocols (``cc3m``, ``vist``): FID (torchmetrics and clean-fid) and IS of the
  generated images, CLIP-I against the ground-truth image, CLIP-T against the target
  text (the caption, as the official CC3M scoring, dataloader.py:77-78; the step's own
  text for VIST, where the official code scores its target, the voken string,
  metric.py:245 with dataloader.py:269).
  FID's reference is, for CC3M, every item's ground truth resized unpadded, as the
  official statistics of all validation images are (metric.py:97-112); for VIST the
  ground truths of the items drawn, white-padded as training targets are (as the
  official loader pads them, dataloader.py:161, and metric.py:258-259 adds them). VIST
  adds FID per story averaged over stories (stories with fewer than two drawn steps
  have no covariance and are skipped, and counted);
- ``mmdialog``: BLEU-1/2, ROUGE-L and Sentence-BERT similarity of the response text
  up to its first image (metric.py:413-414), 0 for an empty response, the CLIP-based
  F1, each averaged per dialogue then across dialogues; IS over all generated images,
  pooled (a dialogue holds too few images for a per-dialogue IS).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Optional, Sequence

import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid

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
from evaluation.text_metrics import BLEU_TOKENS, BleuTokens, sbert_similarity, scoring_text, text_scores
from evaluation.world_scores import WorldScores, fraction, score_turn
from minigpt5.images import pad_to_white_square, to_target_tensor
from minigpt5.progress import progress_bar

log = logging.getLogger(__name__)

Draw = Literal["free", "forced"]
DRAW_MODES = ("free", "forced")
DRAW_PROTOCOLS = ("cc3m", "vist")  # the protocols whose items are drawn (the rest are responses, always free)
ClipF1 = Literal["official", "image"]
CLIP_F1_DEFINITIONS = ("official", "image")


@dataclass(frozen=True)
class ProtocolOptions:
    """How a protocol is run and scored; the defaults are the official code's, except BLEU
    (words, not its characters: see :mod:`evaluation.text_metrics`)."""

    draw: Draw = "free"  # cc3m, vist: the system decides whether to draw; "forced": teacher-forced vokens
    clip_f1: ClipF1 = "official"  # mmdialog: text and image similarities pooled; "image": images only
    bleu: BleuTokens = "words"  # mmdialog: BLEU over words; "chars": over characters, as the official code

    def __post_init__(self) -> None:
        for name, value, allowed in (("draw", self.draw, DRAW_MODES), ("clip_f1", self.clip_f1, CLIP_F1_DEFINITIONS),
                                     ("bleu", self.bleu, BLEU_TOKENS)):
            if value not in allowed:
                raise ValueError(f"ProtocolOptions.{name} must be one of {', '.join(allowed)}; got {value!r}")

    def for_protocol(self, protocol: str) -> "ProtocolOptions":
        """These options as ``protocol`` runs them: its responses are free whatever ``draw`` says."""
        return self if protocol in DRAW_PROTOCOLS else ProtocolOptions("free", self.clip_f1, self.bleu)


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


@dataclass(frozen=True)
class Match:
    """One response's side of the CLIP-based F1 (its text, or its image): whether the
    response and the reference have one, and their CLIP similarity where both do."""

    generated: bool
    referenced: bool
    similarity: float = 0.0


def weighted_f1(matches: Sequence[Match], *, floor: bool) -> Optional[float]:
    """The F1 whose hits are CLIP similarities: their sum over the matches present on both
    sides, divided by the matches the response has (precision) and by those the reference
    has (recall). ``floor`` counts a negative similarity as 0. None when neither side has any."""
    generated = sum(m.generated for m in matches)
    referenced = sum(m.referenced for m in matches)
    if generated == 0 and referenced == 0:
        return None
    hit = sum(max(m.similarity, 0.0) if floor else m.similarity for m in matches if m.generated and m.referenced)
    precision = hit / generated if generated else 0.0
    recall = hit / referenced if referenced else 0.0
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def clip_f1(texts: Sequence[Match], images: Sequence[Match], definition: ClipF1) -> Optional[float]:
    """One dialogue's CLIP-based F1 from its responses' text and image matches (None: left out).

    - ``official`` (metric.py:439-503): the text matches (CLIP text-text similarity of
      response and reference) and the image matches pooled in one F1, similarities as
      they are; a dialogue with nothing on either side scores 0 and counts.
    - ``image``: the image matches only (producing an image where the reference has one,
      each hit weighted by its similarity, a negative one counted as 0); a dialogue with
      no image on either side has nothing to score and is left out.
    """
    if definition == "official":
        return weighted_f1([*texts, *images], floor=False) or 0.0
    if definition == "image":
        return weighted_f1(images, floor=True)
    raise ValueError(f"clip_f1 must be one of {', '.join(CLIP_F1_DEFINITIONS)}; got {definition!r}")


def is_splits(n: int) -> int:
    """torchmetrics' 10 splits when there are enough images (20+), else one."""
    return 10 if n >= 20 else 1


# ---- accumulators ----


def _uint8(images: Sequence[Image.Image], resolution: int, pad: bool = True) -> Tensor:
    """PIL images -> (N, 3, R, R) uint8: padded square and resized as training targets are,
    or (``pad=False``) resized to the square as they are, as the official FID statistics read them."""
    if not pad:
        images = [im.convert("RGB").resize((resolution, resolution), Image.BICUBIC) for im in images]
    pixels = torch.stack([to_target_tensor(im, resolution) for im in images])
    return ((pixels + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


IMAGE_METRICS = ("fid", "clean_fid", "is", "is_std", "clip_i", "clip_t")


@dataclass
class ImageScores:
    """Accumulates an image protocol's features and per-item scores.

    Every item is added, with its generated image or None where the system drew none; the
    metrics are over the items with one. FID's reference is the ground truth of those
    items, or of every item (``reference_all``); ``pad_reference`` white-pads the ground
    truths square as training targets are, else they are resized as they are.
    """

    extractors: Extractors
    resolution: int
    reference_all: bool = False
    pad_reference: bool = True
    batch_size: int = 16
    items: int = 0
    groups: list[str] = field(default_factory=list)  # of the items drawn, in order
    _pending: list[tuple[str, Image.Image, Optional[Image.Image], str]] = field(default_factory=list)
    _feats: dict[str, list[Tensor]] = field(default_factory=lambda: defaultdict(list))

    def add(self, group: str, real: Image.Image, fake: Optional[Image.Image], text: str) -> None:
        self.items += 1
        self._pending.append((group, real, fake, text))
        if len(self._pending) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        drawn = [(g, real, fake, text) for g, real, fake, text in pending if fake is not None]
        reference = [real for _, real, _, _ in (pending if self.reference_all else drawn)]
        ex, feats = self.extractors, self._feats
        if reference:
            feats["fid_real"].append(ex.fid_features(_uint8(reference, self.resolution, self.pad_reference)).double())
            clean = [pad_to_white_square(im) for im in reference] if self.pad_reference else reference
            feats["clean_real"].append(torch.from_numpy(cleanfid_features(clean, ex.cleanfid_features, len(clean))))
        if not drawn:
            return
        groups, reals, fakes, texts = zip(*drawn)
        fake8 = _uint8(fakes, self.resolution)
        feats["fid_fake"].append(ex.fid_features(fake8).double())
        feats["is_logits"].append(ex.is_logits(fake8).double())
        feats["clean_fake"].append(torch.from_numpy(cleanfid_features(list(fakes), ex.cleanfid_features, len(fakes))))
        fake_emb = clip_image_embeddings(ex.clip, list(fakes), ex.clip_processor)
        real_emb = clip_image_embeddings(ex.clip, list(reals), ex.clip_processor)
        text_emb = clip_text_embeddings(ex.clip, ex.clip_processor, list(texts))
        feats["clip_i"].append((fake_emb * real_emb).sum(-1).double())
        feats["clip_t"].append((fake_emb * text_emb).sum(-1).double())
        self.groups += groups

    def result(self, per_group: bool) -> dict[str, Any]:
        """The metrics over the drawn items (None with fewer than 2: FID needs a covariance).

        ``per_group`` adds the per-story FID, which pairs each drawn item with its own
        ground truth, so it needs the reference to be the drawn items."""
        if per_group and self.reference_all:
            raise ValueError("per-group FID pairs each drawn item with its ground truth: use reference_all=False")
        self._flush()
        n = len(self.groups)
        out: dict[str, Any] = {"items": self.items}
        if n < 2:
            log.warning("%d of %d items have a generated image: image metrics need at least 2", n, self.items)
            out.update(dict.fromkeys(IMAGE_METRICS))
            if per_group:
                out.update(fid_per_story=None, stories_scored=0, stories_skipped=len(set(self.groups)))
            return out
        f = {k: torch.cat(v) for k, v in self._feats.items()}
        is_mean, is_std = inception_score(f["is_logits"], splits=is_splits(n))
        out.update({
            "fid": fid(f["fid_real"], f["fid_fake"]),
            "clean_fid": clean_fid_from_features(f["clean_real"].numpy(), f["clean_fake"].numpy()),
            "is": is_mean,
            "is_std": is_std,
            "clip_i": float(f["clip_i"].mean()),
            "clip_t": float(f["clip_t"].mean()),
        })
        if per_group:
            out["fid_per_story"], out["stories_scored"] = per_group_fid(self.groups, f["fid_real"], f["fid_fake"])
            out["stories_skipped"] = len(set(self.groups)) - out["stories_scored"]
        return out


TEXT_METRICS = ("bleu1", "bleu2", "rouge_l", "sbert")


@dataclass
class DialogueScores:
    """Accumulates MMDialog responses: text scores, the CLIP-F1's matches, IS logits.

    A response's text is read as the official scoring reads it (:func:`scoring_text`; the
    system gives the text up to its first image); against a reference text, an empty one
    scores 0 on every text metric (metric.py:445-449). Where the response has an image and
    the reference has some, the image match's similarity is to the reference image closest
    to it (``clip_f1="image"``) or to the first (``official``: its loader keeps a turn's first).
    """

    extractors: Extractors
    resolution: int
    clip_f1: ClipF1 = "official"
    bleu: BleuTokens = "words"
    text_rows: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    text_matches: dict[str, list[Match]] = field(default_factory=lambda: defaultdict(list))
    image_matches: dict[str, list[Match]] = field(default_factory=lambda: defaultdict(list))
    is_logits: list[Tensor] = field(default_factory=list)
    responses: int = 0
    no_reference_text: int = 0

    def add(self, item: EvalItem, text: str, images: list[Image.Image]) -> None:
        ex = self.extractors
        self.responses += 1
        hypothesis, reference = scoring_text(text), scoring_text(item.text)
        if reference and hypothesis:
            scores = text_scores(hypothesis, reference, self.bleu)
            scores["sbert"] = float(sbert_similarity(ex.sentence, [hypothesis], [reference])[0])
            self.text_rows.append((item.group, scores))
        elif reference:
            self.text_rows.append((item.group, dict.fromkeys(TEXT_METRICS, 0.0)))  # nothing written
        else:
            self.no_reference_text += 1  # image-only reference: no text to score against
        sim = 0.0
        if hypothesis and reference and self.clip_f1 == "official":
            pair = clip_text_embeddings(ex.clip, ex.clip_processor, [hypothesis, reference])  # (2, D)
            sim = float(pair[0] @ pair[1])
        self.text_matches[item.group].append(Match(bool(hypothesis), bool(reference), sim))
        sim = 0.0
        if images and item.images:
            gen = clip_image_embeddings(ex.clip, images[:1], ex.clip_processor)
            refs = item.images if self.clip_f1 == "image" else item.images[:1]
            sim = float((clip_image_embeddings(ex.clip, refs, ex.clip_processor) @ gen[0]).max())
        self.image_matches[item.group].append(Match(bool(images), bool(item.images), sim))
        if images:
            self.is_logits.append(ex.is_logits(_uint8(images, self.resolution)).double())

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"items": self.responses, "dialogues": len(self.image_matches),
                               "responses_without_reference_text": self.no_reference_text}
        groups = [g for g, _ in self.text_rows]
        for key in TEXT_METRICS:
            out[key] = mean_of_group_means(groups, [s[key] for _, s in self.text_rows])
        f1s = [clip_f1(self.text_matches[g], matches, self.clip_f1) for g, matches in self.image_matches.items()]
        scored = [v for v in f1s if v is not None]
        out["clip_f1"] = sum(scored) / len(scored) if scored else None
        out["dialogues_without_images"] = sum(
            not any(m.generated or m.referenced for m in matches) for matches in self.image_matches.values())
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
    *, options: ProtocolOptions = ProtocolOptions(), keep_examples: int = 8, progress: bool = True,
    total: Optional[int] = None,
) -> Run:
    """Run ``system`` over ``items`` and score it by ``protocol``'s rules, as ``options`` say.

    Image protocols call the system's ``draw_free`` (``draw="free"``: its text and images
    after the item's input) or ``draw`` (``"forced"``: the image of the teacher-forced
    vokens); ``mmdialog`` calls ``respond(item, until_image=True)`` (the response's text up
    to its first image, and its images), the synthetic world's protocols ``respond(item)``.
    Every result has ``drawn``: the share of items the system produced an image for."""
    world = protocol in WORLD_PROTOCOLS
    dialogue = protocol == "mmdialog"
    if (dialogue or world) and not hasattr(system, "respond"):
        raise ValueError(f"{system.name} cannot write free responses; the {protocol} protocol needs one that does")
    if options.draw != "free" and protocol not in DRAW_PROTOCOLS:
        raise ValueError(f"draw '{options.draw}' is for the {' and '.join(DRAW_PROTOCOLS)} protocols; "
                         f"{protocol} scores free responses, whose decision to draw is part of the score")
    if world:
        scores: Any = WorldScores()
    elif dialogue:
        scores = DialogueScores(extractors, resolution, clip_f1=options.clip_f1, bleu=options.bleu)
    else:  # CC3M: FID against every item's ground truth, unpadded; VIST: the drawn items', padded
        scores = ImageScores(extractors, resolution, reference_all=protocol == "cc3m", pad_reference=protocol != "cc3m")
    examples = []
    count = drawn = 0
    for item in progress_bar(items, desc=f"{system.name} on {protocol}", unit="item", total=total, enabled=progress):
        if world:
            text, images = system.respond(item)
            scores.add(score_turn(item.rules, [t for t, _ in item.context], text, images))
        elif dialogue:
            text, images = system.respond(item, until_image=True)
            scores.add(item, text, images)
        else:
            text, images = system.draw_free(item) if options.draw == "free" else ("", [system.draw(item)])
            scores.add(item.group, item.images[0], images[0] if images else None, item.text)
        count, drawn = count + 1, drawn + bool(images)
        if len(examples) < keep_examples:
            examples.append((item, images, text))
    metrics = scores.result() if dialogue or world else scores.result(per_group=protocol == "vist")
    return Run({**metrics, "drawn": fraction(drawn, count)}, examples)


def comparison_grid(run: Run, resolution: int) -> Optional[Tensor]:
    """(3, H, W) grid in [0, 1]: the kept examples' ground truth above what was generated (None without pairs)."""
    pairs = [(item.images[0], images[0]) for item, images, _ in run.examples if item.images and images]
    if not pairs:
        return None
    tensors = torch.stack([to_target_tensor(im, resolution) for row in zip(*pairs) for im in row])
    return make_grid((tensors + 1) / 2, nrow=len(pairs), padding=1, pad_value=1.0)
