"""Interleaved generation: write text until the LLM emits ``[IMG0]``, draw the image, go on.

One story, one sequence (batch size 1), the prompt worded by the model's template
(:mod:`minigpt5.templates`; plain shown, where the end marker is ``</s>``)::

    <s> prompt (with each <image> as a run of <ImageHere>) text ... [IMG0] .. [IMG7] <ImageHere> x k text ... </s>

The LLM writes one token per step from its KV cache. When the sampled token is
``[IMG0]``, the other vokens are appended (never sampled: training gives them no
text loss, see ``minigpt5.sequences``), and the last-layer hidden states at the
positions that *predict* the vokens -- the state that produced ``[IMG0]``, then the
states of ``[IMG0]`` .. ``[IMG{n-2}]``, exactly what :meth:`MiniGPT5.voken_features`
reads in training -- go through the mapper into guided diffusion. With a vision
tower, the state after the last voken decides first whether the turn ends (the end
marker, as training puts it right after a target's voken block); if not, the new image
is read back as context through its ``<ImageHere>`` run, as an input image would be,
and writing continues until the end marker (or ``</s>``) or the token budget. The end
marker is left out of the returned text.

Everything random (token sampling and the diffusion noise) is drawn from one
``torch.Generator`` seeded by :attr:`GenerationConfig.seed`, so a seed fixes the story.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

import torch
from PIL import Image

from minigpt5.config import SAMPLER_NAMES
from minigpt5.images import to_pil_images, to_target_tensor
from minigpt5.progress import progress_bar
from minigpt5.sequences import Turn
from minigpt5.templates import Conversation, EndMarker
from minigpt5.vision import normalise_for_tower

if TYPE_CHECKING:  # the model module imports diffusers; keep this one light to import
    from minigpt5.model import MiniGPT5

IMAGE_MARKER = "<image>"  # where an input image goes in a prompt

Segment = Union[str, Image.Image]


@dataclass
class GenerationConfig:
    """Decoding and sampling settings of one generation."""

    max_new_tokens: int = 256  # tokens the LLM writes, appended vokens included (a voken block is never cut)
    min_new_tokens: int = 0  # </s> and the end marker are masked until this many tokens are written
    temperature: float = 1.0  # 0 means greedy
    do_sample: bool = True  # False means greedy, whatever the temperature
    top_p: float = 1.0  # nucleus sampling: smallest set of tokens with this much probability
    repetition_penalty: float = 1.0  # CTRL-style: a seen token's logit divided (> 0) or multiplied (< 0); 1 = off
    # Which tokens count as seen: "generated", the ones written so far, [IMG0] included (the official
    # code's, whose HF generate is given only embeddings, so its input_ids are the new tokens); or
    # "context", every text token of the sequence, prompt included (no vokens).
    penalty_scope: Literal["generated", "context"] = "generated"
    max_images: Optional[int] = None  # [IMG0] is masked once this many images are drawn; None = no limit; 0 = text only
    # Write [IMG0] until an image is drawn, i.e. first: the official force_generation, which sets its
    # logit to 10x the top one until [IMG0] is written (minigpt4/models/generation_helper.py:208-211).
    force_image: bool = False
    guidance_scale: Optional[float] = None  # None -> model.cfg.guidance.scale
    num_inference_steps: Optional[int] = None  # None -> model.cfg.guidance.num_inference_steps
    sampler: Optional[str] = None  # None -> model.cfg.guidance.sampler (a minigpt5.guidance.SAMPLERS name)
    seed: int = 42  # one generator for token sampling and diffusion
    use_cache: bool = True  # False recomputes the whole prefix for every token (reference, benchmark)

    def __post_init__(self) -> None:
        checks = [
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.min_new_tokens >= 0, f"min_new_tokens must be >= 0, got {self.min_new_tokens}"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}"),
            (self.penalty_scope in ("generated", "context"),
             f"penalty_scope must be generated or context, got {self.penalty_scope!r}"),
            (self.max_images is None or self.max_images >= 0, f"max_images must be >= 0 or None, got {self.max_images}"),
            (not (self.force_image and self.max_images == 0), "force_image asks for an image but max_images is 0"),
            (self.sampler is None or self.sampler in SAMPLER_NAMES,
             f"sampler must be one of {', '.join(SAMPLER_NAMES)} or None, got {self.sampler!r}"),
            (self.num_inference_steps is None or self.num_inference_steps >= 1,
             f"num_inference_steps must be >= 1 or None, got {self.num_inference_steps}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"GenerationConfig: {message}")

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0


@dataclass
class GenerationResult:
    """One generated story.

    ``segments`` alternate text (``str``) and generated images (``PIL.Image``) in order.
    ``token_ids`` are the tokens the LLM wrote, each image's vokens included (``[IMG0]``
    sampled, the rest appended) and the end marker if reached. ``sequence_ids`` is the whole
    sequence: prompt, written tokens, and each image's ``<ImageHere>`` run, with
    ``context_pixels`` (M, 3, S, S) the tower-normalised images of those runs, input
    images first, in order (None without images), so that
    ``model.llm_forward(sequence_ids[None], mask, context_pixels)`` recomputes the story (an
    image after which the turn ended keeps its voken block there: ``</s>`` followed it).
    ``voken_features`` holds the (n, D) features each image was drawn from.
    """

    prompt: str
    input_images: list[Image.Image]
    segments: list[Segment]
    token_ids: list[int]
    sequence_ids: list[int]
    prompt_length: int  # sequence_ids[:prompt_length] is the encoded prompt
    context_pixels: Optional[torch.Tensor]
    voken_features: list[torch.Tensor]
    settings: dict[str, Any]  # GenerationConfig with the model's defaults filled in
    stopped: str  # "eos" (the end marker or </s>) or "max_new_tokens"

    @property
    def images(self) -> list[Image.Image]:
        return [s for s in self.segments if isinstance(s, Image.Image)]

    @property
    def text(self) -> str:
        """The text segments joined by single spaces (a word-level tokenizer decodes a segment
        without the leading space a byte-level one keeps)."""
        return " ".join(s.strip() for s in self.segments if isinstance(s, str) and s.strip())


# ---- the prompt ----

def check_image_markers(prompt: str, num_images: int) -> None:
    """Raise unless the prompt has one ``<image>`` marker per input image."""
    markers = prompt.count(IMAGE_MARKER)
    if markers != num_images:
        raise ValueError(
            f"the prompt has {markers} {IMAGE_MARKER} marker(s) but {num_images} image(s) were given; "
            f"put one {IMAGE_MARKER} in the prompt where each input image goes"
        )


def check_plain_text(model: "MiniGPT5", text: str) -> None:
    """Raise if ``text`` holds the image placeholder or a voken token: read as such, it would
    stand for an image that is not there (input images go where ``<image>`` markers are)."""
    forbidden = {model.image_token_id, *model.voken_ids}
    if text and forbidden & set(model.tokenizer(text, add_special_tokens=False).input_ids):
        raise ValueError(
            f"the text may not contain the image placeholder or voken tokens; images are given as images "
            f"(in a prompt, {IMAGE_MARKER} marks where each goes) (got {text!r})"
        )


def encode_prompt(
    model: "MiniGPT5", prompt: str, images: Optional[list[Image.Image]] = None
) -> tuple[list[int], Optional[torch.Tensor]]:
    """The prompt as the model's template words a user's turn before the model's reply, each
    ``<image>`` replaced by the tower's ``<ImageHere>`` run (plain: ``<s>``, ``template.prompt``,
    then the prompt); and the input images normalised for the tower (M, 3, S, S), or None."""
    images = list(images or [])
    check_image_markers(prompt, len(images))
    pieces = prompt.split(IMAGE_MARKER)
    if images:
        model.require_vision(f"{len(images)} input image(s) given")
    for piece in pieces:
        check_plain_text(model, piece)
    context = [Turn(piece, 1) for piece in pieces[:-1]] + [Turn(pieces[-1])]  # each <image> follows its text
    ids = model.template.source_ids(Conversation("story", Turn(""), context))
    if not images:
        return ids, None
    size = model.vision.image_size
    pixels = torch.stack([to_target_tensor(image, size) for image in images])  # (M, 3, S, S) in [-1, 1]
    return ids, normalise_for_tower(pixels, size)


# ---- the LLM, with or without a KV cache ----

class _Reader:
    """Feeds new tokens to the LLM; returns the next-token logits and the new positions' states.

    With ``use_cache`` only the new tokens' embeddings are fed, with the KV cache of all
    before them; without, the whole sequence is re-embedded and recomputed each time.
    Both return the same thing, so the decoding loop above them is one.
    """

    def __init__(self, model: "MiniGPT5", use_cache: bool) -> None:
        self.model = model
        self.use_cache = use_cache
        self.device = model.mapper.queries.device
        self.ids: list[int] = []
        self.pixels: list[torch.Tensor] = []  # (3, S, S) per <ImageHere> run, in order
        self.cache: Any = None

    def context_pixels(self) -> Optional[torch.Tensor]:
        return torch.stack(self.pixels) if self.pixels else None  # (M, 3, S, S)

    def feed(self, ids: list[int], pixels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``ids`` (with ``pixels`` (m, 3, S, S) for their <ImageHere> runs) ->
        logits for the next token (V + n,) and last-layer states of the new tokens (k, D)."""
        self.ids += ids
        if pixels is not None:
            self.pixels += list(pixels.to(self.device))
        k = len(ids)
        if self.use_cache:
            new = torch.tensor([ids], device=self.device)  # (1, k)
            new_pixels = pixels.to(self.device) if pixels is not None else None
            embeds = self.model.embed_inputs(new, new_pixels)  # (1, k, D)
        else:
            full = torch.tensor([self.ids], device=self.device)  # (1, T)
            embeds = self.model.embed_inputs(full, self.context_pixels())  # (1, T, D)
        # One story, no padding: no mask (an all-ones one costs the LLM a check at every step).
        step = self.model.llm_step(embeds, None, self.cache, use_cache=self.use_cache, logits_to_keep=1)
        self.cache = step.cache
        return step.logits[0, -1].float(), step.hidden[0, -k:]  # (V + n,), (k, D)

    def rewind(self, k: int) -> None:
        """Forget the last ``k`` tokens (none of them image placeholders), cache included."""
        self.ids = self.ids[:-k]
        if self.cache is not None:
            self.cache.crop(-k)  # a negative argument removes that many positions from the end


