"""Prompt templates: how one example's text, images and vokens become tokens and labels.

Every encoder words its examples here: stage-1 pairs (``data_modules.shards``), stage-2
stories and dialogues (``data_modules.interleaved``), generation prompts
(``minigpt5.generate``) and evaluation contexts (``evaluation.systems``).

An example is a :class:`Conversation`: earlier turns (the context), maybe a caption
and an instruction, and the target turn the model writes. A :class:`Template` words it
as :class:`Piece` s, each tokenized on its own; :meth:`Template.encode` joins them,
labels the target (and the caption with ``loss.text_on_caption``), and fits
``max_length`` by dropping the oldest context turns whole, then cutting the caption at
its end. ``k`` below is the vision tower's tokens per context image.

- ``plain`` (this project's format, the tiny default)::

      <s> prompt (text <ImageHere>*k per image)* [caption] text [IMG0]..[IMG7] </s>

- ``minigpt4`` (the official code's: ``dataloader.py`` 34-72, 236-250, 318-418; the BOS
  comes from ``mini_gpt5.py`` 182-196)::

      pair:         <s>caption [IMG0]..[IMG7] ###
      instruction:  <s>{system}###Human: {instruction} {caption} ###Assistant: [IMG0]..[IMG7] ###
      story:        <s>{system}###Human:t0<Img><ImageHere>*k</Img>t1<Img>..</Img>\\n {instruction}
                    ###Assistant: t2 [IMG0].. ###
      dialogue:     <s>{system} ###Human: t0 <Img>..</Img> ###Assistant: t1 ###Human: t2 [IMG0].. ###

- ``chat``: the tokenizer's own ``apply_chat_template`` (or ``template.chat_template``):
  a story's context and a caption are one user message, a dialogue's turns are messages
  of their speakers; the target ends with the template's end of turn.

Labels: the target's text, each ``[IMG0]`` and the end marker (``</s>``, ``###`` or the end
of turn); ``[IMG1]``.. carry none, as generation appends them after a sampled ``[IMG0]``.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence, Union

from transformers import PreTrainedTokenizerBase

from minigpt5.config import ConfigError, MiniGPT5Config, TemplateConfig
from minigpt5.losses import IGNORE_INDEX
from minigpt5.sequences import InterleavedExample, SequenceTooLong, Turn
from minigpt5.task_prompts import CAPTION_INSTRUCTIONS, CAPTION_SYSTEM, MMDIALOG_SYSTEM, VIST_SYSTEM

Layout = Literal["caption", "story", "dialogue"]
Role = Literal["user", "assistant"]

# The official system prompts: CC3M instruction rows, VIST and MMDialog (minigpt5.task_prompts).
SYSTEM_PROMPTS: dict[Layout, str] = {"caption": CAPTION_SYSTEM, "story": VIST_SYSTEM, "dialogue": MMDIALOG_SYSTEM}
_SPEAKERS = {"user": "Human", "assistant": "Assistant"}


def normalise_caption(caption: str) -> str:
    """The official ``pre_caption`` (dataloader.py 186-207): lower case, ``.!"()*#:;~`` to spaces,
    runs of whitespace to one space, ends stripped."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    return re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")


def prepare_caption(caption: str, cfg: TemplateConfig) -> str:
    """A caption as the model reads it (and the CAP loss aligns to): normalised if ``cfg.normalise_captions``."""
    return normalise_caption(caption) if cfg.normalise_captions else caption


def dialogue_roles(num_turns: int) -> list[Role]:
    """Speakers of a dialogue's turns: the first is the user's, then they alternate
    (official dataloader.py 371-395: even turns ``###Human:``, odd ``###Assistant:``)."""
    return ["user" if i % 2 == 0 else "assistant" for i in range(num_turns)]


@dataclass
class Conversation:
    """What one example says, before a template words it."""

    layout: Layout
    target: Turn  # the turn the model writes: its text, then a voken block per image
    context: list[Turn] = field(default_factory=list)  # earlier turns, oldest first; images are input-side
    roles: list[Role] = field(default_factory=list)  # dialogue: each context turn's speaker, then the target's
    caption: Optional[str] = None  # caption layout: what the target image shows
    instruction: str = ""  # the user's request, after the context (and before the caption)
    instruction_images: int = 0  # input images shown right after the request (VIST's understanding task)

    def __post_init__(self) -> None:
        if self.layout == "dialogue" and len(self.roles) != len(self.context) + 1:
            raise ValueError(f"a dialogue needs a role per context turn and the target's: {len(self.context)} turns, "
                             f"{len(self.roles)} roles")
        if self.layout == "caption" and (self.caption is None or self.context):
            raise ValueError("a caption conversation needs a caption and no context")
        if any(role not in _SPEAKERS for role in self.roles):
            raise ValueError(f"roles must be user or assistant; got {self.roles}")

    def keep_from(self, first: int) -> "Conversation":
        """The conversation without its ``first`` oldest context turns."""
        return Conversation(self.layout, self.target, self.context[first:], self.roles[first:], self.caption,
                            self.instruction, self.instruction_images)


def caption_conversations(caption: str, key: str, cfg: TemplateConfig) -> list[Conversation]:
    """A CC3M pair's examples: the caption and its image, and for one key in
    ``cfg.instruction_every`` also an instruction row asking for the image (the official
    code adds one per 100 pairs, dataloader.py 63-72; here chosen by a hash of the key,
    and the request by another)."""
    rows = [Conversation("caption", Turn("", 1), caption=caption)]
    if cfg.instruction_every and zlib.crc32(key.encode()) % cfg.instruction_every == 0:
        request = CAPTION_INSTRUCTIONS[zlib.crc32(f"{key}/request".encode()) % len(CAPTION_INSTRUCTIONS)]
        rows.append(Conversation("caption", Turn("", 1), caption=caption, instruction=request))
    return rows


@dataclass(frozen=True)
class Piece:
    """A run of an encoded example: text (tokenized on its own) or token ids."""

    kind: Literal["source", "caption", "target"]  # target: text loss; caption: with loss.text_on_caption
    content: Union[str, tuple[int, ...]]


@dataclass(frozen=True)
class EndMarker:
    """What ends a turn: its ids as training writes them, and its text, also matched on decoded output."""

    ids: tuple[int, ...]
    text: str = ""  # "" matches by ids only

    def ended(self, tokenizer: PreTrainedTokenizerBase, written: Sequence[int]) -> bool:
        """Whether ``written`` ends with the marker (as its ids, or as text encoded some other way)."""
        n = len(self.ids)
        if len(written) >= n and tuple(written[-n:]) == self.ids:
            return True
        if not self.text:
            return False
        tail = tokenizer.decode(list(written[-(len(self.text) + 1):]), skip_special_tokens=False)
        return tail.rstrip().endswith(self.text)

    def strip(self, text: str) -> str:
        """``text`` without a trailing marker."""
        trimmed = text.rstrip()
        return trimmed[: -len(self.text)].rstrip() if self.text and trimmed.endswith(self.text) else text