# ---- choosing the next token ----

def choose_token(
    logits: torch.Tensor,
    cfg: GenerationConfig,
    *,
    banned: list[int],
    seen: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> int:
    """Next token from logits (V,): banned ids masked, repetition penalty on ``seen`` ids,
    then greedy, or temperature + top-p sampling with ``generator``."""
    logits = logits.float().clone()
    if banned:
        logits[banned] = float("-inf")
    if cfg.repetition_penalty != 1.0 and seen is not None and seen.numel():
        scores = logits[seen]
        logits[seen] = torch.where(scores > 0, scores / cfg.repetition_penalty, scores * cfg.repetition_penalty)
    if cfg.greedy:
        return int(logits.argmax())
    probs = torch.softmax(logits / cfg.temperature, dim=-1)  # (V,)
    if cfg.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(0) - sorted_probs  # probability mass ranked above each token
        sorted_probs = sorted_probs.masked_fill(before >= cfg.top_p, 0.0)  # the top token always stays
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def penalised_ids(cfg: GenerationConfig, written: list[int], sequence: list[int], vokens: list[int], vocab: int) -> list[int]:
    """The ids the repetition penalty lowers, by ``cfg.penalty_scope``: the tokens written so far,
    [IMG0] included (``generated``), or every text token of the whole ``sequence``, prompt
    included (``context``)."""
    if cfg.penalty_scope == "generated":
        return sorted({t for t in written if t < vocab})
    return sorted({t for t in sequence if t < vocab and t not in vokens})


# ---- the loop ----

def generation_settings(model: "MiniGPT5", cfg: GenerationConfig) -> dict[str, Any]:
    """``cfg`` as a dict, with the model's guidance scale, step count and sampler filled in where unset."""
    settings = asdict(cfg)
    g = model.cfg.guidance
    settings["guidance_scale"] = g.scale if cfg.guidance_scale is None else cfg.guidance_scale
    settings["num_inference_steps"] = cfg.num_inference_steps or g.num_inference_steps
    settings["sampler"] = cfg.sampler or g.sampler
    return settings


def ending_ids(model: "MiniGPT5") -> list[int]:
    """The tokens that end the turn when written, masked until ``min_new_tokens``: the first of the
    template's end marker (``</s>``, ``###`` or the chat template's end of turn) and ``</s>``."""
    eos = model.tokenizer.eos_token_id
    return sorted({model.template.end_marker.ids[0]} | ({eos} if eos is not None else set()))


@torch.no_grad()
def generate(
    model: "MiniGPT5",
    prompt: str,
    images: Optional[list[Image.Image]] = None,
    cfg: Optional[GenerationConfig] = None,
    *,
    progress: bool = False,
) -> GenerationResult:
    """Write a story of text and images after ``prompt``; ``<image>`` markers take ``images``.
    ``progress``: a bar of the tokens written and the images drawn (:mod:`minigpt5.progress`)."""
    images = list(images or [])
    prompt_ids, prompt_pixels = encode_prompt(model, prompt, images)
    return generate_from_ids(model, prompt_ids, prompt_pixels, cfg, prompt=prompt, images=images, progress=progress)


@torch.no_grad()
def generate_from_ids(
    model: "MiniGPT5",
    prompt_ids: list[int],
    prompt_pixels: Optional[torch.Tensor] = None,
    cfg: Optional[GenerationConfig] = None,
    *,
    prompt: str = "",
    images: Optional[list[Image.Image]] = None,
    progress: bool = False,
) -> GenerationResult:
    """:func:`generate` from an encoded prompt: ids (``<s>`` first, ``<ImageHere>`` runs for
    images) and the tower-normalised pixels (M, 3, S, S) of those runs, e.g. a stage-2
    training context. ``prompt`` and ``images`` are only recorded in the result."""
    cfg = cfg or GenerationConfig()
    settings = generation_settings(model, cfg)
    images = list(images or [])
    tok = model.tokenizer
    vokens = list(model.voken_ids)
    n = len(vokens)
    vocab = model.vokens.first_id + model.vokens.num_vokens  # logits cover ids < vocab
    placeholder_run = [model.image_token_id] * (model.vision.num_tokens if model.vision is not None else 0)

    end: EndMarker = model.template.end_marker  # </s>, ### or the chat template's end of turn
    enders = ending_ids(model)
    reader = _Reader(model, cfg.use_cache)
    generator = torch.Generator(device=reader.device).manual_seed(cfg.seed)
    was_training = model.training
    model.eval()
    bar = progress_bar(desc="generate", unit="token", total=cfg.max_new_tokens, enabled=progress)
    try:
        logits, hidden = reader.feed(prompt_ids, prompt_pixels)
        written: list[int] = []
        features: list[torch.Tensor] = []
        drawn: list[Image.Image] = []
        stopped = "max_new_tokens"
        unread: list[int] = []  # a last token written but never fed
        def pick(logits: torch.Tensor) -> int:
            banned = vokens[1:]  # only [IMG0] opens an image; the rest are appended
            if len(written) < cfg.min_new_tokens:
                banned = banned + enders
            if cfg.max_images is not None and len(drawn) >= cfg.max_images:
                banned = banned + [vokens[0]]
            elif cfg.force_image and not drawn:
                return vokens[0]
            seen = None
            if cfg.repetition_penalty != 1.0:
                seen = torch.tensor(penalised_ids(cfg, written, reader.ids, vokens, vocab), dtype=torch.long,
                                    device=logits.device)
            return choose_token(logits, cfg, banned=banned, seen=seen, generator=generator)

        while len(written) < cfg.max_new_tokens:
            bar.update(len(written) - bar.n)
            token = pick(logits)

            if token == vokens[0]:
                before = hidden[-1]  # (D,) the state that produced [IMG0]
                logits, hidden = reader.feed(vokens)
                written += vokens
                feats = torch.cat([before[None], hidden[: n - 1]])  # (n, D): predictors of [IMG0]..[IMG{n-1}]
                features.append(feats)
                image = model.images_from_features(
                    feats[None], scale=settings["guidance_scale"],
                    num_inference_steps=settings["num_inference_steps"], generator=generator,
                    sampler=settings["sampler"],
                )  # (1, 3, H, W) in [-1, 1]
                drawn += to_pil_images(image)
                bar.set_postfix(images=len(drawn), refresh=False)
                if model.vision is not None and len(written) < cfg.max_new_tokens:
                    # Training ends a target turn with the end marker right after its voken block, so
                    # whether the turn ends is read here, from the state after [IMG{n-1}], as it was taught.
                    peek = pick(logits)
                    if peek in enders:
                        unread = [peek] if peek == tok.eos_token_id else list(end.ids)
                        written += unread
                        stopped = "eos"
                        break
                    # Otherwise the image replaces its voken block in the context, read like an
                    # input image: the story so far then looks like a stage-2 training context,
                    # where earlier steps' images are placeholder runs with no vokens.
                    reader.rewind(n)
                    logits, hidden = reader.feed(placeholder_run, normalise_for_tower(image, model.vision.image_size))
                continue

            written.append(token)
            if token == tok.eos_token_id or end.ended(tok, written):
                stopped = "eos"
                unread = [token]
                break
            if len(written) == cfg.max_new_tokens:
                unread = [token]  # the budget is spent: nothing will read it
                break
            logits, hidden = reader.feed([token])
        bar.update(len(written) - bar.n)
    finally:
        bar.close()
        model.train(was_training)

    return GenerationResult(
        prompt=prompt,
        input_images=images,
        segments=_segments(tok, written, vokens, drawn, end if stopped == "eos" else None),
        token_ids=written,
        sequence_ids=reader.ids + unread,
        prompt_length=len(prompt_ids),
        context_pixels=reader.context_pixels(),
        voken_features=features,
        settings=settings,
        stopped=stopped,
    )


def _segments(
    tokenizer: Any, written: list[int], vokens: list[int], images: list[Image.Image], end: Optional[EndMarker] = None
) -> list[Segment]:
    """Split the written tokens at each voken block: decoded text and the images, in order; the
    end marker ``end`` (where the turn ended) is left out of the last text."""
    segments: list[Segment] = []
    text: list[int] = []
    pending = iter(images)
    i = 0
    while i < len(written):
        if written[i] == vokens[0]:
            if text:
                segments.append(tokenizer.decode(text, skip_special_tokens=True))
                text = []
            segments.append(next(pending))
            i += len(vokens)
            continue
        text.append(written[i])
        i += 1
    if text:
        segments.append(tokenizer.decode(text, skip_special_tokens=True))
    if end is not None and segments and isinstance(segments[-1], str):
        segments[-1] = end.strip(segments[-1])
    return [s for s in segments if not isinstance(s, str) or s]