class Template:
    """Words conversations as pieces (:meth:`render`, per template) and encodes them (:meth:`encode`)."""

    name = ""

    def __init__(
        self, cfg: TemplateConfig, tokenizer: PreTrainedTokenizerBase, voken_ids: list[int], image_token_id: int,
        image_tokens: int = 0, text_on_caption: bool = True,
    ) -> None:
        """``image_tokens``: placeholders per context image (0 without a vision tower)."""
        self.cfg, self.tokenizer, self.voken_ids = cfg, tokenizer, list(voken_ids)
        self.image_token_id, self.image_tokens = image_token_id, image_tokens
        self.text_on_caption = text_on_caption
        self.end_marker = self._end_marker()

    # ---- per template ----

    def render(self, conv: Conversation) -> list[Piece]:
        raise NotImplementedError

    def _end_marker(self) -> EndMarker:
        raise NotImplementedError

    # ---- shared pieces ----

    def bos(self) -> list[Piece]:
        bos = self.tokenizer.bos_token_id
        return [Piece("source", (bos,))] if bos is not None else []

    def images(self, count: int) -> Piece:
        """``count`` context images: a run of placeholders each."""
        return Piece("source", (self.image_token_id,) * (self.image_tokens * count))

    def target(self, turn: Turn) -> list[Piece]:
        """The target's text, then a voken block per image (the end marker is the template's)."""
        return [Piece("target", turn.text)] + [Piece("target", tuple(self.voken_ids))] * turn.images

    # ---- encoding ----

    def encode(self, conv: Conversation, max_length: Optional[int]) -> InterleavedExample:
        """Token ids and labels of ``conv``, fitted to ``max_length`` (see the module docstring; None: no limit).

        Raises SequenceTooLong when even the target with no context (and one caption
        token) does not fit.
        """
        cache: dict[str, list[int]] = {}
        for first in range(len(conv.context) + 1):
            pieces = [(piece, self._ids(piece, cache)) for piece in self.render(conv.keep_from(first))]
            length = sum(len(ids) for _, ids in pieces)
            if max_length is None or length <= max_length:
                return self._join(pieces, first)
        excess = length - max_length
        at = next((i for i, (piece, _) in enumerate(pieces) if piece.kind == "caption"), None)
        if at is None:
            target = sum(len(ids) for piece, ids in pieces if piece.kind == "target")
            raise SequenceTooLong(f"target of {target} tokens does not fit in max_length {max_length} after "
                                  f"{length - target} {self.name} template tokens")
        piece, ids = pieces[at]
        if len(ids) <= excess:
            raise SequenceTooLong(f"max_length {max_length} leaves no room for the caption after the "
                                  f"{length - len(ids)} other tokens of the {self.name} template")
        pieces[at] = (piece, ids[: len(ids) - excess])
        return self._join(pieces, len(conv.context), cut=True)

    def _ids(self, piece: Piece, cache: dict[str, list[int]]) -> list[int]:
        if not isinstance(piece.content, str):
            return list(piece.content)
        if not piece.content:
            return []
        if piece.content not in cache:
            cache[piece.content] = self.tokenizer(piece.content, add_special_tokens=False).input_ids
        return cache[piece.content]

    def _join(self, pieces: list[tuple[Piece, list[int]]], first: int, cut: bool = False) -> InterleavedExample:
        later_vokens = set(self.voken_ids[1:])
        input_ids: list[int] = []
        labels: list[int] = []
        source_length: Optional[int] = None
        for piece, ids in pieces:
            if piece.kind == "target" and source_length is None:
                source_length = len(input_ids)
            input_ids += ids
            if piece.kind == "target":
                labels += [IGNORE_INDEX if t in later_vokens else t for t in ids]
            elif piece.kind == "caption" and self.text_on_caption:
                labels += ids
            else:
                labels += [IGNORE_INDEX] * len(ids)
        return InterleavedExample(
            input_ids, labels, truncated=first > 0 or cut, first_context_turn=first,
            source_length=len(input_ids) if source_length is None else source_length,
        )

    def source_ids(self, conv: Conversation, max_length: Optional[int] = None) -> list[int]:
        """The ids the model reads before writing ``conv``'s target: a generation prompt."""
        example = self.encode(conv, max_length)
        return example.input_ids[: example.source_length]


class PlainTemplate(Template):
    """This project's bare format: ``<s> prompt context [caption] target </s>``; roles and system unused."""

    name = "plain"

    def _end_marker(self) -> EndMarker:
        return EndMarker((self.tokenizer.eos_token_id,))

    def render(self, conv: Conversation) -> list[Piece]:
        pieces = self.bos() + [Piece("source", self.cfg.prompt)]
        for turn in conv.context:
            pieces += [Piece("source", turn.text), self.images(turn.images)]
        pieces += [Piece("source", conv.instruction), self.images(conv.instruction_images)]
        if conv.caption is not None:
            pieces.append(Piece("caption", conv.caption))
        return pieces + self.target(conv.target) + [Piece("target", self.end_marker.ids)]


class MiniGPT4Template(Template):
    """The official ``###Human: .. ###Assistant: .. ###`` wording (module docstring)."""

    name = "minigpt4"
    END = "###"

    def _end_marker(self) -> EndMarker:
        return EndMarker(tuple(self.tokenizer(self.END, add_special_tokens=False).input_ids), self.END)

    def render(self, conv: Conversation) -> list[Piece]:
        target = self.target(conv.target) + [Piece("target", self.END)]
        if conv.layout == "caption" and not conv.instruction:  # the official plain CC3M row
            return self.bos() + [Piece("caption", conv.caption or "")] + target
        system = SYSTEM_PROMPTS[conv.layout]
        pieces = self.bos()
        if conv.layout == "dialogue":
            text = system
            for turn, role in zip(conv.context, conv.roles):
                text += f" ###{_SPEAKERS[role]}: {turn.text}"
                text = self._with_images(pieces, text, turn.images, " ")
            if conv.instruction:
                text += f" {conv.instruction}"
            text = self._with_images(pieces, text, conv.instruction_images, " ")
            return pieces + [Piece("source", f"{text} ###{_SPEAKERS[conv.roles[-1]]}:")] + target
        text = f"{system}###Human:"
        for turn in conv.context:
            text = self._with_images(pieces, text + turn.text, turn.images, "")
        if conv.context:
            text += "\n"
        if conv.instruction:
            text += f" {conv.instruction}"
        # the understanding task: "... by this image: <Img><ImageHere></Img> ###Assistant:" (dataloader.py 248-249)
        text = self._with_images(pieces, text, conv.instruction_images, " ")
        if conv.caption is not None:
            pieces += [Piece("source", text), Piece("caption", conv.caption)]
            text = ""
        return pieces + [Piece("source", f"{text} ###Assistant:")] + target

    def _with_images(self, pieces: list[Piece], text: str, count: int, space: str) -> str:
        """Append ``text`` and ``count`` images as ``<Img>`` run ``</Img>`` to ``pieces``; the text left open."""
        for _ in range(count):
            pieces += [Piece("source", f"{text}{space}<Img>"), self.images(1)]
            text = "</Img>"
        return text


class ChatTemplate(Template):
    """The tokenizer's own chat template (or ``template.chat_template``)."""

    name = "chat"
    _SLOT = "<minigpt5-message-{}>"  # stands for a message's content while the template renders

    @property
    def chat_template(self) -> str:
        template = self.cfg.chat_template or getattr(self.tokenizer, "chat_template", None)
        if not template:
            raise ConfigError("template.name chat needs a chat template, but the LLM tokenizer has none: "
                              "set template.chat_template (a Jinja string) or use template.name plain|minigpt4")
        return template

    def _end_marker(self) -> EndMarker:
        probe = self._SLOT.format(0)
        rendered = self._apply([{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}])
        _, slot, end = rendered.partition(probe)
        if not slot:
            raise ConfigError("the chat template dropped an assistant message's content; it cannot be used")
        end = end.rstrip()
        if not end:
            return EndMarker((self.tokenizer.eos_token_id,))
        return EndMarker(tuple(self.tokenizer(end, add_special_tokens=False).input_ids), end)

    def _apply(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, chat_template=self.chat_template)

    def turn(self, turn: Turn) -> list[Piece]:
        return [Piece("source", turn.text), self.images(turn.images)]

    def render(self, conv: Conversation) -> list[Piece]:
        messages: list[dict[str, str]] = []
        contents: list[list[Piece]] = []
        if conv.layout == "dialogue":
            for turn, role in zip(conv.context, conv.roles):
                messages.append({"role": role})
                contents.append(self.turn(turn))
            if conv.instruction or conv.instruction_images:
                contents[-1] += self.turn(Turn(conv.instruction, conv.instruction_images))
            target_role = conv.roles[-1]
        else:
            user = [piece for turn in conv.context for piece in self.turn(turn)]
            user += self.turn(Turn(conv.instruction, conv.instruction_images))
            if conv.caption is not None:
                user.append(Piece("caption", conv.caption))
            messages.append({"role": "user"})
            contents.append(user)
            target_role = "assistant"
        messages.append({"role": target_role})
        contents.append(self.target(conv.target))
        for i, message in enumerate(messages):
            message["content"] = self._SLOT.format(i)
        rest = self._apply(messages)
        pieces: list[Piece] = []
        for i, content in enumerate(contents):
            before, slot, rest = rest.partition(self._SLOT.format(i))
            if not slot:
                raise ConfigError(f"the chat template dropped or reordered message {i}'s content; it cannot be used")
            pieces += [Piece("source", before), *content]
        end = rest.rstrip()
        return pieces + [Piece("target", end if end else self.end_marker.ids)]


def build_template(
    cfg: MiniGPT5Config, tokenizer: PreTrainedTokenizerBase, voken_ids: list[int], image_token_id: int,
    image_tokens: int = 0,
) -> Template:
    """The template ``cfg.template.name`` over ``tokenizer``; ``image_tokens`` placeholders per context image."""
    kind = {"plain": PlainTemplate, "minigpt4": MiniGPT4Template, "chat": ChatTemplate}[cfg.template.name]
    return kind(cfg.template, tokenizer, voken_ids, image_token_id, image_tokens, cfg.loss.text_on_caption)
